package cri_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"

	"github.com/armorshim/armorshim/internal/rawgrpc"
	"github.com/armorshim/armorshim/shim"
)

// bigLimit is the message limit of the test clients and of the backend, far
// above armorshim's, so that only armorshim's limit can trip.
const bigLimit = 64 << 20

// sockDir returns a short directory for unix sockets (108-byte path limit).
func sockDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "as")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// call is one RPC as the backend saw it.
type call struct {
	Method      string
	MD          metadata.MD
	Deadline    time.Time
	HasDeadline bool
}

// unaryHook replaces (or wraps, by calling handler) a backend unary method.
type unaryHook func(ctx context.Context, req any, handler grpc.UnaryHandler) (any, error)

// streamHook replaces (or wraps) a backend streaming or unknown method; the
// unknown methods have no handler but the default Unimplemented.
type streamHook func(ss grpc.ServerStream, handler grpc.StreamHandler) error

// backend is the CRI runtime behind armorshim: the cri-client fake runtime's
// RuntimeService and ImageService served by a gRPC server of our own whose
// interceptors record every call (method, metadata, deadline, the decoded
// and raw CreateContainer requests) and run per-method hooks to inject
// errors, headers, trailers, slow or blocking handlers. Methods unknown to
// cri-api reach the hooks through UnknownServiceHandler.
type backend struct {
	t    *testing.T
	sock string
	fake *fake.RemoteRuntime

	mu        sync.Mutex
	srv       *grpc.Server
	calls     []call
	creates   []*runtimeapi.CreateContainerRequest
	createRaw [][]byte
	unary     map[string]unaryHook
	stream    map[string]streamHook

	raw sync.Map // *runtimeapi.CreateContainerRequest -> []byte, filled by the codec

	sandboxRaw [][]byte // raw RunPodSandbox requests, in order (under mu)

	// paths is the :path of every stream the backend's transport received,
	// routable or not, in order (under mu).
	paths []string
}

func newBackend(t *testing.T, sock string) *backend {
	t.Helper()
	f := fake.NewFakeRemoteRuntime()
	// What fake.RemoteRuntime.Start does besides serving.
	f.RuntimeService.FakeStatus = &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true},
		{Type: runtimeapi.NetworkReady, Status: true},
	}}
	b := &backend{t: t, sock: sock, fake: f, unary: map[string]unaryHook{}, stream: map[string]streamHook{}}
	t.Cleanup(b.stop)
	return b
}

// startBackend starts a backend on a new socket.
func startBackend(t *testing.T) *backend {
	t.Helper()
	b := newBackend(t, filepath.Join(sockDir(t), "backend.sock"))
	b.start()
	return b
}

// start serves on b.sock (again, after stop).
func (b *backend) start() {
	b.t.Helper()
	srv := grpc.NewServer(
		grpc.ForceServerCodecV2(recordingCodec{b}),
		grpc.MaxRecvMsgSize(bigLimit), grpc.MaxSendMsgSize(bigLimit),
		grpc.ChainUnaryInterceptor(b.unaryInterceptor),
		grpc.ChainStreamInterceptor(b.streamInterceptor),
		grpc.InTapHandle(b.tap),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			m, _ := grpc.MethodFromServerStream(ss)
			return status.Errorf(codes.Unimplemented, "backend: unknown method %s", m)
		}),
	)
	runtimeapi.RegisterRuntimeServiceServer(srv, b.fake)
	runtimeapi.RegisterImageServiceServer(srv, b.fake)
	os.Remove(b.sock)
	l, err := net.Listen("unix", b.sock)
	if err != nil {
		b.t.Fatalf("backend listen: %v", err)
	}
	b.mu.Lock()
	b.srv = srv
	b.mu.Unlock()
	go srv.Serve(l)
}

// stop ends the backend at once (connections closed, socket removed).
func (b *backend) stop() {
	b.mu.Lock()
	srv := b.srv
	b.srv = nil
	b.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

func (b *backend) onUnary(method string, h unaryHook) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.unary[method] = h
}

func (b *backend) onStream(method string, h streamHook) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.stream[method] = h
}

func (b *backend) record(ctx context.Context, method string) {
	md, _ := metadata.FromIncomingContext(ctx)
	if len(md.Get(shim.ProbeMetadataKey)) > 0 {
		return // armorshim's backend probe, not a relayed call
	}
	dl, ok := ctx.Deadline()
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, call{Method: method, MD: md.Copy(), Deadline: dl, HasDeadline: ok})
}

// tap records the path of each stream as the transport reads its headers,
// before the server routes it: what the backend saw, whether or not it
// would call a method for it.
func (b *backend) tap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if len(info.Header.Get(shim.ProbeMetadataKey)) > 0 {
		return ctx, nil // armorshim's backend probe
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.paths = append(b.paths, info.FullMethodName)
	return ctx, nil
}

// pathsSince returns the paths recorded after the first n.
func (b *backend) pathsSince(n int) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.paths[n:]...)
}

