package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// maxMessageSize is the kubelet's CRI message limit, used by every process of
// the benchmark so that no path is refused a large list.
const maxMessageSize = 16 << 20

// fakeRuntime is a lightweight CRI runtime holding a fixed node state. Like
// containerd it encodes each response with the generated types on every call,
// but it does no other work, so the cost measured is the RPC path's. All its
// state is built at start and only read afterwards: it takes no lock, but
// for its subscribers to containerd's events (events).
type fakeRuntime struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer
	events *fakeEvents

	sandboxes    []*runtimeapi.PodSandbox
	containers   []*runtimeapi.Container
	byID         map[string]*runtimeapi.Container
	bySandbox    map[string][]*runtimeapi.Container
	sandboxByID  map[string]*runtimeapi.PodSandbox
	statusByID   map[string]*runtimeapi.ContainerStatus
	sandboxState map[string]*runtimeapi.PodSandboxStatus
	statsByID    map[string]*runtimeapi.ContainerStats
	indexByID    map[string]int // a container's index, which gives its pid (fakePid)
}

// containersPerPod is how many containers each fake pod holds (an app, a
// sidecar, an init container, ...).
const containersPerPod = 5

// fakeID returns a 64 hex digit ID, as containerd's.
func fakeID(kind string, i int) string {
	sum := sha256.Sum256([]byte(kind + strconv.Itoa(i)))
	return hex.EncodeToString(sum[:])
}

