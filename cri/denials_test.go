package cri_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/cri"
	"github.com/armorshim/armorshim/cri/h2relay"
	"github.com/armorshim/armorshim/host"
)

// runtimeDefaultProfile is containerd's profile for runtime/default.
const runtimeDefaultProfile = "cri-containerd.apparmor.d"

// cgroups is a fake procfs: pid -> container ID (missing: the process is gone).
type cgroups map[int]string

func (c cgroups) ContainerID(pid int) (string, error) {
	id, ok := c[pid]
	if !ok {
		return "", fmt.Errorf("no such process %d", pid)
	}
	return id, nil
}

// kmsgLine renders a /dev/kmsg record of an AppArmor denial, as the 6.1
// kernel writes it.
func kmsgLine(seq int, profile, op, name string, pid int, comm string) string {
	return fmt.Sprintf(`5,%d,58125716,-;audit: type=1400 audit(1764121000.713:%d): apparmor="DENIED" operation="%s" class="file" profile="%s" name="%s" pid=%d comm="%s" requested_mask="c" denied_mask="c" fsuid=0 ouid=0`+"\n",
		seq, seq, op, profile, name, pid, comm)
}

// auditLine renders the same record as auditd writes it to its log.
func auditLine(seq int, profile, op, name string, pid int, comm string) string {
	return fmt.Sprintf(`type=AVC msg=audit(1764121000.713:%d): apparmor="DENIED" operation="%s" class="file" profile="%s" name="%s" pid=%d comm="%s" requested_mask="c" denied_mask="c" fsuid=0 ouid=0`+"\x1dFSUID=\"root\" OUID=\"root\"\n",
		seq, op, profile, name, pid, comm)
}

// statusBackend is a runtime answering ContainerStatus from a table of
// running containers; it counts the calls.
type statusBackend struct {
	*backend
	calls atomic.Int64
}

func denialBackend(t *testing.T, running map[string][3]string) *statusBackend {
	b := &statusBackend{backend: startBackend(t)}
	b.onUnary("/runtime.v1.RuntimeService/ContainerStatus", func(ctx context.Context, req any, _ grpc.UnaryHandler) (any, error) {
		b.calls.Add(1)
		id := req.(*runtimeapi.ContainerStatusRequest).ContainerId
		names, ok := running[id]
		if !ok {
			return nil, status.Errorf(codes.NotFound, "container %q not found", id)
		}
		return containerStatus(id, names), nil
	})
	return b
}

func containerStatus(id string, names [3]string) *runtimeapi.ContainerStatusResponse {
	return &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{
		Id: id, State: runtimeapi.ContainerState_CONTAINER_RUNNING,
		Metadata: &runtimeapi.ContainerMetadata{Name: names[2]},
		Labels: map[string]string{
			"io.kubernetes.pod.namespace": names[0], "io.kubernetes.pod.name": names[1], "io.kubernetes.container.name": names[2],
		},
	}}
}

func newDenials(t *testing.T, b *statusBackend, procs cri.Containers) (*cri.Denials, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	d := cri.NewDenials(dial(t, b.sock), procs, reg, runtimeDefaultProfile)
	t.Cleanup(d.Close)
	return d, reg
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue metrics
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func denialCount(t *testing.T, reg *prometheus.Registry, labels ...string) float64 {
	t.Helper()
	return metricValue(t, reg, "armorshim_apparmor_denials_total", map[string]string{
		"namespace": labels[0], "pod": labels[1], "container": labels[2], "profile": labels[3], "operation": labels[4],
	})
}

// lifecycle drives a Proxy's hooks directly: each call is routed, inspected
// and answered as the relay would.
type lifecycle struct {
	t *testing.T
	p *cri.Proxy
}

func newLifecycle(t *testing.T, d *cri.Denials) *lifecycle {
	snap := &apparmor.Snapshot{Enabled: true, Profiles: map[string]apparmor.Mode{
		denyWrite: apparmor.ModeEnforce, "k8s-nginx": apparmor.ModeEnforce, runtimeDefaultProfile: apparmor.ModeEnforce,
	}}
	var opts []cri.Option
	if d != nil {
		opts = append(opts, cri.WithDenials(d))
	}
	return &lifecycle{t: t, p: cri.New(cri.Backends{Runtime: &h2relay.Backend{Name: "runtime"}}, snap, nil, opts...)}
}

// call relays one call the runtime answers with resp and code.
func (l *lifecycle) call(method string, req, resp proto.Message, code codes.Code) {
	l.t.Helper()
	_, inspect := l.p.Route(method)
	if inspect == nil {
		l.t.Fatalf("%s is not held while denials are attributed", method)
	}
	in, err := proto.Marshal(req)
	if err != nil {
		l.t.Fatal(err)
	}
	v := inspect(context.Background(), in)
	if v.Status != nil {
		l.t.Fatalf("%s refused: %v", method, v.Status.Message())
	}
	if v.Response != nil {
		out, _ := proto.Marshal(resp)
		v.Response(context.Background(), out, status.New(code, ""))
	}
}

// run creates and starts container id of pod ns/pod (sandbox) under profile
// (localhost/<name>, or "" for the runtime's default).
func (l *lifecycle) run(id, sandbox, ns, pod, name, profile string) {
	l.t.Helper()
	sc := &runtimeapi.LinuxContainerSecurityContext{}
	if profile != "" {
		sc.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: profile}
	}
	l.call(cri.CreateContainerMethod, &runtimeapi.CreateContainerRequest{
		PodSandboxId:  sandbox,
		Config:        &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: name}, Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: sc}},
		SandboxConfig: &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: pod, Namespace: ns}},
	}, &runtimeapi.CreateContainerResponse{ContainerId: id}, codes.OK)
	l.call(cri.StartContainerMethod, &runtimeapi.StartContainerRequest{ContainerId: id}, &runtimeapi.StartContainerResponse{}, codes.OK)
}