func (b *backend) pathCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.paths)
}

// callsSince returns the calls recorded after the first n.
func (b *backend) callsSince(n int) []call {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]call(nil), b.calls[n:]...)
}

func (b *backend) callCount() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.calls)
}

// createRequests returns the decoded and raw CreateContainer requests the
// backend received, in order.
func (b *backend) createRequests() ([]*runtimeapi.CreateContainerRequest, [][]byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*runtimeapi.CreateContainerRequest(nil), b.creates...), append([][]byte(nil), b.createRaw...)
}

func (b *backend) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	b.record(ctx, info.FullMethod)
	if ccr, ok := req.(*runtimeapi.CreateContainerRequest); ok {
		raw, _ := b.raw.LoadAndDelete(ccr)
		rawBytes, _ := raw.([]byte)
		b.mu.Lock()
		b.creates = append(b.creates, proto.Clone(ccr).(*runtimeapi.CreateContainerRequest))
		b.createRaw = append(b.createRaw, rawBytes)
		b.mu.Unlock()
	}
	// The fake dereferences request fields without checks: a panic must
	// become an error, the same one for direct and proxied calls.
	defer func() {
		if r := recover(); r != nil {
			resp, err = nil, status.Errorf(codes.Internal, "backend panic: %v", r)
		}
	}()
	b.mu.Lock()
	h := b.unary[info.FullMethod]
	b.mu.Unlock()
	if h != nil {
		return h(ctx, req, handler)
	}
	return handler(ctx, req)
}

func (b *backend) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	b.record(ss.Context(), info.FullMethod)
	defer func() {
		if r := recover(); r != nil {
			err = status.Errorf(codes.Internal, "backend panic: %v", r)
		}
	}()
	b.mu.Lock()
	h := b.stream[info.FullMethod]
	b.mu.Unlock()
	if h != nil {
		return h(ss, func(_ any, ss grpc.ServerStream) error { return handler(srv, ss) })
	}
	return handler(srv, ss)
}

// recordingCodec is armorshim's raw codec (so hooks can use *rawgrpc.Frame) that
// also keeps the raw bytes of every CreateContainerRequest it decodes.
type recordingCodec struct{ b *backend }

func (recordingCodec) Name() string { return rawgrpc.Codec{}.Name() }

func (recordingCodec) Marshal(v any) (mem.BufferSlice, error) { return rawgrpc.Codec{}.Marshal(v) }

func (c recordingCodec) Unmarshal(data mem.BufferSlice, v any) error {
	if ccr, ok := v.(*runtimeapi.CreateContainerRequest); ok {
		c.b.raw.Store(ccr, data.Materialize())
	}
	if _, ok := v.(*runtimeapi.RunPodSandboxRequest); ok {
		c.b.mu.Lock()
		c.b.sandboxRaw = append(c.b.sandboxRaw, data.Materialize())
		c.b.mu.Unlock()
	}
	return rawgrpc.Codec{}.Unmarshal(data, v)
}

// recvRaw receives one raw message on a server stream.
func recvRaw(ss grpc.ServerStream) ([]byte, error) {
	f := new(rawgrpc.Frame)
	if err := ss.RecvMsg(f); err != nil {
		return nil, err
	}
	b := append([]byte(nil), f.Bytes()...)
	f.Free()
	return b, nil
}

// fakeSysfs is a sysfs tree with AppArmor's module parameter and securityfs.
type fakeSysfs struct {
	t    *testing.T
	root string
	rev  int
}

func newFakeSysfs(t *testing.T, enabled string, profiles ...string) *fakeSysfs {
	t.Helper()
	f := &fakeSysfs{t: t, root: t.TempDir()}
	f.write("module/apparmor/parameters/enabled", enabled+"\n")
	f.setProfiles(profiles...)
	return f
}

func (f *fakeSysfs) write(rel, data string) {
	f.t.Helper()
	p := filepath.Join(f.root, rel)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		f.t.Fatal(err)
	}
}

// setProfiles rewrites the profiles file ("name (mode)" lines) and bumps
// the policy revision, as loading a profile does.
func (f *fakeSysfs) setProfiles(lines ...string) {
	f.t.Helper()
	data := ""
	for _, l := range lines {
		data += l + "\n"
	}
	f.write("kernel/security/apparmor/profiles", data)
	f.rev++
	f.write("kernel/security/apparmor/revision", strconv.Itoa(f.rev)+"\n")
}

// armorshim is one shim.Server serving on its own socket.
type armorshim struct {
	sock   string
	srv    *shim.Server
	cancel context.CancelFunc
	done   chan error
}

func startArmorshim(t *testing.T, backendSock string, sysfs *fakeSysfs, mutate func(*shim.Config)) *armorshim {
	t.Helper()
	return startArmorshimReloading(t, backendSock, sysfs, mutate, nil)
}