// newFakeRuntime builds a node with n containers in n/containersPerPod pods,
// with the labels and annotations the kubelet sets.
func newFakeRuntime(n int) *fakeRuntime {
	f := &fakeRuntime{
		events:       &fakeEvents{subs: map[chan *types.Envelope]struct{}{}},
		byID:         map[string]*runtimeapi.Container{},
		bySandbox:    map[string][]*runtimeapi.Container{},
		sandboxByID:  map[string]*runtimeapi.PodSandbox{},
		statusByID:   map[string]*runtimeapi.ContainerStatus{},
		sandboxState: map[string]*runtimeapi.PodSandboxStatus{},
		statsByID:    map[string]*runtimeapi.ContainerStats{},
		indexByID:    map[string]int{},
	}
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	pods := (n + containersPerPod - 1) / containersPerPod
	for p := 0; p < pods; p++ {
		name := fmt.Sprintf("app-%d-7d9f8c6b5-x%04d", p%97, p)
		ns := fmt.Sprintf("team-%d", p%23)
		uid := fakeID("uid", p)[:36]
		sb := &runtimeapi.PodSandbox{
			Id:        fakeID("sandbox", p),
			Metadata:  &runtimeapi.PodSandboxMetadata{Name: name, Namespace: ns, Uid: uid},
			State:     runtimeapi.PodSandboxState_SANDBOX_READY,
			CreatedAt: created,
			Labels: map[string]string{
				"app": fmt.Sprintf("app-%d", p%97), "pod-template-hash": "7d9f8c6b5",
				"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": ns, "io.kubernetes.pod.uid": uid,
			},
			Annotations: map[string]string{
				"kubernetes.io/config.seen":   "2026-01-01T00:00:00.000000000Z",
				"kubernetes.io/config.source": "api",
			},
			RuntimeHandler: "runc",
		}
		f.sandboxes = append(f.sandboxes, sb)
		f.sandboxByID[sb.Id] = sb
		f.sandboxState[sb.Id] = &runtimeapi.PodSandboxStatus{
			Id: sb.Id, Metadata: sb.Metadata, State: sb.State, CreatedAt: created,
			Network: &runtimeapi.PodSandboxNetworkStatus{Ip: fmt.Sprintf("10.244.%d.%d", p/250, p%250+2)},
			Linux: &runtimeapi.LinuxPodSandboxStatus{Namespaces: &runtimeapi.Namespace{Options: &runtimeapi.NamespaceOption{
				Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}}},
			Labels: sb.Labels, Annotations: sb.Annotations, RuntimeHandler: "runc",
		}
	}
	for i := 0; i < n; i++ {
		sb := f.sandboxes[i/containersPerPod]
		cname := fmt.Sprintf("container-%d", i%containersPerPod)
		image := fmt.Sprintf("registry.example.com/team/app-%d:v1.%d.0", i%97, i%7)
		imageRef := "sha256:" + fakeID("image", i%97)
		labels := map[string]string{
			"io.kubernetes.container.name": cname,
			"io.kubernetes.pod.name":       sb.Metadata.Name,
			"io.kubernetes.pod.namespace":  sb.Metadata.Namespace,
			"io.kubernetes.pod.uid":        sb.Metadata.Uid,
		}
		annotations := map[string]string{
			"io.kubernetes.container.hash":                     strconv.FormatUint(uint64(i)*2654435761%4294967296, 16),
			"io.kubernetes.container.restartCount":             "0",
			"io.kubernetes.container.terminationMessagePath":   "/dev/termination-log",
			"io.kubernetes.container.terminationMessagePolicy": "File",
			"io.kubernetes.pod.terminationGracePeriod":         "30",
			"io.kubernetes.container.ports":                    `[{"name":"http","containerPort":8080,"protocol":"TCP"}]`,
		}
		c := &runtimeapi.Container{
			Id: fakeID("container", i), PodSandboxId: sb.Id,
			Metadata:  &runtimeapi.ContainerMetadata{Name: cname},
			Image:     &runtimeapi.ImageSpec{Image: imageRef, UserSpecifiedImage: image},
			ImageRef:  imageRef,
			ImageId:   imageRef,
			State:     runtimeapi.ContainerState_CONTAINER_RUNNING,
			CreatedAt: created, Labels: labels, Annotations: annotations,
		}
		f.containers = append(f.containers, c)
		f.byID[c.Id] = c
		f.indexByID[c.Id] = i
		f.bySandbox[sb.Id] = append(f.bySandbox[sb.Id], c)
		f.statusByID[c.Id] = &runtimeapi.ContainerStatus{
			Id: c.Id, Metadata: c.Metadata, State: c.State, CreatedAt: created, StartedAt: created + 1e9,
			Image: c.Image, ImageRef: imageRef, ImageId: imageRef, Labels: labels, Annotations: annotations,
			Mounts: []*runtimeapi.Mount{
				{ContainerPath: "/var/run/secrets/kubernetes.io/serviceaccount", HostPath: "/var/lib/kubelet/pods/" + sb.Metadata.Uid + "/volumes/kubernetes.io~projected/kube-api-access", Readonly: true},
				{ContainerPath: "/dev/termination-log", HostPath: "/var/lib/kubelet/pods/" + sb.Metadata.Uid + "/containers/" + cname + "/0"},
			},
			LogPath: "/var/log/pods/" + sb.Metadata.Namespace + "_" + sb.Metadata.Name + "_" + sb.Metadata.Uid + "/" + cname + "/0.log",
		}
		attrs := &runtimeapi.ContainerAttributes{Id: c.Id, Metadata: c.Metadata, Labels: labels, Annotations: annotations}
		f.statsByID[c.Id] = &runtimeapi.ContainerStats{
			Attributes:    attrs,
			Cpu:           &runtimeapi.CpuUsage{Timestamp: created, UsageCoreNanoSeconds: &runtimeapi.UInt64Value{Value: uint64(i) * 1e9}},
			Memory:        &runtimeapi.MemoryUsage{Timestamp: created, WorkingSetBytes: &runtimeapi.UInt64Value{Value: 64 << 20}},
			WritableLayer: &runtimeapi.FilesystemUsage{Timestamp: created, UsedBytes: &runtimeapi.UInt64Value{Value: 4096}},
		}
	}
	return f
}

func (f *fakeRuntime) Version(context.Context, *runtimeapi.VersionRequest) (*runtimeapi.VersionResponse, error) {
	return &runtimeapi.VersionResponse{Version: "0.1.0", RuntimeName: "fake-runtime", RuntimeVersion: "v2.4.2", RuntimeApiVersion: "v1"}, nil
}

