package cri_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/shim"
)

// attestEnv is the chain with start attestation on: the backend's verbose
// ContainerStatus reports a pid, and a fake procfs says how that pid is
// confined.
type attestEnv struct {
	*env
	procfs     string
	mu         sync.Mutex
	pids       map[string]int                         // container ID -> pid
	config     map[string]*runtimeapi.ContainerConfig // what verbose info reports
	failStatus map[string]bool                        // ContainerStatus fails for these
	stops      []string
	metrics    string // armorshim's metrics address
}

func newAttestEnv(t *testing.T, mode string, mutate func(*shim.Config)) *attestEnv {
	t.Helper()
	a := &attestEnv{env: &env{backend: startBackend(t)}, procfs: t.TempDir(), pids: map[string]int{}, config: map[string]*runtimeapi.ContainerConfig{},
		failStatus: map[string]bool{}, metrics: freeAddr(t)}
	a.sysfs = newFakeSysfs(t, "Y", denyWrite+" (enforce)", "k8s-nginx (complain)", "cri-containerd.apparmor.d (enforce)")
	a.backend.onUnary("/runtime.v1.RuntimeService/ContainerStatus", func(ctx context.Context, req any, handler grpc.UnaryHandler) (any, error) {
		r := req.(*runtimeapi.ContainerStatusRequest)
		a.mu.Lock()
		pid, cfg, fail := a.pids[r.ContainerId], a.config[r.ContainerId], a.failStatus[r.ContainerId]
		a.mu.Unlock()
		if fail {
			return nil, status.Error(codes.NotFound, "container not found")
		}
		resp := &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{Id: r.ContainerId}}
		if r.Verbose {
			// The shape of containerd's verbose info.
			info, _ := json.Marshal(map[string]any{"sandboxID": "sb", "pid": pid, "removing": false, "config": cfg, "runtimeSpec": map[string]any{}})
			resp.Info = map[string]string{"info": string(info)}
		}
		return resp, nil
	})
	a.backend.onUnary("/runtime.v1.RuntimeService/StopContainer", func(ctx context.Context, req any, handler grpc.UnaryHandler) (any, error) {
		a.mu.Lock()
		a.stops = append(a.stops, req.(*runtimeapi.StopContainerRequest).ContainerId)
		a.mu.Unlock()
		return handler(ctx, req)
	})
	a.shim = startArmorshim(t, a.backend.sock, a.sysfs, func(c *shim.Config) {
		c.Procfs = a.procfs
		c.Attestation.Mode = mode
		c.MetricsAddress = a.metrics
		if mutate != nil {
			mutate(c)
		}
	})
	a.through = dial(t, a.shim.sock)
	a.runtime = runtimeapi.NewRuntimeServiceClient(a.through)
	return a
}

// run creates a container asking for ref and gives it a process confined
// by label; it returns the container ID.
func (a *attestEnv) run(t *testing.T, pod, ref, label string, pid int) string {
	t.Helper()
	return a.runWith(t, pod, ref, label, pid, nil)
}

// runWith is run with the container config changed by mutate.
func (a *attestEnv) runWith(t *testing.T, pod, ref, label string, pid int, mutate func(*runtimeapi.ContainerConfig)) string {
	t.Helper()
	ctx := ctxTimeout(t, 10*time.Second)
	sandbox := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: pod, Namespace: "default", Uid: pod}}
	sb, err := a.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sandbox})
	if err != nil {
		t.Fatal(err)
	}
	cfg := &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "hello"}, Image: &runtimeapi.ImageSpec{Image: "busybox"},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{ApparmorProfile: ref}}}
	if mutate != nil {
		mutate(cfg)
	}
	resp, err := a.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: cfg, SandboxConfig: sandbox})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(a.procfs, strconv.Itoa(pid), "attr")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "current"), []byte(label+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(a.procfs, strconv.Itoa(pid), "comm"), []byte("sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a.mu.Lock()
	a.pids[resp.ContainerId] = pid
	a.config[resp.ContainerId] = cfg
	a.mu.Unlock()
	return resp.ContainerId
}

func (a *attestEnv) start(t *testing.T, id string) error {
	t.Helper()
	_, err := a.runtime.StartContainer(ctxTimeout(t, 10*time.Second), &runtimeapi.StartContainerRequest{ContainerId: id})
	return err
}

// outcomes returns armorshim_start_attestations_total by outcome.
func (a *attestEnv) outcomes(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range a.scrape(t) {
		if rest, ok := strings.CutPrefix(line, `armorshim_start_attestations_total{outcome="`); ok {
			outcome, n, _ := strings.Cut(rest, `"} `)
			out[outcome] = n
		}
	}
	return out
}

// scrape returns the lines of armorshim's /metrics.
func (a *attestEnv) scrape(t *testing.T) []string {
	t.Helper()
	resp, err := http.Get("http://" + a.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return strings.Split(string(b), "\n")
}

func (a *attestEnv) stopped() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.stops...)
}

