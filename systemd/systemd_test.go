package systemd_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
	"sigs.k8s.io/yaml"

	"github.com/armorshim/armorshim/shim"
	"github.com/armorshim/armorshim/systemd"
)

// unit parses a unit file into "Section.Key" -> values.
func unit(t *testing.T, path string) map[string][]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	section := ""
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = strings.Trim(line, "[]")
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok {
				t.Fatalf("%s: malformed line %q", path, line)
			}
			out[section+"."+k] = append(out[section+"."+k], v)
		}
	}
	return out
}

func has(values []string, want string) bool {
	for _, v := range values {
		for _, f := range strings.Fields(v) {
			if f == want {
				return true
			}
		}
	}
	return false
}

func TestServiceUnit(t *testing.T) {
	u := unit(t, "armorshim.service")
	for key, want := range map[string]string{
		"Service.Type":       "notify",
		"Service.Restart":    "always",
		"Unit.After":         "containerd.service",
		"Unit.Before":        "kubelet.service",
		"Install.WantedBy":   "multi-user.target",
		"Service.KillSignal": "SIGTERM",
	} {
		if !has(u[key], want) {
			t.Errorf("%s = %q, want it to hold %q", key, u[key], want)
		}
	}
	if exec := strings.Join(u["Service.ExecStart"], " "); !strings.Contains(exec, "armorshim serve") {
		t.Errorf("ExecStart %q does not run armorshim serve", exec)
	}
}

func TestSocketUnitMatchesDefaultListen(t *testing.T) {
	u := unit(t, "armorshim.socket")
	def := strings.TrimPrefix(shim.DefaultConfig().Listen, "unix://")
	if got := u["Socket.ListenStream"]; len(got) != 1 || got[0] != def {
		t.Errorf("ListenStream = %q, want %q", got, def)
	}
	if got := u["Socket.SocketMode"]; len(got) != 1 || got[0] != "0660" {
		t.Errorf("SocketMode = %q, want 0660", got)
	}
	d := unit(t, "armorshim.service.d/10-socket-activation.conf")
	if exec := d["Service.ExecStart"]; len(exec) != 2 || exec[0] != "" || !strings.Contains(exec[1], "--listen=fd://") {
		t.Errorf("socket activation drop-in ExecStart = %q, want a reset then --listen=fd://", exec)
	}
}

func TestKubeletDropIns(t *testing.T) {
	u := unit(t, "kubelet.service.d/90-armorshim.conf")
	if !has(u["Unit.After"], "armorshim.service") || !has(u["Unit.Wants"], "armorshim.service") {
		t.Errorf("kubelet drop-in must order the kubelet after armorshim and want it: %v", u)
	}
	// A restart of armorshim must not stop or restart the kubelet.
	for _, key := range []string{"Unit.Requires", "Unit.BindsTo", "Unit.PartOf", "Unit.Requisite"} {
		if has(u[key], "armorshim.service") {
			t.Errorf("kubelet drop-in: %s=armorshim.service stops the kubelet with armorshim", key)
		}
	}
	if s := unit(t, "armorshim.service"); len(s["Install.RequiredBy"]) > 0 || !has(s["Install.WantedBy"], "kubelet.service") {
		t.Errorf("armorshim.service must be wanted by the kubelet, not required: %v", s)
	}
	data, err := os.ReadFile("kubelet.conf.d/90-armorshim.conf")
	if err != nil {
		t.Fatal(err)
	}
	var kc map[string]any
	if err := yaml.UnmarshalStrict(data, &kc); err != nil {
		t.Fatal(err)
	}
	want := shim.DefaultConfig().Listen
	if kc["kind"] != "KubeletConfiguration" || kc["containerRuntimeEndpoint"] != want || kc["imageServiceEndpoint"] != want {
		t.Errorf("kubelet configuration drop-in = %v, want both endpoints %s", kc, want)
	}
}