func TestDenialsAttributedToPods(t *testing.T) {
	const id = "3f4a5b6c7d8e9f000102030405060708090a0b0c0d0e0f1011121314151617ab"
	const old = "aaaa5b6c7d8e9f000102030405060708090a0b0c0d0e0f1011121314151617ab"
	b := denialBackend(t, map[string][3]string{old: {"kube-system", "created-before", "c"}})
	d, reg := newDenials(t, b, cgroups{4242: id, 4343: old})
	l := newLifecycle(t, d)
	l.run(id, "sb1", "default", "hello-apparmor", "hello", denyWrite)
	l.run("nginx1", "sb2", "web", "nginx-0", "nginx", "k8s-nginx")

	log := kmsgLine(1, denyWrite, "mknod", "/tmp/test", 4242, "touch") + // alive, created through armorshim
		"6,2,0,-;eth0: link up\n" +
		kmsgLine(3, "k8s-nginx", "open", "/etc/shadow", 999, "cat") + // gone, one container runs k8s-nginx
		kmsgLine(4, "k8s-apparmor-example-other", "open", "/x", 998, "sh") + // gone, nobody known
		kmsgLine(5, "k8s-nginx//^worker", "open", "/y", 997, "sh") + // gone, a hat of k8s-nginx
		kmsgLine(6, runtimeDefaultProfile, "open", "/z", 4343, "sh") // alive, created before armorshim started
	if err := d.Run(context.Background(), strings.NewReader(log)); err != nil {
		t.Fatal(err)
	}
	d.WaitIdle()
	for _, c := range []struct {
		labels []string
		want   float64
	}{
		{[]string{"default", "hello-apparmor", "hello", denyWrite, "mknod"}, 1},
		{[]string{"web", "nginx-0", "nginx", "k8s-nginx", "open"}, 1},
		{[]string{"unknown", "unknown", "unknown", "k8s-apparmor-example-other", "open"}, 1},
		{[]string{"web", "nginx-0", "nginx", "k8s-nginx//^worker", "open"}, 1},
		{[]string{"kube-system", "created-before", "c", runtimeDefaultProfile, "open"}, 1},
	} {
		if got := denialCount(t, reg, c.labels...); got != c.want {
			t.Errorf("denials%v = %v, want %v", c.labels, got, c.want)
		}
	}
	if n := seriesCount(t, reg); n != 5 {
		t.Errorf("%d series, want 5", n)
	}
	if n := b.calls.Load(); n != 1 {
		t.Errorf("%d ContainerStatus calls, want 1 (the container created before armorshim)", n)
	}
}

