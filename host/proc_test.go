package host

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

func procTree(t *testing.T, pid int, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for rel, data := range files {
		p := filepath.Join(root, strconv.Itoa(pid), rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestConfinement(t *testing.T) {
	// Stacking kernels: attr/apparmor/current wins over attr/current.
	r := NewReader("", procTree(t, 42, map[string]string{
		"attr/apparmor/current": "k8s-apparmor-example-deny-write (enforce)\n",
		"attr/current":          "selinux_t\n",
	}))
	if got, err := r.Confinement(42); err != nil || got != "k8s-apparmor-example-deny-write (enforce)" {
		t.Errorf("stacked: %q %v", got, err)
	}
	r = NewReader("", procTree(t, 43, map[string]string{"attr/current": "unconfined\n"}))
	if got, err := r.Confinement(43); err != nil || got != "unconfined" {
		t.Errorf("plain: %q %v", got, err)
	}
	if _, err := r.Confinement(44); err == nil {
		t.Error("a missing process has a confinement")
	}
}

func TestSettledConfinementWaitsForExec(t *testing.T) {
	root := procTree(t, 7, map[string]string{"comm": "runc:[2:INIT]\n", "attr/current": "unconfined\n"})
	r := NewReader("", root)
	go func() {
		time.Sleep(30 * time.Millisecond)
		os.WriteFile(filepath.Join(root, "7", "attr", "current"), []byte("k8s-apparmor-example-deny-write (enforce)\n"), 0o644)
		os.WriteFile(filepath.Join(root, "7", "comm"), []byte("sh\n"), 0o644)
	}()
	got, err := r.SettledConfinement(7, 5*time.Second)
	if err != nil || got != "k8s-apparmor-example-deny-write (enforce)" {
		t.Errorf("settled = %q %v", got, err)
	}
	// Still in runc's init after the wait (a loaded node): the label runc
	// set for the exec is the one the process gets, never runc's own.
	root = procTree(t, 8, map[string]string{"comm": "runc:[2:INIT]\n", "attr/current": "unconfined\n",
		"attr/exec": "k8s-apparmor-example-deny-write (enforce)\n"})
	start := time.Now()
	got, err = NewReader("", root).SettledConfinement(8, 20*time.Millisecond)
	if err != nil || got != "k8s-apparmor-example-deny-write (enforce)" || time.Since(start) > 2*time.Second {
		t.Errorf("bounded wait: %q %v after %v", got, err, time.Since(start))
	}
	// No exec label either: not settled, not unconfined.
	root = procTree(t, 9, map[string]string{"comm": "runc:[2:INIT]\n", "attr/current": "unconfined\n"})
	got, err = NewReader("", root).SettledConfinement(9, 20*time.Millisecond)
	if !errors.Is(err, ErrNotSettled) {
		t.Errorf("no exec label: %q %v, want ErrNotSettled", got, err)
	}
}

func TestContainerIDFromCgroup(t *testing.T) {
	id := "3f4a5b6c7d8e9f000102030405060708090a0b0c0d0e0f1011121314151617ab"
	for _, c := range []struct{ cgroup, want string }{
		{"0::/kubepods/besteffort/pod5f0c6f1e-1111-2222-3333-444455556666/" + id + "\n", id},
		{"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod5f0c.slice/cri-containerd-" + id + ".scope\n", id},
		{"0::/kubepods.slice/kubepods-pod1.slice/crio-" + id + ".scope\n", id},
		{"12:pids:/kubepods/pod1/" + id + "\n11:memory:/kubepods/pod1/" + id + "\n", id},
		{"0::/k8s.io/" + id + "\n", id},
		{"0::/system.slice/containerd.service\n", ""},
		{"0::/user.slice/user-0.slice/session-1.scope\n", ""},
		{"0::/" + id[:63] + "\n", ""},
		{"", ""},
	} {
		if got := containerIDFromCgroup(c.cgroup); got != c.want {
			t.Errorf("containerIDFromCgroup(%q) = %q, want %q", c.cgroup, got, c.want)
		}
	}
	r := NewReader("", procTree(t, 9, map[string]string{"cgroup": "0::/k8s.io/" + id + "\n"}))
	if got, err := r.ContainerID(9); err != nil || got != id {
		t.Errorf("ContainerID = %q %v", got, err)
	}
}