func (f *fakeRuntime) Status(context.Context, *runtimeapi.StatusRequest) (*runtimeapi.StatusResponse, error) {
	return &runtimeapi.StatusResponse{Status: &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true}, {Type: runtimeapi.NetworkReady, Status: true}}}}, nil
}

// ListContainers honours the filters the kubelet uses: by ID, by sandbox.
func (f *fakeRuntime) ListContainers(_ context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	flt := req.GetFilter()
	switch {
	case flt.GetId() != "":
		if c, ok := f.byID[flt.GetId()]; ok {
			return &runtimeapi.ListContainersResponse{Containers: []*runtimeapi.Container{c}}, nil
		}
		return &runtimeapi.ListContainersResponse{}, nil
	case flt.GetPodSandboxId() != "":
		return &runtimeapi.ListContainersResponse{Containers: f.bySandbox[flt.GetPodSandboxId()]}, nil
	}
	return &runtimeapi.ListContainersResponse{Containers: f.containers}, nil
}

func (f *fakeRuntime) ContainerStatus(_ context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	st, ok := f.statusByID[req.GetContainerId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %q not found", req.GetContainerId())
	}
	resp := &runtimeapi.ContainerStatusResponse{Status: st}
	if req.GetVerbose() {
		// containerd's verbose answer: the info JSON, built on every call.
		info, err := f.verboseInfo(f.byID[st.Id], st)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "container info: %v", err)
		}
		resp.Info = map[string]string{"info": info}
	}
	return resp, nil
}

// StartContainer succeeds for the node's containers (they stay running),
// and publishes the task start event, as containerd's shim does while the
// start is answered.
func (f *fakeRuntime) StartContainer(_ context.Context, req *runtimeapi.StartContainerRequest) (*runtimeapi.StartContainerResponse, error) {
	i, ok := f.indexByID[req.GetContainerId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %q not found", req.GetContainerId())
	}
	f.events.publishStart(req.GetContainerId(), fakePid(i))
	return &runtimeapi.StartContainerResponse{}, nil
}

// fakeEvents is containerd's event service: subscribers get the task start
// events (the bench's only events), whatever their filters.
type fakeEvents struct {
	eventsapi.UnimplementedEventsServer
	mu   sync.Mutex
	subs map[chan *types.Envelope]struct{}
}

func (e *fakeEvents) Subscribe(_ *eventsapi.SubscribeRequest, stream eventsapi.Events_SubscribeServer) error {
	ch := make(chan *types.Envelope, 1024)
	e.mu.Lock()
	e.subs[ch] = struct{}{}
	e.mu.Unlock()
	defer func() {
		e.mu.Lock()
		delete(e.subs, ch)
		e.mu.Unlock()
	}()
	for {
		select {
		case <-stream.Context().Done():
			return nil
		case env := <-ch:
			if err := stream.Send(env); err != nil {
				return err
			}
		}
	}
}

// publishStart sends a TaskStart event, as containerd's envelope holds it,
// to every subscriber that has room (containerd's exchange drops too).
func (e *fakeEvents) publishStart(id string, pid int) {
	v, err := proto.Marshal(&eventtypes.TaskStart{ContainerID: id, Pid: uint32(pid)})
	if err != nil {
		return
	}
	env := &types.Envelope{Timestamp: timestamppb.Now(), Namespace: "k8s.io", Topic: "/tasks/start",
		Event: &anypb.Any{TypeUrl: "containerd.events.TaskStart", Value: v}}
	e.mu.Lock()
	defer e.mu.Unlock()
	for ch := range e.subs {
		select {
		case ch <- env:
		default:
		}
	}
}

// ListPodSandbox honours the ID filter and the pod UID label selector.
func (f *fakeRuntime) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	flt := req.GetFilter()
	if id := flt.GetId(); id != "" {
		if sb, ok := f.sandboxByID[id]; ok {
			return &runtimeapi.ListPodSandboxResponse{Items: []*runtimeapi.PodSandbox{sb}}, nil
		}
		return &runtimeapi.ListPodSandboxResponse{}, nil
	}
	if uid := flt.GetLabelSelector()["io.kubernetes.pod.uid"]; uid != "" {
		out := &runtimeapi.ListPodSandboxResponse{}
		for _, sb := range f.sandboxes {
			if sb.Metadata.Uid == uid {
				out.Items = append(out.Items, sb)
			}
		}
		return out, nil
	}
	return &runtimeapi.ListPodSandboxResponse{Items: f.sandboxes}, nil
}

