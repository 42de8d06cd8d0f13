package cri_test

// In-process end-to-end tests: a real CRI client -> armorshim (shim.New,
// shim.Listen, Serve on a unix socket, a fake sysfs tree) -> a real gRPC
// backend serving the cri-client fake runtime, whose interceptors record
// what reached it.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/durationpb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	apitest "k8s.io/cri-api/pkg/apis/testing"

	"github.com/armorshim/armorshim/cri"
	"github.com/armorshim/armorshim/internal/rawgrpc"
	"github.com/armorshim/armorshim/shim"
)

const annotation = "container.apparmor.security.beta.kubernetes.io/"

func podConfig(name string, annotations map[string]string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:    &runtimeapi.PodSandboxMetadata{Name: name, Namespace: "default", Uid: name + "-uid"},
		Annotations: annotations,
	}
}

func containerConfig(name string) *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: "busybox"},
		Command:  []string{"sh", "-c", "echo 'Hello AppArmor!' && sleep 1h"},
	}
}

// 1. Every RuntimeService and ImageService RPC, listed from the service
// descriptors, reaches the backend as that very method and comes back with
// the same bytes (or the same status) as a direct call to the backend.
func TestEveryRPCPassesThrough(t *testing.T) {
	e := newEnv(t)
	ctx := ctxTimeout(t, 20*time.Second)

	// State in the fake so that most calls answer with something.
	direct := runtimeapi.NewRuntimeServiceClient(e.direct)
	pod := podConfig("seed-pod", map[string]string{"seed": "yes"})
	sb, err := direct.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pod})
	if err != nil {
		t.Fatal(err)
	}
	ctr, err := direct.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: containerConfig("seed"), SandboxConfig: pod})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := runtimeapi.NewImageServiceClient(e.direct).PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "busybox"}}); err != nil {
		t.Fatal(err)
	}
	sbID, cID := sb.PodSandboxId, ctr.ContainerId
	img := &runtimeapi.ImageSpec{Image: "busybox"}
	// The fake lists from Go maps, in random order: every list keeps one
	// item, so re-creating uses the seed's names (same IDs).
	requests := map[string]proto.Message{
		"RunPodSandbox":    &runtimeapi.RunPodSandboxRequest{Config: pod},
		"StopPodSandbox":   &runtimeapi.StopPodSandboxRequest{PodSandboxId: sbID},
		"PodSandboxStatus": &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sbID},
		"PodSandboxStats":  &runtimeapi.PodSandboxStatsRequest{PodSandboxId: sbID},
		"CreateContainer":  &runtimeapi.CreateContainerRequest{PodSandboxId: sbID, Config: containerConfig("seed"), SandboxConfig: pod},
		"StartContainer":   &runtimeapi.StartContainerRequest{ContainerId: cID},
		"StopContainer":    &runtimeapi.StopContainerRequest{ContainerId: cID, Timeout: 3},
		"ContainerStatus":  &runtimeapi.ContainerStatusRequest{ContainerId: cID},
		"ContainerStats":   &runtimeapi.ContainerStatsRequest{ContainerId: cID},
		"ExecSync":         &runtimeapi.ExecSyncRequest{ContainerId: cID, Cmd: []string{"true"}, Timeout: 5},
		"ImageStatus":      &runtimeapi.ImageStatusRequest{Image: img},
		"PullImage":        &runtimeapi.PullImageRequest{Image: img},
		"RemoveImage":      &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: "nginx"}},
	}

	seen := map[string]bool{}
	services := runtimeapi.File_staging_src_k8s_io_cri_api_pkg_apis_runtime_v1_api_proto.Services()
	for i := 0; i < services.Len(); i++ {
		svc := services.Get(i)
		for j := 0; j < svc.Methods().Len(); j++ {
			md := svc.Methods().Get(j)
			method := "/" + string(svc.FullName()) + "/" + string(md.Name())
			seen[method] = true
			req, ok := requests[string(md.Name())]
			if !ok {
				mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
				if err != nil {
					t.Fatalf("%s: request type: %v", method, err)
				}
				req = mt.New().Interface()
			}
			reqBytes, err := proto.Marshal(req)
			if err != nil {
				t.Fatal(err)
			}
			if md.IsStreamingClient() {
				t.Fatalf("%s: client-streaming CRI method: extend this test", method)
			}
			ctx := metadata.AppendToOutgoingContext(ctxTimeout(t, 10*time.Second), "x-via", "armorshim")
			var directOut, thruOut [][]byte
			var directSt, thruSt *status.Status
			var before int // the backend's calls before the proxied one
			if md.IsStreamingServer() {
				directOut, directSt = rawServerStream(ctx, e.direct, method, reqBytes)
				before = e.backend.callCount()
				thruOut, thruSt = rawServerStream(ctx, e.through, method, reqBytes)
			} else {
				var d, th []byte
				d, directSt = rawUnary(ctx, e.direct, method, reqBytes)
				before = e.backend.callCount()
				th, thruSt = rawUnary(ctx, e.through, method, reqBytes)
				if directSt.Code() == codes.OK {
					directOut = [][]byte{d}
				}
				if thruSt.Code() == codes.OK {
					thruOut = [][]byte{th}
				}
			}
			if directSt.Code() == codes.Unimplemented {
				t.Errorf("%s: the fake backend does not serve it: %s", method, statusString(directSt))
			}
			calls := e.backend.callsSince(before)
			if len(calls) != 1 || calls[0].Method != method || strings.Join(calls[0].MD.Get("x-via"), ",") != "armorshim" {
				var got []string
				for _, c := range calls {
					got = append(got, c.Method)
				}
				t.Errorf("%s: backend saw %v through armorshim, want exactly this method once", method, got)
			}
			if !sameStatus(directSt, thruSt) {
				t.Errorf("%s: status through armorshim %s, direct %s", method, statusString(thruSt), statusString(directSt))
			}
			if len(directOut) != len(thruOut) {
				t.Errorf("%s: %d responses through armorshim, %d direct", method, len(thruOut), len(directOut))
				continue
			}
			for k := range directOut {
				if !bytes.Equal(directOut[k], thruOut[k]) {
					t.Errorf("%s: response %d differs: through armorshim %x, direct %x", method, k, thruOut[k], directOut[k])
				}
			}
		}
	}
	if len(seen) < 41 {
		t.Errorf("only %d CRI methods in the descriptors", len(seen))
	}
	for m := range cri.Methods {
		if !seen[m] {
			t.Errorf("cri.Methods has %s, which the descriptors do not", m)
		}
	}
	if len(seen) != len(cri.Methods) {
		t.Errorf("descriptors list %d methods, cri.Methods %d", len(seen), len(cri.Methods))
	}
}