func TestDefaultConfigFileLoads(t *testing.T) {
	cfg, err := shim.LoadConfig("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// The file states the defaults; only `enabled: true` is spelled out.
	if cfg.Policy.Enabled == nil || !*cfg.Policy.Enabled {
		t.Errorf("config.yaml: policy.enabled = %v, want true", cfg.Policy.Enabled)
	}
	cfg.Policy.Enabled = nil
	if def := shim.DefaultConfig(); !reflect.DeepEqual(cfg, def) {
		t.Errorf("config.yaml does not state the defaults:\n got %+v\nwant %+v", cfg, def)
	}
}

// notifySocket listens where NOTIFY_SOCKET points and returns the datagrams.
func notifySocket(t *testing.T) <-chan string {
	t.Helper()
	path := filepath.Join(shortTemp(t), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	ch := make(chan string, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return ch
}

func shortTemp(t *testing.T) string {
	dir, err := os.MkdirTemp("", "as")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func TestNotify(t *testing.T) {
	ch := notifySocket(t)
	systemd.Notify(systemd.Ready, systemd.Status("serving"))
	select {
	case got := <-ch:
		if got != "READY=1\nSTATUS=serving" {
			t.Errorf("notification = %q", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no notification")
	}
}

// TestSocketActivation runs the real binary as systemd would with
// armorshim.socket: the socket is fd 3, LISTEN_PID/LISTEN_FDS name it, and
// READY=1 must come once it serves on it.
func TestSocketActivation(t *testing.T) {
	dir := shortTemp(t)
	bin := armorshimBinary(t)
	sock := filepath.Join(dir, "armorshim.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	ch := notifySocket(t)

	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" serve --listen fd:// --runtime-endpoint unix:///nonexistent/containerd.sock --profiles-dir= --node-features-dir=`, bin)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer cmd.Process.Kill()
	select {
	case got := <-ch:
		if !strings.HasPrefix(got, "READY=1") {
			t.Fatalf("first notification = %q, want READY=1", got)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no READY=1 from armorshim")
	}

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health through the activated socket: %v %v", resp, err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("armorshim exit: %v", err)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("armorshim removed systemd's socket: %v", err)
	}
}

// TestUnitsVerify runs systemd-analyze verify where it exists.
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("systemd-analyze is missing: .ci/run installs the systemd package")
		}
		t.Skip("systemd-analyze not installed (apt-get install systemd)")
	}
	dir := shortTemp(t)
	bin := armorshimBinary(t)
	for _, name := range []string{"armorshim.service", "armorshim.socket"} {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		data = []byte(strings.ReplaceAll(string(data), "/usr/local/bin/armorshim", bin))
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(analyze, "verify", filepath.Join(dir, "armorshim.service"), filepath.Join(dir, "armorshim.socket")).CombinedOutput()
	// Units this one names but that this machine lacks (containerd, kubelet)
	// are not errors of ours.
	var problems []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" || strings.Contains(line, "containerd.service") || strings.Contains(line, "kubelet.service") {
			continue
		}
		problems = append(problems, line)
	}
	if len(problems) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, strings.Join(problems, "\n"))
	}
}

// TestReloadOnSIGHUP runs the binary under a notify socket with a config
// file: SIGHUP re-reads the policy (RELOADING=1, then READY=1), a bad file
// keeps the policy in force.
func TestReloadOnSIGHUP(t *testing.T) {
	dir := shortTemp(t)
	bin := armorshimBinary(t)
	backend := filepath.Join(dir, "containerd.sock")
	rt := fake.NewFakeRemoteRuntime()
	if err := rt.Start("unix://" + backend); err != nil {
		t.Fatal(err)
	}
	defer rt.Stop()
	sock := filepath.Join(dir, "armorshim.sock")
	config := filepath.Join(dir, "config.yaml")
	writePolicy := func(policy string) {
		t.Helper()
		body := "apiVersion: armorshim.io/v1alpha1\nkind: ArmorshimConfiguration\nlisten: unix://" + sock +
			"\nruntimeEndpoint: unix://" + backend + "\nprofiles: {directory: \"\"}\nnodeFeatures: {directory: \"\"}\npolicy:\n" + policy
		if err := os.WriteFile(config, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	writePolicy("  enabled: false\n")
	ch := notifySocket(t)
	cmd := exec.Command(bin, "serve", "--config", config)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	expect := func(prefix string) {
		t.Helper()
		select {
		case got := <-ch:
			if !strings.HasPrefix(got, prefix) {
				t.Fatalf("notification %q, want %s", got, prefix)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("no %s notification", prefix)
		}
	}
	expect("READY=1")

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := runtimeapi.NewRuntimeServiceClient(conn)
	create := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_, err := client.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId:  "sb",
			SandboxConfig: &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "p", Namespace: "default"}},
			Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "c"}, Image: &runtimeapi.ImageSpec{Image: "busybox"},
				Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
					Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}}}},
		})
		return err
	}
	if err := create(); status.Code(err) != codes.PermissionDenied || !strings.HasPrefix(status.Convert(err).Message(), "Forbidden: ") {
		t.Fatalf("AppArmor switched off: %v", err)
	}

	writePolicy("  enabled: true\n")
	cmd.Process.Signal(syscall.SIGHUP)
	expect("RELOADING=1")
	expect("READY=1")
	if err := create(); err != nil {
		t.Fatalf("after reload to enabled: %v", err)
	}

	writePolicy("  enabled: maybe\n")
	cmd.Process.Signal(syscall.SIGHUP)
	expect("RELOADING=1")
	expect("READY=1")
	if err := create(); err != nil {
		t.Fatalf("a bad file replaced the policy: %v", err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("exit: %v", err)
	}
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// armorshimBinary builds cmd/armorshim once for the package's tests.
func armorshimBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "armorshim-bin")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "armorshim")
		if out, err := exec.Command("go", "build", "-o", builtBin, "../cmd/armorshim").CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" {
		os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// make install extends the kubelet's KUBELET_CONFIG_ARGS instead of