func (f *fakeRuntime) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	st, ok := f.sandboxState[req.GetPodSandboxId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "sandbox %q not found", req.GetPodSandboxId())
	}
	return &runtimeapi.PodSandboxStatusResponse{Status: st}, nil
}

func (f *fakeRuntime) ContainerStats(_ context.Context, req *runtimeapi.ContainerStatsRequest) (*runtimeapi.ContainerStatsResponse, error) {
	st, ok := f.statsByID[req.GetContainerId()]
	if !ok {
		return nil, status.Errorf(codes.NotFound, "container %q not found", req.GetContainerId())
	}
	return &runtimeapi.ContainerStatsResponse{Stats: st}, nil
}

// ListContainerStats honours the sandbox filter.
func (f *fakeRuntime) ListContainerStats(_ context.Context, req *runtimeapi.ListContainerStatsRequest) (*runtimeapi.ListContainerStatsResponse, error) {
	out := &runtimeapi.ListContainerStatsResponse{}
	list := f.containers
	if id := req.GetFilter().GetPodSandboxId(); id != "" {
		list = f.bySandbox[id]
	}
	for _, c := range list {
		out.Stats = append(out.Stats, f.statsByID[c.Id])
	}
	return out, nil
}

// CreateContainer answers with the ID of the node's container of that name
// in that sandbox (created again, as the kubelet's sequence before a start
// is), else with a new ID.
func (f *fakeRuntime) CreateContainer(_ context.Context, req *runtimeapi.CreateContainerRequest) (*runtimeapi.CreateContainerResponse, error) {
	for _, c := range f.bySandbox[req.GetPodSandboxId()] {
		if c.Metadata.Name == req.GetConfig().GetMetadata().GetName() {
			return &runtimeapi.CreateContainerResponse{ContainerId: c.Id}, nil
		}
	}
	return &runtimeapi.CreateContainerResponse{ContainerId: fakeID("new", len(req.GetConfig().GetMetadata().GetName()))}, nil
}

func (f *fakeRuntime) ImageFsInfo(context.Context, *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	usage := &runtimeapi.FilesystemUsage{
		Timestamp: time.Now().UnixNano(), FsId: &runtimeapi.FilesystemIdentifier{Mountpoint: "/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs"},
		UsedBytes: &runtimeapi.UInt64Value{Value: 12 << 30}, InodesUsed: &runtimeapi.UInt64Value{Value: 400000},
	}
	return &runtimeapi.ImageFsInfoResponse{ImageFilesystems: []*runtimeapi.FilesystemUsage{usage}, ContainerFilesystems: []*runtimeapi.FilesystemUsage{usage}}, nil
}

// runFakeRuntime is the fake-runtime mode: serve a fake node on a socket
// until SIGTERM.
func runFakeRuntime(args []string) error {
	fs := flag.NewFlagSet("fake-runtime", flag.ContinueOnError)
	listen := fs.String("listen", "", "unix socket path to serve on")
	n := fs.Int("containers", 5000, "containers on the fake node")
	if err := fs.Parse(args); err != nil {
		return err
	}
	rt := newFakeRuntime(*n)
	srv := grpc.NewServer(grpc.MaxRecvMsgSize(maxMessageSize), grpc.MaxSendMsgSize(maxMessageSize))
	runtimeapi.RegisterRuntimeServiceServer(srv, rt)
	runtimeapi.RegisterImageServiceServer(srv, rt)
	eventsapi.RegisterEventsServer(srv, rt.events)
	return serveUntilSignal(srv, *listen)
}

// serveUntilSignal serves srv on a unix socket until SIGTERM or SIGINT.
func serveUntilSignal(srv *grpc.Server, path string) error {
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() { <-sig; srv.Stop() }()
	return srv.Serve(l)
}
