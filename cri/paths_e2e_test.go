package cri_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/cri"
	"github.com/armorshim/armorshim/internal/rawgrpc"
)

// privilegedUnconfined is a CreateContainer that Pod Security's baseline
// level refuses: a privileged container without AppArmor.
func privilegedUnconfined(t *testing.T) []byte {
	t.Helper()
	pod := kubeletPod("default", "escape")
	cc := kubeletContainer(pod, "shell")
	cc.Linux.SecurityContext.Privileged = true
	cc.Linux.SecurityContext.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
	b, err := proto.Marshal(&runtimeapi.CreateContainerRequest{PodSandboxId: "sb", Config: cc, SandboxConfig: pod})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// hostNetworkSandbox is a RunPodSandbox that baseline refuses.
func hostNetworkSandbox(t *testing.T) []byte {
	t.Helper()
	b, err := proto.Marshal(&runtimeapi.RunPodSandboxRequest{Config: hostNetwork(kubeletPod("default", "escape"))})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A call the backend could take for a decided one, on a path other than
// the canonical CRI v1 one, is refused before anything reaches the
// backend: gRPC-Go before 1.79.3 routes a path without its leading "/" to
// the method, containerd 1.6 and 1.7 serve CRI v1alpha2, and the other
// variants look like CRI calls to some server. Each is counted. (The test
// backend is gRPC-Go 1.85 serving v1 only, which would not route them
// itself; its tap records every path its transport reads, routed or not.)
func TestNonCanonicalPathsAreRefused(t *testing.T) {
	pe := newPSSEnv(t, nil)
	ctx := ctxTimeout(t, 20*time.Second)
	create, sandbox := privilegedUnconfined(t), hostNetworkSandbox(t)

	// On the canonical paths both are decided, and refused.
	for _, c := range []struct {
		path string
		req  []byte
	}{{cri.CreateContainerMethod, create}, {cri.RunPodSandboxMethod, sandbox}} {
		n := pe.backend.pathCount()
		if _, st := rawUnary(ctx, pe.through, c.path, c.req); st.Code() != codes.PermissionDenied || !strings.HasPrefix(st.Message(), `Forbidden: violates PodSecurity "baseline:latest"`) {
			t.Fatalf("%s: %s, want PermissionDenied by Pod Security", c.path, statusString(st))
		}
		if got := pe.backend.pathsSince(n); len(got) != 0 {
			t.Fatalf("%s: the backend received %q", c.path, got)
		}
	}

	const v1only = ": armorshim serves CRI v1 only"
	malformed := func(path string) string { return fmt.Sprintf("armorshim: malformed method name: %q", path) }
	cases := []struct {
		path string
		req  []byte
		want string
	}{
		{"runtime.v1.RuntimeService/CreateContainer", create, malformed("runtime.v1.RuntimeService/CreateContainer")},
		{"runtime.v1.RuntimeService/RunPodSandbox", sandbox, malformed("runtime.v1.RuntimeService/RunPodSandbox")},
		{"/runtime.v1alpha2.RuntimeService/CreateContainer", create, "armorshim: unknown service runtime.v1alpha2.RuntimeService" + v1only},
		{"/runtime.v1alpha2.RuntimeService/RunPodSandbox", sandbox, "armorshim: unknown service runtime.v1alpha2.RuntimeService" + v1only},
		{"runtime.v1alpha2.RuntimeService/CreateContainer", create, malformed("runtime.v1alpha2.RuntimeService/CreateContainer")},
		{"/runtime.v1alpha2.ImageService/ImageStatus", nil, "armorshim: unknown service runtime.v1alpha2.ImageService" + v1only},
		{"//runtime.v1.RuntimeService/CreateContainer", create, malformed("//runtime.v1.RuntimeService/CreateContainer")},
		{"/runtime.v1.RuntimeService/CreateContainer/", create, malformed("/runtime.v1.RuntimeService/CreateContainer/")},
		{"/runtime.v1.RuntimeService/CreateContainer?x=1", create, malformed("/runtime.v1.RuntimeService/CreateContainer?x=1")},
		{"/runtime.v1.RuntimeService/Create%43ontainer", create, malformed("/runtime.v1.RuntimeService/Create%43ontainer")},
		{"/runtime.v1.Runtime%53ervice/CreateContainer", create, malformed("/runtime.v1.Runtime%53ervice/CreateContainer")},
		{"/runtime.v1.RuntimeService%2FCreateContainer", create, malformed("/runtime.v1.RuntimeService%2FCreateContainer")},
		{"/runtime.v1.RuntimeService/CreateContainer ", create, malformed("/runtime.v1.RuntimeService/CreateContainer ")},
		{"/runtime.v1.RuntimeService/", create, malformed("/runtime.v1.RuntimeService/")},
	}
	for _, c := range cases {
		n := pe.backend.pathCount()
		creates, _ := pe.backend.createRequests()
		_, st := rawUnary(ctx, pe.through, c.path, c.req)
		if st.Code() != codes.Unimplemented || st.Message() != c.want {
			t.Errorf("%q: %s, want Unimplemented %q", c.path, statusString(st), c.want)
		}
		if got := pe.backend.pathsSince(n); len(got) != 0 {
			t.Errorf("%q: the backend received %q", c.path, got)
		}
		if got, _ := pe.backend.createRequests(); len(got) != len(creates) {
			t.Errorf("%q: the backend created a container", c.path)
		}
	}
	// Counted like any call, under the bounded label of unknown methods.
	want := fmt.Sprintf(`armorshim_cri_requests_total{code="Unimplemented",method="unknown"} %d`, len(cases))
	if body := pe.scrape(t); !strings.Contains(body, want) {
		t.Errorf("metrics lack %s:\n%s", want, grepLines(body, "armorshim_cri_requests_total"))
	}
	// The connection serves on.
	if _, err := pe.runtime.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		t.Errorf("after the refusals: %v", err)
	}
}

// A method of the CRI v1 services that only looks like a decided one
// passes as an unknown method: gRPC-Go matches method names
// case-sensitively, so these reach the backend, which answers Unimplemented
// and creates nothing. (A service name in another case is not CRI:
// TestOnlyCRIIsRelayed.)
func TestLookalikeMethodsPassAsUnknown(t *testing.T) {
	pe := newPSSEnv(t, nil)
	ctx := ctxTimeout(t, 20*time.Second)
	create := privilegedUnconfined(t)
	for _, path := range []string{
		"/runtime.v1.RuntimeService/CREATECONTAINER",
		"/runtime.v1.RuntimeService/createContainer",
		"/runtime.v1.RuntimeService/RunPodSandbox_",
	} {
		n := pe.backend.pathCount()
		_, st := rawUnary(ctx, pe.through, path, create)
		if st.Code() != codes.Unimplemented || !strings.HasPrefix(st.Message(), "backend: unknown method") {
			t.Errorf("%q: %s, want the backend's Unimplemented", path, statusString(st))
		}
		if got := pe.backend.pathsSince(n); len(got) != 1 || got[0] != path {
			t.Errorf("%q: the backend received %q", path, got)
		}
	}
	if creates, _ := pe.backend.createRequests(); len(creates) != 0 {
		t.Errorf("the backend created %d containers", len(creates))
	}
}

// armorshim relays CRI v1 only. containerd's socket also serves its own
// API, which creates and starts containers with any OCI spec: relayed, it
// would be a way around every check. Its services, gRPC reflection and any
// made-up service are refused before anything reaches the backend, with
// the service named; armorshim's health service is still answered
// locally, and a method of runtime.v1.RuntimeService that cri-api does not
// know still reaches the backend.
func TestOnlyCRIIsRelayed(t *testing.T) {
	e := newEnv(t)
	ctx := ctxTimeout(t, 20*time.Second)
	const notCRI = ": armorshim relays the CRI (runtime.v1) only"
	spec := []byte(`{"process":{"args":["/bin/sh"]},"linux":{"namespaces":[]}}`)
	for _, c := range []struct {
		path, service string
		req           []byte
	}{
		{"/containerd.services.containers.v1.Containers/Create", "containerd.services.containers.v1.Containers", spec},
		{"/containerd.services.tasks.v1.Tasks/Create", "containerd.services.tasks.v1.Tasks", []byte{0x0a, 0x01, 'x'}},
		{"/containerd.services.tasks.v1.Tasks/Start", "containerd.services.tasks.v1.Tasks", nil},
		{"/containerd.services.version.v1.Version/Version", "containerd.services.version.v1.Version", nil},
		{"/made.up.v3.Service/Anything", "made.up.v3.Service", []byte{0xff, 0x00}},
		{"/runtime.v1.FutureService/Call", "runtime.v1.FutureService", nil},
		{"/Runtime.v1.RuntimeService/CreateContainer", "Runtime.v1.RuntimeService", privilegedUnconfined(t)},
		{"/RUNTIME.V1.RUNTIMESERVICE/CREATECONTAINER", "RUNTIME.V1.RUNTIMESERVICE", privilegedUnconfined(t)},
	} {
		n := e.backend.pathCount()
		want := "armorshim: unknown service " + c.service + notCRI
		if _, st := rawUnary(ctx, e.through, c.path, c.req); st.Code() != codes.Unimplemented || st.Message() != want {
			t.Errorf("%s: %s, want Unimplemented %q", c.path, statusString(st), want)
		}
		if got := e.backend.pathsSince(n); len(got) != 0 {
			t.Errorf("%s: the backend received %q", c.path, got)
		}
	}

	// Streams too, before the client sends anything: containerd's event
	// stream and gRPC reflection (full duplex).
	for _, c := range []struct {
		path, service string
		desc          grpc.StreamDesc
	}{
		{"/containerd.services.events.v1.Events/Subscribe", "containerd.services.events.v1.Events", grpc.StreamDesc{ServerStreams: true}},
		{"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "grpc.reflection.v1.ServerReflection", grpc.StreamDesc{ClientStreams: true, ServerStreams: true}},
	} {
		n := e.backend.pathCount()
		cs, err := e.through.NewStream(ctx, &c.desc, c.path)
		if err == nil {
			err = cs.RecvMsg(new(rawgrpc.Frame))
		}
		want := "armorshim: unknown service " + c.service + notCRI
		if st := status.Convert(err); st.Code() != codes.Unimplemented || st.Message() != want {
			t.Errorf("%s: %v, want Unimplemented %q", c.path, err, want)
		}
		if got := e.backend.pathsSince(n); len(got) != 0 {
			t.Errorf("%s: the backend received %q", c.path, got)
		}
	}
	if creates, _ := e.backend.createRequests(); len(creates) != 0 {
		t.Errorf("the backend created %d containers", len(creates))
	}

	// armorshim's own health service is answered by armorshim.
	n := e.backend.pathCount()
	if resp, err := healthpb.NewHealthClient(e.through).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Errorf("health: %v, %v", resp, err)
	}
	if got := e.backend.pathsSince(n); len(got) != 0 {
		t.Errorf("health: the backend received %q", got)
	}

	// A method of the CRI v1 services that cri-api does not know reaches
	// the backend, as it is.
	for _, path := range []string{"/runtime.v1.RuntimeService/FutureMethod", "/runtime.v1.ImageService/FutureMethod", "/runtime.v1.RuntimeService/createContainer"} {
		if _, known := cri.Methods[path]; known {
			t.Fatalf("%s is known to cri-api now; pick another name", path)
		}
		n := e.backend.pathCount()
		if _, st := rawUnary(ctx, e.through, path, []byte{0xff}); st.Code() != codes.Unimplemented || st.Message() != "backend: unknown method "+path {
			t.Errorf("%s: %s, want the backend's Unimplemented", path, statusString(st))
		}
		if got := e.backend.pathsSince(n); len(got) != 1 || got[0] != path {
			t.Errorf("%s: the backend received %q", path, got)
		}
	}
	if _, err := e.runtime.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		t.Errorf("after the refusals: %v", err)
	}
}