// startArmorshimReloading is startArmorshim with a SIGHUP reload function:
// reload receives the configuration armorshim started with.
func startArmorshimReloading(t *testing.T, backendSock string, sysfs *fakeSysfs, mutate func(*shim.Config), reload func(*shim.Config) (*shim.Config, error)) *armorshim {
	t.Helper()
	cfg := shim.DefaultConfig()
	cfg.Listen = "unix://" + filepath.Join(sockDir(t), "armorshim.sock")
	cfg.RuntimeEndpoint = "unix://" + backendSock
	cfg.Sysfs = sysfs.root
	cfg.Procfs = t.TempDir()
	cfg.ShutdownTimeout = shim.Duration(2 * time.Second)
	// Never touch the host's profile directory or NFD's features.d.
	cfg.Profiles.Directory = ""
	cfg.NodeFeatures.Directory = ""
	// Start attestation adds a ContainerStatus call; its own tests turn it on.
	cfg.Attestation.Mode = "off"
	cfg.Denials.KernelLog, cfg.Denials.AuditLog = "", ""
	if mutate != nil {
		mutate(cfg)
	}
	var reloadFn func() (*shim.Config, error)
	if reload != nil {
		reloadFn = func() (*shim.Config, error) { c := *cfg; return reload(&c) }
	}
	srv, err := shim.New(cfg, reloadFn)
	if err != nil {
		t.Fatalf("shim.New: %v", err)
	}
	l, err := shim.Listen(cfg.Listen, cfg.SocketGroup)
	if err != nil {
		t.Fatalf("shim.Listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &armorshim{sock: l.Addr().String(), srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { a.done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-a.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("armorshim did not stop")
		}
	})
	return a
}

// dial returns a client connection to a unix socket that sends typed
// messages as protobuf and *rawgrpc.Frame as raw bytes, with limits far above
// armorshim's.
func dial(t *testing.T, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.ForceCodecV2(rawgrpc.Codec{}),
			grpc.MaxCallRecvMsgSize(bigLimit),
			grpc.MaxCallSendMsgSize(bigLimit),
		))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// env is the whole chain: client -> armorshim -> backend.
type env struct {
	backend *backend
	sysfs   *fakeSysfs
	shim    *armorshim
	direct  *grpc.ClientConn // to the backend
	through *grpc.ClientConn // to armorshim
	runtime runtimeapi.RuntimeServiceClient
	image   runtimeapi.ImageServiceClient
}

// The AppArmor tutorial's names: the profile loaded on the node, and the one that is not.
const (
	denyWrite  = "k8s-apparmor-example-deny-write"
	allowWrite = "k8s-apparmor-example-allow-write"
)

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{backend: startBackend(t)}
	e.sysfs = newFakeSysfs(t, "Y", denyWrite+" (enforce)", "docker-default (enforce)", "k8s-nginx (complain)")
	e.shim = startArmorshim(t, e.backend.sock, e.sysfs, nil)
	e.direct = dial(t, e.backend.sock)
	e.through = dial(t, e.shim.sock)
	e.runtime = runtimeapi.NewRuntimeServiceClient(e.through)
	e.image = runtimeapi.NewImageServiceClient(e.through)
	return e
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// rawUnary calls method with raw request bytes and returns the raw response
// bytes, or the status.
func rawUnary(ctx context.Context, conn *grpc.ClientConn, method string, req []byte, opts ...grpc.CallOption) ([]byte, *status.Status) {
	out := new(rawgrpc.Frame)
	err := conn.Invoke(ctx, method, rawgrpc.FrameOf(req), out, opts...)
	if err != nil {
		return nil, status.Convert(err)
	}
	b := append([]byte{}, out.Bytes()...)
	out.Free()
	return b, status.New(codes.OK, "")
}

// rawServerStream calls a server-streaming method with raw request bytes and
// returns every raw response and the final status.
func rawServerStream(ctx context.Context, conn *grpc.ClientConn, method string, req []byte) ([][]byte, *status.Status) {
	cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method)
	if err != nil {
		return nil, status.Convert(err)
	}
	if err := cs.SendMsg(rawgrpc.FrameOf(req)); err != nil && !errors.Is(err, io.EOF) {
		return nil, status.Convert(err)
	}
	if err := cs.CloseSend(); err != nil {
		return nil, status.Convert(err)
	}
	var out [][]byte
	for {
		f := new(rawgrpc.Frame)
		err := cs.RecvMsg(f)
		if errors.Is(err, io.EOF) {
			return out, status.New(codes.OK, "")
		}
		if err != nil {
			return out, status.Convert(err)
		}
		out = append(out, append([]byte{}, f.Bytes()...))
		f.Free()
	}
}

func sameStatus(a, b *status.Status) bool {
	return proto.Equal(a.Proto(), b.Proto())
}

func statusString(s *status.Status) string {
	return fmt.Sprintf("%v %q details=%v", s.Code(), s.Message(), s.Proto().GetDetails())
}