// 2. A server-streaming RPC streams several messages in order; a client
// that cancels ends the backend's handler.
func TestServerStreamingAndCancellation(t *testing.T) {
	e := newEnv(t)
	const n = 5
	backendDone := make(chan error, 1)
	e.backend.onStream("/runtime.v1.RuntimeService/GetContainerEvents", func(ss grpc.ServerStream, _ grpc.StreamHandler) error {
		if _, err := recvRaw(ss); err != nil {
			return err
		}
		for i := 0; i < n; i++ {
			ev := &runtimeapi.ContainerEventResponse{
				ContainerId:        fmt.Sprintf("c-%d", i),
				ContainerEventType: runtimeapi.ContainerEventType(i % 4),
				CreatedAt:          int64(1000 + i),
			}
			if err := ss.SendMsg(ev); err != nil {
				return err
			}
		}
		// Like containerd: keep the stream open until the kubelet goes.
		select {
		case <-ss.Context().Done():
			backendDone <- ss.Context().Err()
		case <-time.After(10 * time.Second):
			backendDone <- errors.New("backend stream was never cancelled")
		}
		return ss.Context().Err()
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stream, err := e.runtime.GetContainerEvents(ctx, &runtimeapi.GetEventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		ev, err := stream.Recv()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if ev.ContainerId != fmt.Sprintf("c-%d", i) || ev.CreatedAt != int64(1000+i) {
			t.Fatalf("event %d out of order: %v", i, ev)
		}
	}
	cancel()
	select {
	case err := <-backendDone:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("backend stream ended with %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the client's cancellation did not reach the backend")
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Canceled {
		t.Errorf("Recv after cancel: %v, want Canceled", err)
	}

	// A Stream* list RPC of cri-api v0.36+, against the fake's own handler.
	e.backend.fake.RuntimeService.SetFakeContainers([]*apitestContainer{
		fakeContainer("a"), fakeContainer("b"), fakeContainer("c"),
	})
	ctx2 := ctxTimeout(t, 5*time.Second)
	sc, err := e.runtime.StreamContainers(ctx2, &runtimeapi.StreamContainersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		resp, err := sc.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range resp.Containers {
			got = append(got, c.Id)
		}
	}
	list, err := runtimeapi.NewRuntimeServiceClient(e.direct).ListContainers(ctx2, &runtimeapi.ListContainersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || len(list.Containers) != 3 {
		t.Errorf("StreamContainers through armorshim gave %v, ListContainers direct %d containers", got, len(list.Containers))
	}
}

// 3. RPCs of the CRI v1 services that cri-api does not know pass as raw
// bytes: future methods of RuntimeService (unary shape, bidirectional) and
// of ImageService (bidirectional), with headers and trailers.
func TestUnknownMethodsPass(t *testing.T) {
	e := newEnv(t)
	const future = "/runtime.v1.RuntimeService/FutureMethod"
	for _, m := range []string{future, "/runtime.v1.RuntimeService/FutureTalk", "/runtime.v1.ImageService/FutureHangup"} {
		if _, known := cri.Methods[m]; known {
			t.Fatalf("%s is known to cri-api now; pick another name", m)
		}
	}
	e.backend.onStream(future, func(ss grpc.ServerStream, _ grpc.StreamHandler) error {
		in, err := recvRaw(ss)
		if err != nil {
			return err
		}
		md, _ := metadata.FromIncomingContext(ss.Context())
		ss.SetHeader(metadata.Pairs("x-echo-header", "h1", "x-seen", strings.Join(md.Get("x-custom"), ",")))
		ss.SetTrailer(metadata.Pairs("x-echo-trailer", "t1"))
		return ss.SendMsg(rawgrpc.FrameOf(append([]byte("echo:"), in...)))
	})
	// Not a valid protobuf message: nothing on the way may decode it.
	payload := []byte{0xff, 0xfe, 0x00, 0x01, 'f', 'u', 't', 'u', 'r', 'e'}
	var header, trailer metadata.MD
	ctx := metadata.AppendToOutgoingContext(ctxTimeout(t, 5*time.Second), "x-custom", "v")
	out, st := rawUnary(ctx, e.through, future, payload, grpc.Header(&header), grpc.Trailer(&trailer))
	if st.Code() != codes.OK {
		t.Fatalf("%s through armorshim: %s", future, statusString(st))
	}
	if want := append([]byte("echo:"), payload...); !bytes.Equal(out, want) {
		t.Errorf("echo = %q, want %q", out, want)
	}
	if strings.Join(header.Get("x-echo-header"), "") != "h1" || strings.Join(header.Get("x-seen"), "") != "v" {
		t.Errorf("header = %v", header)
	}
	if strings.Join(trailer.Get("x-echo-trailer"), "") != "t1" {
		t.Errorf("trailer = %v", trailer)
	}

	// Full duplex: each message is answered before the client half-closes.
	const chat = "/runtime.v1.RuntimeService/FutureTalk"
	e.backend.onStream(chat, func(ss grpc.ServerStream, _ grpc.StreamHandler) error {
		ss.SendHeader(metadata.Pairs("x-chat", "open"))
		for {
			in, err := recvRaw(ss)
			if errors.Is(err, io.EOF) {
				ss.SetTrailer(metadata.Pairs("x-chat", "closed"))
				return nil
			}
			if err != nil {
				return err
			}
			if err := ss.SendMsg(rawgrpc.FrameOf(bytes.ToUpper(in))); err != nil {
				return err
			}
		}
	})
	cs, err := e.through.NewStream(ctxTimeout(t, 5*time.Second), &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, chat)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"one", "two", "three"} {
		if err := cs.SendMsg(rawgrpc.FrameOf([]byte(w))); err != nil {
			t.Fatal(err)
		}
		f := new(rawgrpc.Frame)
		if err := cs.RecvMsg(f); err != nil {
			t.Fatalf("%s: %v", w, err)
		}
		if got := string(f.Bytes()); got != strings.ToUpper(w) {
			t.Errorf("got %q, want %q", got, strings.ToUpper(w))
		}
	}
	if h, err := cs.Header(); err != nil || strings.Join(h.Get("x-chat"), "") != "open" {
		t.Errorf("chat header = %v, %v", h, err)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := cs.RecvMsg(new(rawgrpc.Frame)); !errors.Is(err, io.EOF) {
		t.Fatalf("after half-close: %v, want EOF", err)
	}
	if strings.Join(cs.Trailer().Get("x-chat"), "") != "closed" {
		t.Errorf("chat trailer = %v", cs.Trailer())
	}

	// The backend ends a duplex call while the client still has its side
	// open: the client gets the backend's status and trailer.
	const hangup = "/runtime.v1.ImageService/FutureHangup"
	e.backend.onStream(hangup, func(ss grpc.ServerStream, _ grpc.StreamHandler) error {
		if _, err := recvRaw(ss); err != nil {
			return err
		}
		ss.SetTrailer(metadata.Pairs("x-bye", "now"))
		return status.Error(codes.Aborted, "hung up")
	})
	hs, err := e.through.NewStream(ctxTimeout(t, 5*time.Second), &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, hangup)
	if err != nil {
		t.Fatal(err)
	}
	if err := hs.SendMsg(rawgrpc.FrameOf([]byte("hello"))); err != nil {
		t.Fatal(err)
	}
	err = hs.RecvMsg(new(rawgrpc.Frame))
	if st := status.Convert(err); st.Code() != codes.Aborted || st.Message() != "hung up" || strings.Join(hs.Trailer().Get("x-bye"), "") != "now" {
		t.Errorf("hangup: %v, trailer %v", err, hs.Trailer())
	}
	if _, err := e.runtime.Version(ctxTimeout(t, 5*time.Second), &runtimeapi.VersionRequest{}); err != nil {
		t.Errorf("after a hangup: %v", err)
	}
}

// 4. Errors keep code, message, details, headers and trailers; metadata,
// deadlines and cancellation reach the backend.
func TestErrorsMetadataDeadlinesCancellation(t *testing.T) {
	e := newEnv(t)
	ctx := ctxTimeout(t, 10*time.Second)

	errStatus := func() *status.Status {
		st, err := status.New(codes.NotFound, `container "abc" not found: ünïcödé`).WithDetails(
			&errdetails.ErrorInfo{Reason: "NOT_FOUND", Domain: "containerd.io", Metadata: map[string]string{"id": "abc"}},
			&errdetails.RetryInfo{RetryDelay: durationpb.New(3 * time.Second)},
		)
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	bin := []byte{0, 1, 2, 0xff, '\n'}
	failing := func(ctx context.Context, _ any, _ grpc.UnaryHandler) (any, error) {
		grpc.SetHeader(ctx, metadata.MD{"x-h": {"h1", "h2"}, "x-h-bin": {string(bin)}})
		grpc.SetTrailer(ctx, metadata.MD{"x-t": {"t1"}, "x-t-bin": {string(bin)}})
		return nil, errStatus().Err()
	}
	e.backend.onUnary("/runtime.v1.RuntimeService/ContainerStatus", failing)
	e.backend.onUnary("/runtime.v1.ImageService/ImageStatus", failing)
	check := func(name string, err error, header, trailer metadata.MD) {
		t.Helper()
		st := status.Convert(err)
		if !sameStatus(st, errStatus()) {
			t.Errorf("%s: status %s, want %s", name, statusString(st), statusString(errStatus()))
		}
		if len(st.Details()) != 2 {
			t.Errorf("%s: details %v", name, st.Details())
		} else if info, ok := st.Details()[0].(*errdetails.ErrorInfo); !ok || info.Reason != "NOT_FOUND" || info.Metadata["id"] != "abc" {
			t.Errorf("%s: ErrorInfo %v", name, st.Details()[0])
		}
		if got := header.Get("x-h"); len(got) != 2 || got[0] != "h1" || got[1] != "h2" {
			t.Errorf("%s: header x-h = %q", name, got)
		}
		if got := header.Get("x-h-bin"); len(got) != 1 || got[0] != string(bin) {
			t.Errorf("%s: header x-h-bin = %q", name, got)
		}
		if got := trailer.Get("x-t"); len(got) != 1 || got[0] != "t1" {
			t.Errorf("%s: trailer x-t = %q", name, got)
		}
		if got := trailer.Get("x-t-bin"); len(got) != 1 || got[0] != string(bin) {
			t.Errorf("%s: trailer x-t-bin = %q", name, got)
		}
	}
	var header, trailer metadata.MD
	_, err := e.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: "abc"}, grpc.Header(&header), grpc.Trailer(&trailer))
	check("ContainerStatus", err, header, trailer)
	header, trailer = nil, nil
	_, err = e.image.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: "x"}}, grpc.Header(&header), grpc.Trailer(&trailer))
	check("ImageStatus", err, header, trailer)

	// A successful unary call keeps its header and trailer too.
	e.backend.onUnary("/runtime.v1.RuntimeService/Version", func(ctx context.Context, req any, h grpc.UnaryHandler) (any, error) {
		grpc.SetHeader(ctx, metadata.Pairs("x-ok-h", "1"))
		grpc.SetTrailer(ctx, metadata.Pairs("x-ok-t", "2"))
		return h(ctx, req)
	})
	header, trailer = nil, nil
	v, err := e.runtime.Version(ctx, &runtimeapi.VersionRequest{}, grpc.Header(&header), grpc.Trailer(&trailer))
	if err != nil || v.RuntimeName == "" || strings.Join(header.Get("x-ok-h"), "") != "1" || strings.Join(trailer.Get("x-ok-t"), "") != "2" {
		t.Errorf("Version: %v, %v, header %v, trailer %v", v, err, header, trailer)
	}

	// A server stream that fails after one message: message, status and
	// trailer arrive.
	e.backend.onStream("/runtime.v1.RuntimeService/StreamPodSandboxes", func(ss grpc.ServerStream, _ grpc.StreamHandler) error {
		if _, err := recvRaw(ss); err != nil {
			return err
		}
		ss.SetHeader(metadata.MD{"x-h": {"h1", "h2"}, "x-h-bin": {string(bin)}})
		if err := ss.SendMsg(&runtimeapi.StreamPodSandboxesResponse{PodSandboxes: []*runtimeapi.PodSandbox{{Id: "p1"}}}); err != nil {
			return err
		}
		ss.SetTrailer(metadata.MD{"x-t": {"t1"}, "x-t-bin": {string(bin)}})
		return errStatus().Err()
	})
	// A server stream that fails before any message (a trailers-only
	// answer when no header was set).
	e.backend.onStream("/runtime.v1.RuntimeService/StreamContainerStats", func(ss grpc.ServerStream, _ grpc.StreamHandler) error {
		if _, err := recvRaw(ss); err != nil {
			return err
		}
		ss.SetTrailer(metadata.MD{"x-t": {"t1"}, "x-t-bin": {string(bin)}})
		return errStatus().Err()
	})
	scs, err := e.runtime.StreamContainerStats(ctx, &runtimeapi.StreamContainerStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := scs.Recv(); !sameStatus(status.Convert(err), errStatus()) || strings.Join(scs.Trailer().Get("x-t"), "") != "t1" ||
		strings.Join(scs.Trailer().Get("x-t-bin"), "") != string(bin) {
		t.Errorf("StreamContainerStats: %v, trailer %v", err, scs.Trailer())
	}

	sps, err := e.runtime.StreamPodSandboxes(ctx, &runtimeapi.StreamPodSandboxesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := sps.Recv()
	if err != nil || len(first.PodSandboxes) != 1 || first.PodSandboxes[0].Id != "p1" {
		t.Fatalf("first message: %v, %v", first, err)
	}
	_, err = sps.Recv()
	header, _ = sps.Header()
	check("StreamPodSandboxes", err, header, sps.Trailer())

	// Incoming metadata, custom and binary keys, reaches the backend.
	before := e.backend.callCount()
	mdCtx := metadata.NewOutgoingContext(ctx, metadata.MD{
		"x-custom":     {"a", "b"},
		"x-custom-bin": {string(bin)},
		"x-request-id": {"req-42"},
	})
	if _, err := e.runtime.Status(mdCtx, &runtimeapi.StatusRequest{}); err != nil {
		t.Fatal(err)
	}
	calls := e.backend.callsSince(before)
	if len(calls) != 1 || calls[0].Method != "/runtime.v1.RuntimeService/Status" {
		t.Fatalf("backend calls %v", calls)
	}
	md := calls[0].MD
	if got := md.Get("x-custom"); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Errorf("x-custom at backend = %q", got)
	}
	if got := md.Get("x-custom-bin"); len(got) != 1 || got[0] != string(bin) {
		t.Errorf("x-custom-bin at backend = %q", got)
	}
	if got := md.Get("x-request-id"); len(got) != 1 || got[0] != "req-42" {
		t.Errorf("x-request-id at backend = %q", got)
	}

	// Deadlines reach the backend, unary and streaming.
	for _, tc := range []struct {
		name string
		call func(context.Context) error
	}{
		{"/runtime.v1.RuntimeService/ListContainers", func(ctx context.Context) error {
			_, err := e.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
			return err
		}},
		{"/runtime.v1.ImageService/StreamImages", func(ctx context.Context) error {
			s, err := e.image.StreamImages(ctx, &runtimeapi.StreamImagesRequest{})
			if err != nil {
				return err
			}
			for {
				if _, err := s.Recv(); errors.Is(err, io.EOF) {
					return nil
				} else if err != nil {
					return err
				}
			}
		}},
	} {
		dctx, cancel := context.WithTimeout(ctx, 7*time.Second)
		want, _ := dctx.Deadline()
		before := e.backend.callCount()
		start := time.Now()
		err := tc.call(dctx)
		elapsed := time.Since(start)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		calls := e.backend.callsSince(before)
		if len(calls) != 1 || calls[0].Method != tc.name {
			t.Fatalf("%s: backend calls %v", tc.name, calls)
		}
		// gRPC sends a deadline as a timeout, rounded up: each hop may
		// add its transit time, which the call's duration bounds, and
		// none may take time off.
		if !calls[0].HasDeadline {
			t.Errorf("%s: no deadline at the backend", tc.name)
		} else if late, early := calls[0].Deadline.Sub(want), want.Sub(calls[0].Deadline); late > elapsed+time.Millisecond || early > time.Millisecond {
			t.Errorf("%s: backend deadline %v, client's %v, the call took %v", tc.name, calls[0].Deadline, want, elapsed)
		}
	}

	// A call without a deadline has none at the backend (the kubelet
	// always sets one; armorshim must not invent a shorter one).
	before = e.backend.callCount()
	if _, err := e.runtime.Version(context.Background(), &runtimeapi.VersionRequest{}); err != nil {
		t.Fatal(err)
	}
	if calls := e.backend.callsSince(before); len(calls) != 1 || calls[0].HasDeadline {
		t.Errorf("Version without a deadline: backend calls %v", calls)
	}

	// Cancelling a unary call ends the backend's handler.
	entered := make(chan struct{})
	ended := make(chan error, 1)
	e.backend.onUnary("/runtime.v1.RuntimeService/ExecSync", func(ctx context.Context, _ any, _ grpc.UnaryHandler) (any, error) {
		close(entered)
		select {
		case <-ctx.Done():
			ended <- ctx.Err()
			return nil, ctx.Err()
		case <-time.After(10 * time.Second):
			ended <- errors.New("never cancelled")
			return &runtimeapi.ExecSyncResponse{}, nil
		}
	})
	cctx, cancel := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() {
		_, err := e.runtime.ExecSync(cctx, &runtimeapi.ExecSyncRequest{ContainerId: "abc", Cmd: []string{"sleep", "1h"}})
		errc <- err
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("ExecSync never reached the backend")
	}
	cancel()
	select {
	case err := <-ended:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("backend handler ended with %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancellation did not reach the backend")
	}
	if err := <-errc; status.Code(err) != codes.Canceled {
		t.Errorf("client got %v, want Canceled", err)
	}
}

// 5. Messages just under 16 MiB pass both ways; 17 MiB fails cleanly with
// ResourceExhausted either way, and armorshim keeps serving.
func TestMessageSizes(t *testing.T) {
	e := newEnv(t)
	ctx := ctxTimeout(t, 3*time.Minute) // ~100 MB through two hops under -race: slow on a loaded machine
	const limit = shim.DefaultMaxMessageSize
	underLimit := limit - 4096

	// sized returns the largest message build(len) of at most n bytes
	// (varint lengths make some sizes unreachable).
	sized := func(n int, build func(pad int) proto.Message) proto.Message {
		pad := n - proto.Size(build(0))
		for {
			m := build(pad)
			over := proto.Size(m) - n
			if over <= 0 {
				return m
			}
			pad -= over
		}
	}
	bigList := func(n int) *runtimeapi.ListContainersResponse {
		return sized(n, func(pad int) proto.Message {
			return &runtimeapi.ListContainersResponse{Containers: []*runtimeapi.Container{{Id: "big", Labels: map[string]string{"k": strings.Repeat("x", pad)}}}}
		}).(*runtimeapi.ListContainersResponse)
	}
	bigReq := func(n int) *runtimeapi.ListContainersRequest {
		return sized(n, func(pad int) proto.Message {
			return &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{LabelSelector: map[string]string{"k": strings.Repeat("y", pad)}}}
		}).(*runtimeapi.ListContainersRequest)
	}
	var respSize, gotReq atomic.Int64
	e.backend.onUnary("/runtime.v1.RuntimeService/ListContainers", func(_ context.Context, req any, _ grpc.UnaryHandler) (any, error) {
		gotReq.Store(int64(proto.Size(req.(*runtimeapi.ListContainersRequest))))
		return bigList(int(respSize.Load())), nil
	})

	// Both ways just under the limit.
	respSize.Store(int64(underLimit))
	req := bigReq(underLimit)
	resp, err := e.runtime.ListContainers(ctx, req)
	if err != nil {
		t.Fatalf("%d-byte request and response: %v", underLimit, err)
	}
	if got := proto.Size(resp); got > underLimit || got < underLimit-8 || gotReq.Load() != int64(proto.Size(req)) || proto.Size(req) < underLimit-8 {
		t.Errorf("sizes: response %d (want about %d), request %d, at the backend %d", got, underLimit, proto.Size(req), gotReq.Load())
	}

	// An unknown method carries 15 MiB raw both ways too.
	const echo = "/runtime.v1.RuntimeService/FutureEcho"
	e.backend.onStream(echo, func(ss grpc.ServerStream, _ grpc.StreamHandler) error {
		in, err := recvRaw(ss)
		if err != nil {
			return err
		}
		return ss.SendMsg(rawgrpc.FrameOf(in))
	})
	payload := bytes.Repeat([]byte{0xa5}, 15<<20)
	out, st := rawUnary(ctx, e.through, echo, payload)
	if st.Code() != codes.OK || !bytes.Equal(out, payload) {
		t.Errorf("15 MiB echo: %s, %d bytes back", statusString(st), len(out))
	}

	// 17 MiB request: refused by armorshim, never forwarded.
	before := e.backend.callCount()
	_, err = e.runtime.ListContainers(ctx, bigReq(17<<20))
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("17 MiB request: %v, want ResourceExhausted", err)
	}
	if calls := e.backend.callsSince(before); len(calls) != 0 {
		t.Errorf("17 MiB request reached the backend: %v", calls)
	}

	// 17 MiB response: the backend sends it, armorshim refuses it.
	respSize.Store(17 << 20)
	_, err = e.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("17 MiB response: %v, want ResourceExhausted", err)
	}

	// And 17 MiB on an unknown (streamed) method.
	_, st = rawUnary(ctx, e.through, echo, bytes.Repeat([]byte{1}, 17<<20))
	if st.Code() != codes.ResourceExhausted {
		t.Errorf("17 MiB unknown-method request: %s, want ResourceExhausted", statusString(st))
	}

	// armorshim still serves.
	respSize.Store(100)
	if _, err := e.runtime.ListContainers(ctx, &runtimeapi.ListContainersRequest{}); err != nil {
		t.Errorf("after the oversized messages: %v", err)
	}
	if _, err := e.runtime.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		t.Errorf("after the oversized messages: %v", err)
	}
}