// A container created before armorshim started is named, once attested,
// from the runtime's copy of its config in the info attestation read: its
// denials then cost no runtime lookup.
func TestAttestedContainerNamedFromItsConfig(t *testing.T) {
	const old = "aaaa5b6c7d8e9f000102030405060708090a0b0c0d0e0f1011121314151617ab"
	b := denialBackend(t, nil)
	d, reg := newDenials(t, b, cgroups{4343: old})
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "nginx"},
		Labels: map[string]string{"io.kubernetes.pod.namespace": "web", "io.kubernetes.pod.name": "nginx-0",
			"io.kubernetes.container.name": "nginx"},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "k8s-nginx"}}},
	}
	// as containerd writes it: encoding/json of the generated type
	info, err := json.Marshal(map[string]any{"sandboxID": "sb", "pid": 4343, "config": cfg, "runtimeSpec": map[string]any{}})
	if err != nil {
		t.Fatal(err)
	}
	if err := d.AttestedFromInfo(old, info, "k8s-nginx"); err != nil {
		t.Fatal(err)
	}
	if err := d.Run(context.Background(), strings.NewReader(kmsgLine(1, "k8s-nginx", "open", "/x", 4343, "cat"))); err != nil {
		t.Fatal(err)
	}
	d.WaitIdle()
	if got := denialCount(t, reg, "web", "nginx-0", "nginx", "k8s-nginx", "open"); got != 1 {
		t.Errorf("denials of web/nginx-0 = %v, want 1", got)
	}
	if n := b.calls.Load(); n != 0 {
		t.Errorf("%d ContainerStatus calls, want none: attestation named the container", n)
	}
}

// A container running before armorshim started joins the profile
// fallback with its first denial: a gone process of that profile is then
// no longer pinned on the one container started since.
func TestRunningBeforeStartJoinsTheProfileFallback(t *testing.T) {
	const old = "aaaa5b6c7d8e9f000102030405060708090a0b0c0d0e0f1011121314151617ab"
	b := denialBackend(t, map[string][3]string{old: {"web", "old", "nginx"}, "new": {"web", "new", "nginx"}})
	d, reg := newDenials(t, b, cgroups{4343: old})
	l := newLifecycle(t, d)
	l.run("new", "sb", "web", "new", "nginx", "k8s-nginx")
	if err := d.Run(context.Background(), strings.NewReader(kmsgLine(1, "k8s-nginx", "open", "/x", 4343, "cat"))); err != nil {
		t.Fatal(err)
	}
	d.WaitIdle()
	if err := d.Run(context.Background(), strings.NewReader(kmsgLine(2, "k8s-nginx", "open", "/x", 999, "cat"))); err != nil {
		t.Fatal(err)
	}
	if got := denialCount(t, reg, "web", "old", "nginx", "k8s-nginx", "open"); got != 1 {
		t.Errorf("denials of the old pod = %v, want 1 (by cgroup)", got)
	}
	if got := denialCount(t, reg, "web", "new", "nginx", "k8s-nginx", "open"); got != 0 {
		t.Errorf("denials of the new pod = %v: a gone process was pinned on it though two pods run k8s-nginx", got)
	}
}

// A denial whose process is gone is attributed from the index, whatever
// the number of containers: the runtime is never asked.
func TestDenialOfGoneProcessAsksTheRuntimeNothing(t *testing.T) {
	b := denialBackend(t, map[string][3]string{})
	d, reg := newDenials(t, b, cgroups{})
	l := newLifecycle(t, d)
	for i := range 5000 {
		l.run(fmt.Sprintf("c%04d", i), fmt.Sprintf("sb%04d", i), "ns", fmt.Sprintf("pod-%d", i), "c", denyWrite)
	}
	if err := d.Run(context.Background(), strings.NewReader(kmsgLine(1, denyWrite, "mknod", "/tmp/test", 1, "touch"))); err != nil {
		t.Fatal(err)
	}
	if n := b.calls.Load(); n != 0 {
		t.Errorf("one denial made %d ContainerStatus calls, want none", n)
	}
	if got := denialCount(t, reg, "unknown", "unknown", "unknown", denyWrite, "mknod"); got != 1 {
		t.Errorf("5000 containers share the profile: want the denial unattributed, got %v", got)
	}
}