func TestAttestationConfirmsTheTutorialContainer(t *testing.T) {
	a := newAttestEnv(t, "enforce", nil)
	id := a.run(t, "hello-apparmor", "localhost/"+denyWrite, denyWrite+" (enforce)", 4242)
	if err := a.start(t, id); err != nil {
		t.Fatalf("attested start failed: %v", err)
	}
	// Nothing asked: containerd's default profile.
	id = a.run(t, "plain", "", "cri-containerd.apparmor.d (enforce)", 4243)
	if err := a.start(t, id); err != nil {
		t.Fatalf("runtime default start failed: %v", err)
	}
	if s := a.stopped(); len(s) != 0 {
		t.Errorf("containers stopped: %v", s)
	}
}

func TestAttestationStopsASwappedProfile(t *testing.T) {
	a := newAttestEnv(t, "enforce", nil)
	id := a.run(t, "hello-apparmor", "localhost/"+denyWrite, "unconfined", 4242)
	err := a.start(t, id)
	want := "Blocked: AppArmor confinement mismatch: expected " + denyWrite + ", the container runs unconfined"
	if status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != want {
		t.Fatalf("start = %v, want FailedPrecondition %q", err, want)
	}
	if s := a.stopped(); len(s) != 1 || s[0] != id {
		t.Errorf("stopped %v, want [%s]", s, id)
	}

	// Another profile than the one decided is a mismatch too.
	id = a.run(t, "other", "localhost/"+denyWrite, "k8s-nginx (complain)", 4244)
	if err := a.start(t, id); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "runs k8s-nginx (complain)") {
		t.Fatalf("other profile: %v", err)
	}
}

// A process that moved into a child profile or hat of its profile, or runs
// with a stack that has its profile, runs under that profile: attested,
// not stopped.
func TestAttestationAcceptsChildrenHatsAndStacks(t *testing.T) {
	a := newAttestEnv(t, "enforce", nil)
	for i, label := range []string{
		denyWrite + "//sleeper (enforce)",
		denyWrite + "//worker (enforce)", // a hat
		denyWrite + "//&cri-containerd.apparmor.d (enforce)",
		"cri-containerd.apparmor.d//&" + denyWrite + "//sleeper (enforce)",
	} {
		id := a.run(t, fmt.Sprintf("pod-%d", i), "localhost/"+denyWrite, label, 5000+i)
		if err := a.start(t, id); err != nil {
			t.Errorf("%s: start failed: %v", label, err)
		}
	}
	if s := a.stopped(); len(s) != 0 {
		t.Errorf("containers stopped: %v", s)
	}
	// A name that only starts like the profile's is another profile.
	for i, label := range []string{denyWrite + "x (enforce)", "other//" + denyWrite + " (enforce)", denyWrite + "^worker (enforce)"} {
		id := a.run(t, fmt.Sprintf("other-%d", i), "localhost/"+denyWrite, label, 5100+i)
		if err := a.start(t, id); status.Code(err) != codes.FailedPrecondition {
			t.Errorf("%s: start = %v, want FailedPrecondition", label, err)
		}
	}
}

// A privileged container gets no profile for runtime/default; a host
// profile that the kernel attached by path to its command confines nothing
// (unconfined mode) or more than decided: neither is stopped.
func TestAttestationUnconfinedModeIsUnconfined(t *testing.T) {
	a := newAttestEnv(t, "enforce", nil)
	privileged := func(c *runtimeapi.ContainerConfig) { c.Linux.SecurityContext.Privileged = true }
	id := a.runWith(t, "buildah", "runtime/default", "buildah (unconfined)", 4242, privileged)
	if err := a.start(t, id); err != nil {
		t.Fatalf("privileged container under an unconfined-mode profile: %v", err)
	}
	id = a.runWith(t, "debug", "unconfined", "unconfined", 4243, nil)
	if err := a.start(t, id); err != nil {
		t.Fatalf("unconfined: %v", err)
	}
	// A host profile in enforce mode attached by path confines it more
	// than decided: attested, never stopped.
	id = a.runWith(t, "tcpdump", "runtime/default", "tcpdump (enforce)", 4244, privileged)
	if err := a.start(t, id); err != nil {
		t.Fatalf("privileged container under a host profile in enforce mode: %v", err)
	}
	if s := a.stopped(); len(s) != 0 {
		t.Errorf("stopped %v, want none", s)
	}
}