// 6. The seed's pods: forwarded with both CRI fields, refused when the
// profile is not loaded (nothing reaches the backend), admitted once it is.
func TestAppArmorDecisions(t *testing.T) {
	e := newEnv(t)
	ctx := ctxTimeout(t, 10*time.Second)

	run := func(pod, container, ref string) (*runtimeapi.PodSandboxConfig, string) {
		t.Helper()
		cfg := podConfig(pod, map[string]string{annotation + container: ref})
		resp, err := e.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
		if err != nil {
			t.Fatalf("RunPodSandbox %s: %v", pod, err)
		}
		return cfg, resp.PodSandboxId
	}
	wantFields := func(req *runtimeapi.CreateContainerRequest, name string) {
		t.Helper()
		sc := req.GetConfig().GetLinux().GetSecurityContext()
		if sc.GetApparmor().GetProfileType() != runtimeapi.SecurityProfile_Localhost || sc.GetApparmor().GetLocalhostRef() != name {
			t.Errorf("backend got apparmor %v, want Localhost %q", sc.GetApparmor(), name)
		}
		if sc.GetApparmorProfile() != "localhost/"+name {
			t.Errorf("backend got apparmor_profile %q, want %q", sc.GetApparmorProfile(), "localhost/"+name)
		}
	}

	// hello-apparmor: the annotation only, profile loaded.
	pod, sb := run("hello-apparmor", "hello", "localhost/"+denyWrite)
	resp, err := e.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb, Config: containerConfig("hello"), SandboxConfig: pod})
	if err != nil {
		t.Fatalf("hello-apparmor: %v", err)
	}
	creates, _ := e.backend.createRequests()
	if len(creates) != 1 {
		t.Fatalf("backend got %d CreateContainer calls, want 1", len(creates))
	}
	wantFields(creates[0], denyWrite)
	if creates[0].PodSandboxId != sb || creates[0].Config.Metadata.Name != "hello" || resp.ContainerId == "" {
		t.Errorf("forwarded request %v, response %v", creates[0], resp)
	}
	if st, err := runtimeapi.NewRuntimeServiceClient(e.direct).ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: resp.ContainerId}); err != nil || st.Status.Metadata.Name != "hello" {
		t.Errorf("the fake runtime does not have the container: %v, %v", st, err)
	}

	// hello-apparmor-2: profile not loaded.
	pod2, sb2 := run("hello-apparmor-2", "hello", "localhost/"+allowWrite)
	req2 := &runtimeapi.CreateContainerRequest{PodSandboxId: sb2, Config: containerConfig("hello"), SandboxConfig: pod2}
	before := e.backend.callCount()
	_, err = e.runtime.CreateContainer(ctx, req2)
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition {
		t.Fatalf("hello-apparmor-2: %v, want FailedPrecondition", err)
	}
	if want := `Blocked: Cannot enforce AppArmor: profile "k8s-apparmor-example-allow-write" is not loaded`; st.Message() != want {
		t.Errorf("message %q, want %q", st.Message(), want)
	}
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	if info == nil || info.Reason != "Blocked" || info.Metadata["container"] != "hello" || info.Metadata["pod"] != "hello-apparmor-2" ||
		info.Metadata["namespace"] != "default" || !strings.Contains(info.Metadata["profile"], allowWrite) {
		t.Errorf("ErrorInfo = %v", info)
	}
	if calls := e.backend.callsSince(before); len(calls) != 0 {
		t.Errorf("a refused CreateContainer reached the backend: %v", calls)
	}
	if creates, _ := e.backend.createRequests(); len(creates) != 1 {
		t.Errorf("backend has %d CreateContainer calls, want still 1", len(creates))
	}

	// Load the profile (profiles file + revision bump): the kubelet's retry
	// of the very same request now succeeds.
	e.sysfs.setProfiles(denyWrite+" (enforce)", "docker-default (enforce)", allowWrite+" (enforce)")
	if _, err := e.runtime.CreateContainer(ctx, req2); err != nil {
		t.Fatalf("retry after loading the profile: %v", err)
	}
	creates, _ = e.backend.createRequests()
	if len(creates) != 2 {
		t.Fatalf("backend got %d CreateContainer calls, want 2", len(creates))
	}
	wantFields(creates[1], allowWrite)

	// An invalid reference: InvalidArgument, not forwarded.
	bad := containerConfig("bad")
	bad.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{ApparmorProfile: "foo/bar"}}
	before = e.backend.callCount()
	_, err = e.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb, Config: bad, SandboxConfig: pod})
	if st := status.Convert(err); st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), `invalid AppArmor profile name: "foo/bar"`) {
		t.Errorf("foo/bar: %v, want InvalidArgument invalid AppArmor profile name", err)
	}
	if calls := e.backend.callsSince(before); len(calls) != 0 {
		t.Errorf("an invalid CreateContainer reached the backend: %v", calls)
	}

	// No profile: forwarded byte for byte. The bytes are valid but not what
	// a re-encoding gives (sandbox_config, field 3, comes first; a field
	// this cri-api does not know, as from a newer kubelet, is in the
	// middle), so any decode/encode on the way would show.
	head, err := proto.Marshal(&runtimeapi.CreateContainerRequest{SandboxConfig: podConfig("hello-apparmor", nil)})
	if err != nil {
		t.Fatal(err)
	}
	tail, err := proto.Marshal(&runtimeapi.CreateContainerRequest{PodSandboxId: sb, Config: containerConfig("plain")})
	if err != nil {
		t.Fatal(err)
	}
	plain := append(head, protowire.AppendVarint(protowire.AppendTag(nil, 9998, protowire.VarintType), 42)...)
	plain = append(plain, tail...)
	if canonical, _ := proto.Marshal(mustUnmarshalCreate(t, plain)); bytes.Equal(canonical, plain) {
		t.Fatal("the test request is in canonical order: it cannot show a re-encoding")
	}
	plain = protowire.AppendTag(plain, 9999, protowire.BytesType)
	plain = protowire.AppendString(plain, "from the future")
	if _, st := rawUnary(ctx, e.through, cri.CreateContainerMethod, plain); st.Code() != codes.OK {
		t.Fatalf("plain CreateContainer: %s", statusString(st))
	}
	_, raws := e.backend.createRequests()
	if len(raws) != 3 || !bytes.Equal(raws[2], plain) {
		t.Errorf("the backend did not receive the request's bytes unchanged:\n got %x\nwant %x", raws[len(raws)-1], plain)
	}

	// AppArmor disabled in the kernel: a separate armorshim on a tree with
	// enabled=N.
	off := newFakeSysfs(t, "N", denyWrite+" (enforce)")
	a := startArmorshim(t, e.backend.sock, off, nil)
	offClient := runtimeapi.NewRuntimeServiceClient(dial(t, a.sock))
	before = e.backend.callCount()
	_, err = offClient.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb, Config: containerConfig("hello"), SandboxConfig: pod})
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != "Blocked: Cannot enforce AppArmor: AppArmor is not enabled on the host" {
		t.Errorf("AppArmor off: %v", err)
	}
	if calls := e.backend.callsSince(before); len(calls) != 0 {
		t.Errorf("a refused CreateContainer reached the backend: %v", calls)
	}
	// ... but a container that asks for nothing still runs there.
	if _, err := offClient.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb, Config: containerConfig("other"), SandboxConfig: pod}); err != nil {
		t.Errorf("AppArmor off, no profile: %v", err)
	}
}