func TestDenialIndexFollowsLifecycle(t *testing.T) {
	b := denialBackend(t, map[string][3]string{})
	d, reg := newDenials(t, b, cgroups{})
	l := newLifecycle(t, d)
	seq := 0
	deny := func() {
		seq++
		if err := d.Run(context.Background(), strings.NewReader(kmsgLine(seq, "k8s-nginx", "open", "/x", 1, "cat"))); err != nil {
			t.Fatal(err)
		}
	}
	want := func(step string, ns, pod string, n float64) {
		t.Helper()
		if got := denialCount(t, reg, ns, pod, ns, "k8s-nginx", "open"); got != n {
			t.Errorf("%s: denials of %s/%s = %v, want %v", step, ns, pod, got, n)
		}
	}
	l.run("a", "sa", "a", "a", "a", "k8s-nginx")
	l.run("b", "sb", "b", "b", "b", "k8s-nginx")
	deny()
	want("two running", "unknown", "unknown", 1)

	l.call("/runtime.v1.RuntimeService/StopContainer", &runtimeapi.StopContainerRequest{ContainerId: "b"}, &runtimeapi.StopContainerResponse{}, codes.OK)
	deny()
	want("b stopped", "a", "a", 1)

	// A failed call changes nothing.
	l.call("/runtime.v1.RuntimeService/StopPodSandbox", &runtimeapi.StopPodSandboxRequest{PodSandboxId: "sa"}, nil, codes.DeadlineExceeded)
	deny()
	want("stopping a's sandbox failed", "a", "a", 2)

	l.call("/runtime.v1.RuntimeService/StopPodSandbox", &runtimeapi.StopPodSandboxRequest{PodSandboxId: "sa"}, &runtimeapi.StopPodSandboxResponse{}, codes.OK)
	deny()
	want("a's sandbox stopped", "unknown", "unknown", 2)

	l.call(cri.StartContainerMethod, &runtimeapi.StartContainerRequest{ContainerId: "b"}, &runtimeapi.StartContainerResponse{}, codes.OK)
	deny()
	want("b started again", "b", "b", 1)

	l.call("/runtime.v1.RuntimeService/RemoveContainer", &runtimeapi.RemoveContainerRequest{ContainerId: "b"}, &runtimeapi.RemoveContainerResponse{}, codes.OK)
	deny()
	want("b removed", "unknown", "unknown", 3)

	l.run("c", "sc", "c", "c", "c", "k8s-nginx")
	deny()
	want("c running", "c", "c", 1)
	l.call("/runtime.v1.RuntimeService/RemovePodSandbox", &runtimeapi.RemovePodSandboxRequest{PodSandboxId: "sc"}, &runtimeapi.RemovePodSandboxResponse{}, codes.OK)
	deny()
	want("c's sandbox removed", "unknown", "unknown", 4)

	if n := b.calls.Load(); n != 0 {
		t.Errorf("%d ContainerStatus calls, want none", n)
	}
}

// The container and sandbox calls are held only while denials are
// attributed: otherwise they stream through untouched.
func TestLifecycleCallsHeldOnlyForDenials(t *testing.T) {
	b := denialBackend(t, nil)
	d, _ := newDenials(t, b, cgroups{})
	with, without := newLifecycle(t, d), newLifecycle(t, nil)
	for _, m := range []string{cri.StartContainerMethod, "/runtime.v1.RuntimeService/StopContainer", "/runtime.v1.RuntimeService/RemoveContainer",
		"/runtime.v1.RuntimeService/StopPodSandbox", "/runtime.v1.RuntimeService/RemovePodSandbox"} {
		if _, inspect := with.p.Route(m); inspect == nil {
			t.Errorf("%s is not held while denials are attributed", m)
		}
		if _, inspect := without.p.Route(m); inspect != nil {
			t.Errorf("%s is held with attribution and attestation off", m)
		}
	}
	// A request that cannot be decoded goes to the runtime as it is.
	_, inspect := with.p.Route("/runtime.v1.RuntimeService/StopContainer")
	if inspect == nil {
		t.Fatal("StopContainer is not held")
	}
	if v := inspect(context.Background(), []byte{0xff}); v.Status != nil || v.Request != nil || v.Response != nil {
		t.Errorf("undecodable StopContainer: %+v, want it forwarded untouched", v)
	}
}

