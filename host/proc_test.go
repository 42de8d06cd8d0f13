package host

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// A started container's process is read at once, never waited for: still
// in runc's init, it is judged by the label runc set for its exec.
func TestStartedConfinement(t *testing.T) {
	const deny = "k8s-apparmor-example-deny-write (enforce)"
	for _, c := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"executed", map[string]string{"comm": "sh\n", "attr/current": deny + "\n", "attr/exec": ""}, deny},
		{"still in runc's init, no exec label", map[string]string{"comm": "runc:[2:INIT]\n", "attr/current": "runc (unconfined)\n", "attr/exec": ""}, "runc (unconfined)"},
	} {
		got, err := NewReader("", procTree(t, 7, c.files)).StartedConfinement(7)
		if err != nil || got != c.want {
			t.Errorf("%s: %q %v, want %q", c.name, got, err, c.want)
		}
	}
	if _, err := NewReader("", t.TempDir()).StartedConfinement(7); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a process that is gone: %v, want ErrNotExist", err)
	}
}

// runc's init with an exec label is judged once the exec has applied it,
// by the label the process then has, on either attr layout.
func TestStartedConfinementWaitsForTheExec(t *testing.T) {
	const deny = "k8s-apparmor-example-deny-write (enforce)"
	for _, dir := range []string{"attr/", "attr/apparmor/"} {
		root := procTree(t, 7, map[string]string{"comm": "runc:[2:INIT]\n", dir + "current": "unconfined\n", dir + "exec": deny + "\n"})
		r := NewReader("", root)
		r.initWait = 10 * time.Second
		done := make(chan struct{})
		go func() { // the exec, 30 ms later; the label first, so a reader that sees the new comm sees it
			defer close(done)
			time.Sleep(30 * time.Millisecond)
			for _, f := range []struct{ name, data string }{{dir + "current", deny + "\n"}, {dir + "exec", ""}, {"comm", "sleep\n"}} {
				if err := os.WriteFile(filepath.Join(root, "7", f.name), []byte(f.data), 0o644); err != nil {
					t.Error(err)
				}
			}
		}()
		got, err := r.StartedConfinement(7)
		<-done
		if err != nil || got != deny {
			t.Errorf("%s: %q %v, want %q", dir, got, err, deny)
		}
	}
}

// A process that only looks like runc's init (its name is its own to set)
// with an exec label it set itself is not judged by that label: once the
// wait runs out it is ErrStillInInit.
func TestStartedConfinementDoesNotTrustTheExecLabel(t *testing.T) {
	const deny = "k8s-apparmor-example-deny-write (enforce)"
	r := NewReader("", procTree(t, 7, map[string]string{"comm": "runc:[2:INIT]\n", "attr/current": "unconfined\n", "attr/exec": deny + "\n"}))
	r.initWait = 50 * time.Millisecond
	t0 := time.Now()
	got, err := r.StartedConfinement(7)
	if !errors.Is(err, ErrStillInInit) || got != "" {
		t.Errorf("forged runc init: %q %v, want ErrStillInInit", got, err)
	}
	if d := time.Since(t0); d < r.initWait {
		t.Errorf("gave up after %v, before the wait of %v", d, r.initWait)
	}
}

// A label longer than the read buffer is read whole.
func TestLongLabel(t *testing.T) {
	long := strings.Repeat("p", 3000) + " (enforce)"
	r := NewReader("", procTree(t, 7, map[string]string{"comm": "sh\n", "attr/current": long + "\n"}))
	if got, err := r.StartedConfinement(7); err != nil || got != long {
		t.Errorf("long label: %d bytes, %v", len(got), err)
	}
}

// Whether the kernel has attr/apparmor is learned from the first process
// read, and not asked again.
func TestAttrLayoutLearnedOnce(t *testing.T) {
	root := procTree(t, 7, map[string]string{"attr/current": "a (enforce)\n"})
	r := NewReader("", root)
	if got, err := r.Confinement(7); err != nil || got != "a (enforce)" {
		t.Fatalf("flat: %q %v", got, err)
	}
	// A directory now there is not looked at: the kernel's layout is known.
	if err := os.MkdirAll(filepath.Join(root, "7", "attr", "apparmor", "current"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := r.Confinement(7); err != nil || got != "a (enforce)" {
		t.Errorf("after learning the layout: %q %v", got, err)
	}
	// A process gone before the layout is known teaches nothing.
	r = NewReader("", root)
	if _, err := r.Confinement(8); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("gone: %v", err)
	}
	if got, err := r.Confinement(7); err == nil {
		t.Errorf("the layout was learned from a missing process: read %q", got)
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