// 7. armorshim starts without its backend, fails fast with Unavailable, and
// recovers when the backend comes up, and again after it restarts.
func TestBackendDownThenUp(t *testing.T) {
	b := newBackend(t, sockDir(t)+"/backend.sock")
	a := startArmorshim(t, b.sock, newFakeSysfs(t, "Y"), nil)
	rt := runtimeapi.NewRuntimeServiceClient(dial(t, a.sock))

	version := func() (time.Duration, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		start := time.Now()
		_, err := rt.Version(ctx, &runtimeapi.VersionRequest{})
		return time.Since(start), err
	}
	waitFor := func(what string, ok func(error) bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := version()
			if ok(err) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: last error %v", what, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	if _, err := os.Stat(b.sock); !os.IsNotExist(err) {
		t.Fatalf("backend socket exists: %v", err)
	}
	for i := 0; i < 3; i++ {
		took, err := version()
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("backend down: %v, want Unavailable", err)
		}
		if !strings.Contains(err.Error(), b.sock) {
			t.Errorf("the Unavailable error does not come from armorshim's backend dial: %v", err)
		}
		if took > time.Second {
			t.Errorf("backend down: the call took %v, want well under 2s", took)
		}
	}

	b.start()
	start := time.Now()
	waitFor("backend up", func(err error) bool { return err == nil })
	t.Logf("recovered %v after the backend came up", time.Since(start))

	b.stop()
	waitFor("backend stopped", func(err error) bool { return status.Code(err) == codes.Unavailable })
	if took, err := version(); status.Code(err) != codes.Unavailable || took > time.Second {
		t.Errorf("backend stopped: %v after %v, want a fast Unavailable", err, took)
	}

	b.start()
	waitFor("backend restarted", func(err error) bool { return err == nil })
}