// Lookups of containers armorshim was not told about happen beside the
// log reader, with bounded queues; what does not fit is counted.
func TestDenialLookupsNeverBlockTheLog(t *testing.T) {
	entered, release := make(chan struct{}, 1), make(chan struct{})
	b := &statusBackend{backend: startBackend(t)}
	b.onUnary("/runtime.v1.RuntimeService/ContainerStatus", func(ctx context.Context, req any, _ grpc.UnaryHandler) (any, error) {
		b.calls.Add(1)
		select {
		case entered <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		id := req.(*runtimeapi.ContainerStatusRequest).ContainerId
		return containerStatus(id, [3]string{"ns", "pod-" + id, "c"}), nil
	})
	procs := cgroups{}
	for i := range 200 {
		procs[1000+i] = fmt.Sprintf("x%03d", i)
	}
	d, reg := newDenials(t, b, procs)
	seq := 0
	log := func(pids ...int) io.Reader {
		var s strings.Builder
		for _, pid := range pids {
			seq++
			s.WriteString(kmsgLine(seq, denyWrite, "open", "/x", pid, "cat"))
		}
		return strings.NewReader(s.String())
	}
	// The first lookup is under way, and stays so.
	if err := d.Run(context.Background(), log(1000)); err != nil {
		t.Fatal(err)
	}
	<-entered
	if got := denialCount(t, reg, "unknown", "unknown", "unknown", denyWrite, "open"); got != 0 {
		t.Fatalf("the log reader waited for the runtime: %v denials already counted unknown", got)
	}
	// 199 more containers: 128 queue up, 71 are dropped. Then 1000 more
	// denials of the first: 1024 denials may wait in all.
	var pids []int
	for i := 1; i < 200; i++ {
		pids = append(pids, 1000+i)
	}
	for range 1000 {
		pids = append(pids, 1000)
	}
	if err := d.Run(context.Background(), log(pids...)); err != nil {
		t.Fatal(err)
	}
	const dropped = 71 + (1000 - (1024 - 129))
	if got := metricValue(t, reg, "armorshim_denial_lookups_dropped_total", nil); got != dropped {
		t.Errorf("dropped lookups = %v, want %d", got, dropped)
	}
	if got := denialCount(t, reg, "unknown", "unknown", "unknown", denyWrite, "open"); got != dropped {
		t.Errorf("unattributed = %v, want the %d dropped", got, dropped)
	}
	close(release)
	d.WaitIdle()
	if got := denialCount(t, reg, "ns", "pod-x000", "c", denyWrite, "open"); got != 1+1024-129 {
		t.Errorf("denials of x000 = %v, want %d", got, 1+1024-129)
	}
	for i := 1; i <= 128; i++ {
		pod := fmt.Sprintf("pod-x%03d", i)
		if got := denialCount(t, reg, "ns", pod, "c", denyWrite, "open"); got != 1 {
			t.Errorf("denials of %s = %v, want 1", pod, got)
		}
	}
	if n := b.calls.Load(); n != 129 {
		t.Errorf("%d ContainerStatus calls, want 129", n)
	}
	// Known now: no more lookups.
	if err := d.Run(context.Background(), log(1000, 1001)); err != nil {
		t.Fatal(err)
	}
	if n := b.calls.Load(); n != 129 {
		t.Errorf("%d ContainerStatus calls after more denials of known containers, want still 129", n)
	}
}

// A container the runtime does not know (not a CRI container) is asked
// about once.
func TestDenialLookupOfUnknownContainerIsRemembered(t *testing.T) {
	b := denialBackend(t, map[string][3]string{})
	d, reg := newDenials(t, b, cgroups{5: "not-cri"})
	for i := range 3 {
		if err := d.Run(context.Background(), strings.NewReader(kmsgLine(i, denyWrite, "open", "/x", 5, "sh"))); err != nil {
			t.Fatal(err)
		}
		d.WaitIdle()
	}
	if got := denialCount(t, reg, "unknown", "unknown", "unknown", denyWrite, "open"); got != 3 {
		t.Errorf("unattributed = %v, want 3", got)
	}
	if n := b.calls.Load(); n != 1 {
		t.Errorf("%d ContainerStatus calls, want 1", n)
	}
}

// auditd and the kernel log may both carry a record: it counts once.
func TestDenialRecordCountsOnce(t *testing.T) {
	b := denialBackend(t, map[string][3]string{})
	d, reg := newDenials(t, b, cgroups{})
	d.Run(context.Background(), strings.NewReader(kmsgLine(7, denyWrite, "mknod", "/tmp/test", 1, "touch")))
	d.Run(context.Background(), strings.NewReader(auditLine(7, denyWrite, "mknod", "/tmp/test", 1, "touch")+auditLine(8, denyWrite, "mknod", "/tmp/test", 1, "touch")))
	if got := denialCount(t, reg, "unknown", "unknown", "unknown", denyWrite, "mknod"); got != 2 {
		t.Errorf("denials = %v, want 2 (record 7 in both logs, record 8)", got)
	}
}

// chunkReader hands out one chunk per Read, then err.
type chunkReader struct {
	chunks []string
	err    error
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if len(r.chunks) == 0 {
		return 0, r.err
	}
	n := copy(p, r.chunks[0])
	r.chunks = r.chunks[1:]
	return n, nil
}

func (r *chunkReader) Close() error { return nil }

// The kernel log follower survives a read error: it opens the log again
// and counts it.
func TestDenialsFollowRestartsAFailedLog(t *testing.T) {
	b := denialBackend(t, map[string][3]string{})
	d, reg := newDenials(t, b, cgroups{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	opens := 0
	open := func(context.Context) (io.ReadCloser, error) {
		opens++
		switch opens {
		case 1:
			return &chunkReader{chunks: []string{kmsgLine(1, denyWrite, "mknod", "/a", 1, "touch")}, err: syscall.EIO}, nil
		case 2:
			return nil, errors.New("open /dev/kmsg: no such device")
		case 3:
			return &chunkReader{chunks: []string{kmsgLine(2, denyWrite, "mknod", "/b", 1, "touch")}, err: syscall.EIO}, nil
		}
		cancel()
		return nil, context.Canceled
	}
	var failures []int
	wait := func(_ context.Context, n int) error {
		failures = append(failures, n)
		return nil
	}
	d.Follow(ctx, "kmsg", "/dev/kmsg", open, wait)
	if got := denialCount(t, reg, "unknown", "unknown", "unknown", denyWrite, "mknod"); got != 2 {
		t.Errorf("denials = %v, want one before and one after the restarts", got)
	}
	if got := metricValue(t, reg, "armorshim_denial_log_restarts_total", map[string]string{"log": "kmsg"}); got != 3 {
		t.Errorf("restarts = %v, want 3", got)
	}
	// The backoff grows with failures in a row; a run that read records resets it.
	if fmt.Sprint(failures) != "[1 2 1]" {
		t.Errorf("waits after failures in a row %v, want [1 2 1]", failures)
	}
}

// Denials in auditd's log are attributed like those of the kernel log.
func TestDenialsFollowAuditLog(t *testing.T) {
	b := denialBackend(t, map[string][3]string{})
	d, reg := newDenials(t, b, cgroups{})
	path := filepath.Join(t.TempDir(), "audit.log")
	os.WriteFile(path, []byte(auditLine(1, denyWrite, "mknod", "/old", 1, "touch")), 0o600)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	steps := []string{auditLine(2, denyWrite, "mknod", "/tmp/test", 1, "touch"), "type=SYSCALL msg=audit(1764121000.713:2): arch=c000003e\n"}
	tailWait := func(context.Context) error {
		if len(steps) == 0 {
			cancel()
			return nil
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteString(steps[0])
		f.Close()
		steps = steps[1:]
		return nil
	}
	open := func(ctx context.Context) (io.ReadCloser, error) { return host.OpenTail(ctx, path, tailWait) }
	d.Follow(ctx, "audit", path, open, func(context.Context, int) error { t.Error("the audit log failed"); cancel(); return nil })
	if got := denialCount(t, reg, "unknown", "unknown", "unknown", denyWrite, "mknod"); got != 1 {
		t.Errorf("denials = %v, want the one written after armorshim opened the log", got)
	}
}

func TestDenialsBoundedCardinality(t *testing.T) {
	running := map[string][3]string{}
	procs := cgroups{}
	var log strings.Builder
	for i := 0; i < 1100; i++ {
		id := fmt.Sprintf("c%04d", i)
		running[id] = [3]string{"ns", fmt.Sprintf("pod-%d", i), "c"}
		procs[10000+i] = id
		log.WriteString(kmsgLine(i, denyWrite, "mknod", "/tmp/test", 10000+i, "touch"))
	}
	b := denialBackend(t, running)
	d, reg := newDenials(t, b, procs)
	l := newLifecycle(t, d)
	for id, names := range running {
		l.run(id, "sb-"+id, names[0], names[1], names[2], denyWrite)
	}
	if err := d.Run(context.Background(), strings.NewReader(log.String())); err != nil {
		t.Fatal(err)
	}
	if n := seriesCount(t, reg); n > 1001 {
		t.Errorf("%d series: the label sets are not bounded", n)
	}
	if got := denialCount(t, reg, "other", "other", "other", denyWrite, "mknod"); got != 100 {
		t.Errorf("denials past the bound = %v, want 100 folded into other", got)
	}
}

func seriesCount(t *testing.T, reg *prometheus.Registry) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "armorshim_apparmor_denials_total" {
			return len(mf.GetMetric())
		}
	}
	return 0
}