// replacing it, uses a --config-dir the kubelet already has, and uninstall
// removes exactly what install wrote.
func TestKubeletDropInsExtendTheNode(t *testing.T) {
	const kubeadm = `# /usr/lib/systemd/system/kubelet.service
[Service]
ExecStart=/usr/bin/kubelet

# /usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf
# Note: This dropin only works with kubeadm and kubelet v1.11+
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=%s"
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS
`
	const ours = `
# /etc/systemd/system/kubelet.service.d/90-armorshim.conf
[Service]
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml --config-dir=/etc/kubernetes/kubelet.conf.d"
`
	for _, tc := range []struct {
		name, cat       string
		wantEnv         string // "" when the variable must be left alone
		wantKubeletConf string
	}{
		{"kubeadm with its own flags", fmt.Sprintf(kubeadm, "--config=/srv/kubelet.yaml --v=2"),
			"--config=/srv/kubelet.yaml --v=2 --config-dir=/etc/kubernetes/kubelet.conf.d", "/etc/kubernetes/kubelet.conf.d/90-armorshim.conf"},
		{"installed before", fmt.Sprintf(kubeadm, "--config=/srv/kubelet.yaml") + ours,
			"--config=/srv/kubelet.yaml --config-dir=/etc/kubernetes/kubelet.conf.d", "/etc/kubernetes/kubelet.conf.d/90-armorshim.conf"},
		{"kubelet has a config dir", fmt.Sprintf(kubeadm, "--config=/var/lib/kubelet/config.yaml --config-dir=/etc/kubelet.d"),
			"", "/etc/kubelet.d/90-armorshim.conf"},
		{"no kubelet unit", "",
			"--config=/var/lib/kubelet/config.yaml --config-dir=/etc/kubernetes/kubelet.conf.d", "/etc/kubernetes/kubelet.conf.d/90-armorshim.conf"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			root := t.TempDir()
			fakeSystemctl := filepath.Join(root, "systemctl")
			script := "#!/bin/sh\n[ \"$1 $2\" = \"cat kubelet.service\" ] || exit 3\n"
			if tc.cat == "" {
				script += "echo 'No files found for kubelet.service.' >&2\nexit 1\n"
			} else {
				os.WriteFile(filepath.Join(root, "cat.txt"), []byte(tc.cat), 0o644)
				script += "cat " + filepath.Join(root, "cat.txt") + "\n"
			}
			if err := os.WriteFile(fakeSystemctl, []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			dest := filepath.Join(root, "dest")
			run := func(verb string) {
				t.Helper()
				cmd := exec.Command("sh", "kubelet-dropins.sh", verb)
				cmd.Env = append(os.Environ(), "DESTDIR="+dest, "SRC=.", "SYSTEMCTL="+fakeSystemctl)
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("%s: %v\n%s", verb, err, out)
				}
			}
			run("install")
			dropin, err := os.ReadFile(filepath.Join(dest, "etc/systemd/system/kubelet.service.d/90-armorshim.conf"))
			if err != nil {
				t.Fatal(err)
			}
			var envs []string
			for _, l := range strings.Split(string(dropin), "\n") {
				if strings.HasPrefix(l, "Environment=") {
					envs = append(envs, l)
				}
			}
			switch {
			case tc.wantEnv == "" && len(envs) != 0:
				t.Errorf("the kubelet's own --config-dir is kept, yet the drop-in sets %q", envs)
			case tc.wantEnv != "" && (len(envs) != 1 || envs[0] != `Environment="KUBELET_CONFIG_ARGS=`+tc.wantEnv+`"`):
				t.Errorf("drop-in sets %q, want KUBELET_CONFIG_ARGS=%s", envs, tc.wantEnv)
			}
			if !strings.Contains(string(dropin), "After=armorshim.service") {
				t.Errorf("drop-in lost its ordering:\n%s", dropin)
			}
			if _, err := os.Stat(filepath.Join(dest, tc.wantKubeletConf)); err != nil {
				t.Errorf("kubelet configuration drop-in: %v", err)
			}
			run("uninstall")
			var left []string
			filepath.WalkDir(dest, func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					left = append(left, strings.TrimPrefix(p, dest))
				}
				return nil
			})
			if len(left) != 0 {
				t.Errorf("uninstall left %q", left)
			}
		})
	}
}