// StartContainer may return while the process is still runc's init, just
// before it executes the container's command. With an exec label set, the
// exec is waited for and the label it gave is judged; a process that stays
// "runc's init" (a name any process can take) is unverified, never judged
// by the exec label it may have set itself. Without one, the current label
// is judged at once.
func TestAttestationOfRuncInit(t *testing.T) {
	a := newAttestEnv(t, "enforce", nil)
	write := func(pid int, name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(a.procfs, strconv.Itoa(pid), name), []byte(data), 0o644); err != nil {
			t.Error(err)
		}
	}
	init := func(pid int, current, exec string) {
		t.Helper()
		write(pid, "attr/current", current+"\n")
		write(pid, "attr/exec", exec)
		write(pid, "comm", "runc:[2:INIT]\n")
	}
	id := a.run(t, "confined", "localhost/"+denyWrite, "unconfined", 4242)
	init(4242, "unconfined", denyWrite+" (enforce)\n")
	execd := make(chan struct{})
	go func() { // runc's init executes the command 50 ms into the attestation
		defer close(execd)
		time.Sleep(50 * time.Millisecond)
		write(4242, "attr/current", denyWrite+" (enforce)\n")
		write(4242, "attr/exec", "")
		write(4242, "comm", "sh\n")
	}()
	if err := a.start(t, id); err != nil {
		t.Errorf("runc's init with the exec label set: %v", err)
	}
	<-execd
	privileged := func(c *runtimeapi.ContainerConfig) { c.Linux.SecurityContext.Privileged = true }
	id = a.runWith(t, "privileged", "runtime/default", "unconfined", 4243, privileged)
	init(4243, "unconfined", "")
	if err := a.start(t, id); err != nil {
		t.Errorf("runc's init without an exec label: %v", err)
	}
	id = a.run(t, "swapped", "localhost/"+denyWrite, "unconfined", 4244)
	init(4244, "unconfined", "")
	if err := a.start(t, id); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("runc's init without the decided exec label: %v, want FailedPrecondition", err)
	}
	// Left unconfined, the process names itself runc's init and sets the
	// decided profile for an exec it never makes.
	forged := a.run(t, "forged", "localhost/"+denyWrite, "unconfined", 4245)
	init(4245, "unconfined", denyWrite+" (enforce)\n")
	if err := a.start(t, forged); err != nil {
		t.Errorf("a forged runc init: %v, want a start (unverified)", err)
	}
	if got := a.outcomes(t); got["attested"] != "2" || got["mismatch"] != "1" || got["unverified"] != "1" || len(got) != 3 {
		t.Errorf("outcomes %v, want 2 attested, 1 mismatch, 1 unverified", got)
	}
	if s := a.stopped(); len(s) != 1 || s[0] == forged {
		t.Errorf("stopped %v, want the swapped one only", s)
	}
}

func TestAttestationReportModeOnlyCounts(t *testing.T) {
	a := newAttestEnv(t, "report", nil)
	id := a.run(t, "hello-apparmor", "localhost/"+denyWrite, "unconfined", 4242)
	if err := a.start(t, id); err != nil {
		t.Fatalf("report mode failed the start: %v", err)
	}
	if s := a.stopped(); len(s) != 0 {
		t.Errorf("report mode stopped %v", s)
	}
}

func TestAttestationRequiresEnforceMode(t *testing.T) {
	a := newAttestEnv(t, "enforce", func(c *shim.Config) { c.Policy.RequireEnforce = true })
	id := a.run(t, "hello-apparmor", "localhost/"+denyWrite, denyWrite+" (complain)", 4242)
	if err := a.start(t, id); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "requires enforce mode") {
		t.Fatalf("complain where enforce is required: %v", err)
	}
}

// requireEnforce applies to the runtime's default profile too: a container
// asking nothing or runtime/default is stopped when its process runs that
// profile in complain mode, and refused at create while the host lists it
// in complain mode.
func TestAttestationRequireEnforceRuntimeDefault(t *testing.T) {
	a := newAttestEnv(t, "enforce", func(c *shim.Config) { c.Policy.RequireEnforce = true })
	for i, ref := range []string{"", "runtime/default"} {
		id := a.run(t, fmt.Sprintf("plain-%d", i), ref, "cri-containerd.apparmor.d (complain)", 4242+i)
		err := a.start(t, id)
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "expected cri-containerd.apparmor.d (enforce), the container runs cri-containerd.apparmor.d (complain): this node requires enforce mode") {
			t.Errorf("%q in complain mode where enforce is required: %v", ref, err)
		}
	}
	if s := a.stopped(); len(s) != 2 {
		t.Errorf("stopped %v, want both", s)
	}

	a.sysfs.setProfiles(denyWrite+" (enforce)", "cri-containerd.apparmor.d (complain)")
	ctx := ctxTimeout(t, 10*time.Second)
	sandbox := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "late", Namespace: "default", Uid: "late"}}
	sb, err := a.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sandbox})
	if err != nil {
		t.Fatal(err)
	}
	for _, ref := range []string{"", "runtime/default"} {
		_, err = a.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, SandboxConfig: sandbox,
			Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "hello"}, Image: &runtimeapi.ImageSpec{Image: "busybox"},
				Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{ApparmorProfile: ref}}}})
		want := `Blocked: Cannot enforce AppArmor: the runtime's default profile "cri-containerd.apparmor.d" is loaded in complain mode, but this node requires enforce mode`
		if status.Code(err) != codes.FailedPrecondition || status.Convert(err).Message() != want {
			t.Errorf("create %q with the runtime's default in complain mode: %v", ref, err)
		}
	}
}