// The image endpoint may differ from the runtime endpoint: each service
// reaches its own backend.
func TestSeparateImageEndpoint(t *testing.T) {
	runtimeBackend, imageBackend := startBackend(t), startBackend(t)
	a := startArmorshim(t, runtimeBackend.sock, newFakeSysfs(t, "Y"), func(c *shim.Config) {
		c.ImageEndpoint = "unix://" + imageBackend.sock
	})
	conn := dial(t, a.sock)
	ctx := ctxTimeout(t, 5*time.Second)
	rb, ib := runtimeBackend.callCount(), imageBackend.callCount()
	if _, err := runtimeapi.NewImageServiceClient(conn).PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: "busybox"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := runtimeapi.NewRuntimeServiceClient(conn).Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
		t.Fatal(err)
	}
	if s, err := runtimeapi.NewImageServiceClient(conn).StreamImages(ctx, &runtimeapi.StreamImagesRequest{}); err != nil {
		t.Fatal(err)
	} else if resp, err := s.Recv(); err != nil || len(resp.Images) != 1 {
		t.Errorf("StreamImages from the image backend: %v, %v", resp, err)
	}
	methods := func(calls []call) (out []string) {
		for _, c := range calls {
			out = append(out, c.Method)
		}
		return out
	}
	if got := methods(imageBackend.callsSince(ib)); len(got) != 2 || got[0] != "/runtime.v1.ImageService/PullImage" || got[1] != "/runtime.v1.ImageService/StreamImages" {
		t.Errorf("image backend saw %v", got)
	}
	if got := methods(runtimeBackend.callsSince(rb)); len(got) != 1 || got[0] != "/runtime.v1.RuntimeService/Version" {
		t.Errorf("runtime backend saw %v", got)
	}
}

// apitestContainer and fakeContainer make fake containers for the fake's
// SetFakeContainers.
type apitestContainer = apitest.FakeContainer

func fakeContainer(id string) *apitestContainer {
	return &apitestContainer{ContainerStatus: runtimeapi.ContainerStatus{
		Id:       id,
		Metadata: &runtimeapi.ContainerMetadata{Name: id},
		State:    runtimeapi.ContainerState_CONTAINER_RUNNING,
	}, SandboxID: "sb"}
}

func mustUnmarshalCreate(t *testing.T, b []byte) *runtimeapi.CreateContainerRequest {
	t.Helper()
	req := &runtimeapi.CreateContainerRequest{}
	if err := proto.Unmarshal(b, req); err != nil {
		t.Fatal(err)
	}
	return req
}