// After a restart armorshim has no memory of the decision: it derives the
// expectation from the runtime's copy of the container config.
func TestAttestationAfterRestart(t *testing.T) {
	a := newAttestEnv(t, "enforce", nil)
	id := a.run(t, "hello-apparmor", "localhost/"+denyWrite, "unconfined", 4242)
	restarted := startArmorshim(t, a.backend.sock, a.sysfs, func(c *shim.Config) { c.Procfs = a.procfs; c.Attestation.Mode = "enforce" })
	client := runtimeapi.NewRuntimeServiceClient(dial(t, restarted.sock))
	_, err := client.StartContainer(ctxTimeout(t, 10*time.Second), &runtimeapi.StartContainerRequest{ContainerId: id})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "expected "+denyWrite+", the container runs unconfined") {
		t.Fatalf("after restart: %v", err)
	}
}

// A container that cannot be read is unverified: counted and logged with
// its ID and the reason, never passed as attested, and never stopped, in
// enforce mode too.
func TestAttestationUnverifiedIsCountedNotStopped(t *testing.T) {
	logs := captureKlog(t)
	a := newAttestEnv(t, "enforce", nil)
	const label = denyWrite + " (enforce)"
	ids := map[string]string{} // container ID -> reason logged
	id := a.run(t, "no-status", "localhost/"+denyWrite, label, 4242)
	a.mu.Lock()
	a.failStatus[id] = true
	a.mu.Unlock()
	ids[id] = "no container status"
	id = a.run(t, "exited", "localhost/"+denyWrite, label, 4243)
	a.mu.Lock()
	a.pids[id] = 0
	a.mu.Unlock()
	ids[id] = "the runtime reports no process"
	id = a.run(t, "gone", "localhost/"+denyWrite, label, 4244)
	if err := os.RemoveAll(filepath.Join(a.procfs, "4244")); err != nil {
		t.Fatal(err)
	}
	ids[id] = "process 4244 is gone"
	id = a.run(t, "unreadable", "localhost/"+denyWrite, label, 4245)
	cur := filepath.Join(a.procfs, "4245", "attr", "current")
	if err := os.Remove(cur); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(cur, 0o755); err != nil { // reading it fails
		t.Fatal(err)
	}
	ids[id] = "cannot read the AppArmor label of process 4245"
	for id := range ids {
		if err := a.start(t, id); err != nil {
			t.Errorf("%s: start failed: %v", id, err)
		}
	}
	if s := a.stopped(); len(s) != 0 {
		t.Errorf("unverified containers stopped: %v", s)
	}
	if got := a.outcomes(t); got["unverified"] != "4" || got["attested"] != "" || got["mismatch"] != "" {
		t.Errorf("outcomes %v, want 4 unverified and nothing else", got)
	}
	klog.Flush()
	for id, reason := range ids {
		want := `"Container confinement unverified" containerID="` + id + `" reason="` + reason
		if !strings.Contains(logs.String(), want) {
			t.Errorf("no log line %s...:\n%s", want, logs.String())
		}
	}
}

func TestAttestationSkippedWithoutAppArmor(t *testing.T) {
	a := newAttestEnv(t, "enforce", nil)
	id := a.run(t, "plain", "unconfined", "whatever", 4242)
	a.sysfs.write("module/apparmor/parameters/enabled", "N\n")
	a.sysfs.setProfiles()
	before := a.backend.callCount()
	if err := a.start(t, id); err != nil {
		t.Fatal(err)
	}
	for _, c := range a.backend.callsSince(before) {
		if c.Method == "/runtime.v1.RuntimeService/ContainerStatus" {
			t.Error("attestation ran on a host without AppArmor")
		}
	}
	if got := a.outcomes(t); got["skipped"] != "1" || len(got) != 1 {
		t.Errorf("outcomes %v, want 1 skipped", got)
	}
}
