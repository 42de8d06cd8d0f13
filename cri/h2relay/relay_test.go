package h2relay_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/armorshim/armorshim/cri/h2relay"
)

// raw is a message carried as bytes, undecoded.
type raw struct{ b []byte }

type rawCodec struct{}

func (rawCodec) Name() string { return "proto" }
func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(v.(*raw).b)}, nil
}
func (rawCodec) Unmarshal(d mem.BufferSlice, v any) error {
	v.(*raw).b = d.Materialize()
	return nil
}

var _ encoding.CodecV2 = rawCodec{}

func sockDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "h2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// server is a gRPC backend whose every method is handled by handle.
type server struct {
	t      testing.TB
	sock   string
	mu     sync.Mutex
	srv    *grpc.Server
	handle func(method string, ss grpc.ServerStream) error
}

func startServer(t testing.TB, handle func(method string, ss grpc.ServerStream) error) *server {
	s := &server{t: t, sock: filepath.Join(sockDir(t), "backend.sock"), handle: handle}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *server) start() {
	srv := grpc.NewServer(grpc.ForceServerCodecV2(rawCodec{}), grpc.MaxRecvMsgSize(64<<20), grpc.MaxSendMsgSize(64<<20),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			m, _ := grpc.MethodFromServerStream(ss)
			return s.handle(m, ss)
		}))
	os.Remove(s.sock)
	l, err := net.Listen("unix", s.sock)
	if err != nil {
		s.t.Fatal(err)
	}
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	go srv.Serve(l)
}

func (s *server) stop() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

func (s *server) backend() *h2relay.Backend {
	return &h2relay.Backend{Name: "runtime", Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", s.sock)
	}}
}

// echo answers each message with itself until the client half-closes.
var echo = echoAfter(0)

// echoAfter is echo from a backend that takes delay to read each message.
func echoAfter(delay time.Duration) func(string, grpc.ServerStream) error {
	return func(_ string, ss grpc.ServerStream) error {
		for {
			m := new(raw)
			if err := ss.RecvMsg(m); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return err
			}
			time.Sleep(delay)
			if err := ss.SendMsg(m); err != nil {
				return err
			}
		}
	}
}

// hooks routes everything to one backend, holds the methods in inspect and
// refuses those in refuse.
type hooks struct {
	b       *h2relay.Backend
	inspect map[string]h2relay.Inspector
	refuse  map[string]*status.Status
	mu      sync.Mutex
	done    []string // "method code"
}

func (h *hooks) Route(method string) (*h2relay.Backend, h2relay.Inspector) {
	if st := h.refuse[method]; st != nil {
		return h2relay.Refuse(st), nil
	}
	return h.b, h.inspect[method]
}

func (h *hooks) Done(method string, code codes.Code, _ time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.done = append(h.done, method+" "+code.String())
}

func (h *hooks) ended() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.done...)
}

// relay starts a Relay with cfg in front of b and returns a client
// connection to it.
func relay(t testing.TB, cfg h2relay.Config) (*h2relay.Relay, *grpc.ClientConn, string) {
	t.Helper()
	r := h2relay.New(cfg)
	sock := filepath.Join(sockDir(t), "relay.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go r.Serve(l)
	t.Cleanup(r.Close)
	return r, dial(t, sock), sock
}

func dial(t testing.TB, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{}), grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// pattern is n bytes that differ with seed and position.
func pattern(seed, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(seed*31 + i*7 + i>>8)
	}
	return b
}

// Every message gets through whole and in order when the relay's windows
// are far smaller than the messages, with many streams at once in both
// directions and a backend that reads slowly: the relay queues under flow
// control instead of losing, reordering or buffering without bound.
func TestFlowControlSmallWindows(t *testing.T) {
	srv := startServer(t, echoAfter(time.Millisecond)) // a slow reader
	h := &hooks{b: srv.backend()}
	_, conn, _ := relay(t, h2relay.Config{Hooks: h, StreamWindow: 16 << 10, ConnWindow: 48 << 10})
	ctx := ctxTimeout(t, 60*time.Second)
	const streams = 24
	var wg sync.WaitGroup
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}, "/test.Echo/Stream")
			if err != nil {
				errs <- err
				return
			}
			sizes := []int{1, 70 << 10, 5, 300 << 10, 16 << 10, 0, 1 << 20}
			go func() {
				for j, n := range sizes {
					if err := cs.SendMsg(&raw{pattern(i*100+j, n)}); err != nil {
						return
					}
				}
				cs.CloseSend()
			}()
			for j, n := range sizes {
				m := new(raw)
				if err := cs.RecvMsg(m); err != nil {
					errs <- fmt.Errorf("stream %d message %d: %v", i, j, err)
					return
				}
				if !bytes.Equal(m.b, pattern(i*100+j, n)) {
					errs <- fmt.Errorf("stream %d message %d: %d bytes, not what was sent (%d)", i, j, len(m.b), n)
					return
				}
			}
			if err := cs.RecvMsg(new(raw)); !errors.Is(err, io.EOF) {
				errs <- fmt.Errorf("stream %d end: %v", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	waitFor(t, func() bool { return len(h.ended()) == streams })
	for _, d := range h.ended() {
		if d != "/test.Echo/Stream OK" {
			t.Errorf("Done: %s", d)
		}
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not met in 5s")
}

// A held call: the Inspector sees the whole request with the caller's
// deadline, may refuse it (the backend never hears of it), rewrite it, or
// vet the backend's answer and replace it.
func TestInspector(t *testing.T) {
	var mu sync.Mutex
	var seen []string // what the backend received
	var backendDeadline time.Time
	srv := startServer(t, func(method string, ss grpc.ServerStream) error {
		mu.Lock()
		backendDeadline, _ = ss.Context().Deadline()
		mu.Unlock()
		return recordEcho(method, ss, &mu, &seen)
	})
	backendSaw := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := seen
		seen = nil
		return out
	}
	var deadline time.Time
	var vetted []string
	refused := status.New(codes.FailedPrecondition, "Blocked: profile \"k8s-apparmor-example-deny-write\" is not loaded — ünïcode 100%")
	refused, _ = refused.WithDetails(&errdetails.ErrorInfo{Reason: "Blocked", Domain: "armorshim.io", Metadata: map[string]string{"profile": "x"}})
	h := &hooks{inspect: map[string]h2relay.Inspector{
		"/t.S/Refuse": func(ctx context.Context, req []byte) h2relay.Verdict {
			deadline, _ = ctx.Deadline()
			return h2relay.Verdict{Status: refused}
		},
		"/t.S/Rewrite": func(_ context.Context, req []byte) h2relay.Verdict {
			time.Sleep(300 * time.Millisecond) // a slow decision: the backend must not get the time it took
			return h2relay.Verdict{Request: append([]byte("new-"), req...)}
		},
		"/t.S/Vet": func(_ context.Context, req []byte) h2relay.Verdict {
			return h2relay.Verdict{Response: func(_ context.Context, resp []byte, st *status.Status) *status.Status {
				vetted = append(vetted, fmt.Sprintf("%s %s %q", req, st.Code(), resp))
				if string(req) == "replace" {
					return status.New(codes.FailedPrecondition, "Blocked: AppArmor confinement mismatch")
				}
				return nil
			}}
		},
	}}
	h.b = srv.backend()
	_, conn, _ := relay(t, h2relay.Config{Hooks: h, MaxMessageSize: 1 << 20})
	ctx := ctxTimeout(t, 20*time.Second)

	// Refused: the caller gets the status with its details; the backend
	// sees nothing; the deadline reached the Inspector.
	callCtx, cancel := context.WithTimeout(ctx, 7*time.Second)
	defer cancel()
	want, _ := callCtx.Deadline()
	err := conn.Invoke(callCtx, "/t.S/Refuse", &raw{[]byte("req")}, new(raw))
	st := status.Convert(err)
	if st.Code() != codes.FailedPrecondition || st.Message() != refused.Message() || len(st.Details()) != 1 {
		t.Errorf("refused: %v (details %v)", err, st.Details())
	} else if info := st.Details()[0].(*errdetails.ErrorInfo); info.Reason != "Blocked" || info.Metadata["profile"] != "x" {
		t.Errorf("refused: details %v", info)
	}
	if d := deadline.Sub(want); d < -time.Second || d > time.Second {
		t.Errorf("inspector deadline %v, want about %v", deadline, want)
	}
	if got := backendSaw(); len(got) != 0 {
		t.Errorf("backend saw a refused call: %v", got)
	}

	// Rewritten; the backend gets what is left of the caller's deadline.
	out := new(raw)
	var header, trailer metadata.MD
	start := time.Now()
	if err := conn.Invoke(callCtx, "/t.S/Rewrite", &raw{[]byte("req")}, out, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil || string(out.b) != "re:new-req" {
		t.Errorf("rewritten: %v %q", err, out.b)
	}
	elapsed := time.Since(start)
	// The backend's deadline may trail the caller's by the transit time
	// (the call took that and the 300 ms decision), never by the decision.
	mu.Lock()
	if late := backendDeadline.Sub(want); late < -time.Millisecond || late > elapsed-300*time.Millisecond+time.Millisecond {
		t.Errorf("backend deadline %v after the caller's; the call took %v", late, elapsed)
	}
	mu.Unlock()
	if header.Get("h")[0] != "1" || trailer.Get("t")[0] != "2" {
		t.Errorf("rewritten: header %v trailer %v", header, trailer)
	}
	if got := backendSaw(); len(got) != 1 || got[0] != "/t.S/Rewrite:new-req" {
		t.Errorf("backend saw %v", got)
	}

	// Vetted and passed, with the answer's header and trailer; vetted and
	// replaced; vetted after a backend error, which passes.
	header, trailer = nil, nil
	if err := conn.Invoke(ctx, "/t.S/Vet", &raw{[]byte("keep")}, out, grpc.Header(&header), grpc.Trailer(&trailer)); err != nil || string(out.b) != "re:keep" {
		t.Errorf("vetted: %v %q", err, out.b)
	}
	if header.Get("h")[0] != "1" || trailer.Get("t")[0] != "2" {
		t.Errorf("vetted: header %v trailer %v", header, trailer)
	}
	err = conn.Invoke(ctx, "/t.S/Vet", &raw{[]byte("replace")}, out)
	if st := status.Convert(err); st.Code() != codes.FailedPrecondition || st.Message() != "Blocked: AppArmor confinement mismatch" {
		t.Errorf("replaced: %v", err)
	}
	err = conn.Invoke(metadata.AppendToOutgoingContext(ctx, "x-fail", "gone"), "/t.S/Vet", &raw{[]byte("err")}, out)
	if st := status.Convert(err); st.Code() != codes.NotFound || st.Message() != "gone" {
		t.Errorf("backend error: %v", err)
	}
	wantVetted := []string{`keep OK "re:keep"`, `replace OK "re:replace"`, `err NotFound ""`}
	if fmt.Sprint(vetted) != fmt.Sprint(wantVetted) {
		t.Errorf("vetted %q, want %q", vetted, wantVetted)
	}
	backendSaw()

	// Over the message limit: refused before the Inspector, either way.
	err = conn.Invoke(ctx, "/t.S/Rewrite", &raw{make([]byte, 1<<20+1)}, out)
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("oversized held request: %v", err)
	}
	err = conn.Invoke(ctx, "/t.S/Other", &raw{make([]byte, 1<<20+1)}, out)
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("oversized request: %v", err)
	}
	if got := backendSaw(); len(got) != 0 {
		t.Errorf("backend saw oversized calls: %v", got)
	}
	waitFor(t, func() bool { return len(h.ended()) == 7 })
	want7 := "[/t.S/Refuse FailedPrecondition /t.S/Rewrite OK /t.S/Vet OK /t.S/Vet FailedPrecondition /t.S/Vet NotFound /t.S/Rewrite ResourceExhausted /t.S/Other ResourceExhausted]"
	if got := fmt.Sprint(h.ended()); got != want7 {
		t.Errorf("Done: %s\nwant %s", got, want7)
	}
}

// recordEcho records each call as method:request and answers "re:"+request
// with a header and a trailer, or with NotFound when asked (x-fail).
func recordEcho(method string, ss grpc.ServerStream, mu *sync.Mutex, seen *[]string) error {
	m := new(raw)
	if err := ss.RecvMsg(m); err != nil {
		return err
	}
	mu.Lock()
	*seen = append(*seen, method+":"+string(m.b))
	mu.Unlock()
	md, _ := metadata.FromIncomingContext(ss.Context())
	ss.SetHeader(metadata.Pairs("h", "1"))
	ss.SetTrailer(metadata.Pairs("t", "2"))
	if v := md.Get("x-fail"); len(v) > 0 {
		return status.Error(codes.NotFound, v[0])
	}
	return ss.SendMsg(&raw{append([]byte("re:"), m.b...)})
}

// A caller's cancellation reaches the backend; the backend's errors,
// and its loss, reach the caller; the relay dials again once the backend is
// back.
func TestCancellationAndBackendLoss(t *testing.T) {
	cancelled := make(chan struct{}, 1)
	started := make(chan struct{}, 1)
	srv := startServer(t, func(method string, ss grpc.ServerStream) error {
		switch method {
		case "/t.S/Block":
			if err := ss.RecvMsg(new(raw)); err != nil {
				return err
			}
			ss.SendMsg(&raw{[]byte("first")})
			started <- struct{}{}
			<-ss.Context().Done()
			cancelled <- struct{}{}
			return ss.Context().Err()
		}
		return echo(method, ss)
	})
	h := &hooks{b: srv.backend()}
	_, conn, _ := relay(t, h2relay.Config{Hooks: h})
	ctx := ctxTimeout(t, 20*time.Second)

	// block starts a server stream and waits for its first message.
	block := func(ctx context.Context) grpc.ClientStream {
		t.Helper()
		cs := serverStream(t, ctx, conn, "/t.S/Block", "x")
		if err := cs.RecvMsg(new(raw)); err != nil {
			t.Fatal(err)
		}
		<-started
		return cs
	}

	// Cancellation of a server stream after its first message.
	callCtx, cancel := context.WithCancel(ctx)
	block(callCtx)
	cancel()
	select {
	case <-cancelled:
	case <-time.After(5 * time.Second):
		t.Fatal("the backend never saw the cancellation")
	}
	waitFor(t, func() bool { return len(h.ended()) == 1 })
	if got := h.ended()[0]; got != "/t.S/Block Canceled" {
		t.Errorf("Done: %s", got)
	}

	// The backend goes away in the middle of a call.
	cs := block(ctx)
	srv.stop()
	<-cancelled
	err := cs.RecvMsg(new(raw))
	if st := status.Convert(err); st.Code() != codes.Unavailable {
		t.Errorf("backend lost mid-call: %v", err)
	}

	// While it is down, calls fail fast with Unavailable.
	start := time.Now()
	err = conn.Invoke(ctx, "/t.S/Echo", &raw{[]byte("x")}, new(raw))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !bytes.Contains([]byte(st.Message()), []byte("cannot reach the runtime")) {
		t.Errorf("backend down: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("failing took %v", d)
	}

	// Back: served again within about a second.
	srv.start()
	deadline := time.Now().Add(3 * time.Second)
	for {
		out := new(raw)
		err := conn.Invoke(ctx, "/t.S/Echo", &raw{[]byte("again")}, out)
		if err == nil && string(out.b) == "again" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("backend back, calls still fail: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// awaitEntered waits until a call reached the backend's handler, failing if
// it ended first.
func awaitEntered(t *testing.T, entered <-chan struct{}, errc <-chan error) {
	t.Helper()
	select {
	case <-entered:
	case err := <-errc:
		t.Fatalf("the call ended before reaching the backend: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("the call did not reach the backend in 20 s")
	}
}

// serverStream opens a server stream on conn and sends its one request.
func serverStream(t *testing.T, ctx context.Context, conn *grpc.ClientConn, method, req string) grpc.ClientStream {
	t.Helper()
	cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, method)
	if err != nil {
		t.Fatal(err)
	}
	if err := cs.SendMsg(&raw{[]byte(req)}); err != nil {
		t.Fatal(err)
	}
	if err := cs.CloseSend(); err != nil {
		t.Fatal(err)
	}
	return cs
}

// A backend that stops gracefully finishes the calls it has; Shutdown of
// the relay lets its calls in flight finish, then closes.
func TestGracefulStops(t *testing.T) {
	release := make(chan struct{})
	entered := make(chan struct{}, 1) // a Slow call reached the backend
	srv := startServer(t, func(method string, ss grpc.ServerStream) error {
		if err := ss.RecvMsg(new(raw)); err != nil {
			return err
		}
		if method == "/t.S/Slow" {
			entered <- struct{}{}
			<-release
		}
		return ss.SendMsg(&raw{[]byte("done")})
	})
	h := &hooks{b: srv.backend()}
	r, conn, sock := relay(t, h2relay.Config{Hooks: h})
	ctx := ctxTimeout(t, 20*time.Second)
	if err := conn.Invoke(ctx, "/t.S/Fast", &raw{[]byte("x")}, new(raw)); err != nil {
		t.Fatal(err)
	}

	// The backend's GracefulStop during a call.
	errc := make(chan error, 1)
	go func() { errc <- conn.Invoke(ctx, "/t.S/Slow", &raw{[]byte("x")}, new(raw)) }()
	awaitEntered(t, entered, errc)
	srv.mu.Lock()
	s := srv.srv
	srv.mu.Unlock()
	stopped := make(chan struct{})
	go func() { s.GracefulStop(); close(stopped) }()
	time.Sleep(100 * time.Millisecond)
	close(release)
	if err := <-errc; err != nil {
		t.Errorf("call in flight during the backend's graceful stop: %v", err)
	}
	<-stopped
	srv.start()
	release = make(chan struct{})

	// The relay's Shutdown during a call.
	waitFor(t, func() bool { return conn.Invoke(ctx, "/t.S/Fast", &raw{[]byte("x")}, new(raw)) == nil })
	go func() { errc <- conn.Invoke(ctx, "/t.S/Slow", &raw{[]byte("x")}, new(raw)) }()
	awaitEntered(t, entered, errc)
	shut := make(chan error, 1)
	go func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- r.Shutdown(sctx)
	}()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned with a call in flight: %v", err)
	default:
	}
	close(release)
	if err := <-errc; err != nil {
		t.Errorf("call in flight during Shutdown: %v", err)
	}
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		t.Error("the relay still accepts connections after Shutdown")
	}

	// A Shutdown whose deadline passes ends the calls left.
	srv2 := startServer(t, func(string, grpc.ServerStream) error { entered <- struct{}{}; select {} })
	r2, conn2, _ := relay(t, h2relay.Config{Hooks: &hooks{b: srv2.backend()}})
	go func() { errc <- conn2.Invoke(ctx, "/t.S/Forever", &raw{[]byte("x")}, new(raw)) }()
	awaitEntered(t, entered, errc)
	sctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := r2.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown past its deadline: %v", err)
	}
	if err := <-errc; status.Code(err) != codes.Unavailable {
		t.Errorf("call cut by Shutdown: %v", err)
	}
}

// Server streams whose reader is slow hold their own stream windows only:
// another call on the same connection still goes through, as it does
// direct to a gRPC-Go server.
func TestSlowStreamsDoNotBlockOthers(t *testing.T) {
	var sent atomic.Int64 // messages of the streams the backend sent
	srv := startServer(t, func(method string, ss grpc.ServerStream) error {
		if err := ss.RecvMsg(new(raw)); err != nil {
			return err
		}
		if method == "/t.S/Stream" {
			for i := 0; i < 128; i++ { // 4 MiB
				if err := ss.SendMsg(&raw{make([]byte, 32<<10)}); err != nil {
					return err
				}
				sent.Add(1)
			}
			return nil
		}
		return ss.SendMsg(&raw{[]byte("pong")})
	})
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{b: srv.backend()}})
	for name, target := range map[string]string{"direct": srv.sock, "relay": sock} {
		conn, err := grpc.NewClient("unix://"+target, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})),
			grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(16<<20))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		sent.Store(0)
		for i := 0; i < 5; i++ { // never read
			serverStream(t, ctx, conn, "/t.S/Stream", "go")
		}
		// The streams hold every window they can once the backend stops
		// sending: at least the client's 64 KiB each.
		for last, still := int64(-1), 0; still < 6; time.Sleep(50 * time.Millisecond) {
			if n := sent.Load(); n != last || n < 5*2 {
				last, still = n, 0
				if ctx.Err() != nil {
					t.Fatalf("%s: the streams' answers never stalled (%d messages sent)", name, n)
				}
				continue
			}
			still++
		}
		uctx, ucancel := context.WithTimeout(ctx, 3*time.Second)
		if err := conn.Invoke(uctx, "/t.S/Unary", &raw{[]byte("ping")}, new(raw)); err != nil {
			t.Errorf("%s: a call beside slow streams: %v", name, err)
		}
		ucancel()
		cancel()
		conn.Close()
	}
}

// Shutdown keeps to its deadline even when a client stopped reading and the
// relay is stuck writing to it: the client gave all the window there is and
// reads nothing of a large answer.
func TestShutdownWithStuckClient(t *testing.T) {
	srv := startServer(t, func(_ string, ss grpc.ServerStream) error {
		for {
			if err := ss.SendMsg(&raw{make([]byte, 1<<20)}); err != nil {
				return err
			}
		}
	})
	blocked := make(chan struct{}) // closed once a write to the client blocks
	var once sync.Once
	r := h2relay.New(h2relay.Config{Hooks: &hooks{b: srv.backend()}})
	t.Cleanup(r.Close)
	sock := filepath.Join(sockDir(t), "relay.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go r.Serve(&stallListener{l, func() { once.Do(func() { close(blocked) }) }})
	c := newH2Client(t, sock, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1<<31 - 1})
	c.fr.WriteWindowUpdate(0, 1<<31-1-65535)
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, EndStream: true, BlockFragment: c.block(request("/t.S/Big")...)})
	select {
	case <-blocked:
	case <-time.After(30 * time.Second):
		t.Fatal("no write to the client blocked in 30 s")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.Shutdown(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Shutdown: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Shutdown with a 300 ms deadline still blocked after 3 s")
	}
}

// stallListener wraps each connection it accepts in a stallConn.
type stallListener struct {
	net.Listener
	stalled func()
}

func (l *stallListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &stallConn{c, l.stalled}, nil
}

// Shutdown keeps to its deadline when the relay is stuck writing to a
// backend that stopped reading (a frozen runtime).
func TestShutdownWithStuckBackend(t *testing.T) {
	sock := filepath.Join(sockDir(t), "stuck.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			io.ReadFull(c, make([]byte, len(http2.ClientPreface)))
			fr := http2.NewFramer(c, c)
			fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 16 << 20})
			fr.WriteWindowUpdate(0, 16<<20) // then reads nothing more
		}
	}()
	blocked := make(chan struct{}) // closed once a write to the backend blocks
	var once sync.Once
	r, conn, _ := relay(t, h2relay.Config{Hooks: &hooks{b: &h2relay.Backend{Name: "runtime", Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", sock)
		if err != nil {
			return nil, err
		}
		return &stallConn{c, func() { once.Do(func() { close(blocked) }) }}, nil
	}}}})
	errc := make(chan error, 1)
	go func() { errc <- conn.Invoke(context.Background(), "/t.S/Big", &raw{make([]byte, 8<<20)}, new(raw)) }()
	select {
	case <-blocked:
	case err := <-errc:
		t.Fatalf("the call ended before the relay got stuck: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no write to the backend blocked in 30 s")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := r.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Shutdown with a 300 ms deadline took %v", d)
	}
}

// A held call is refused at its second message instead of buffered on; a
// relay with stream windows below 16 KiB still returns stream credit.
// stallConn calls stalled when one of its writes has been blocked for 200 ms.
type stallConn struct {
	net.Conn
	stalled func()
}

func (c *stallConn) Write(p []byte) (int, error) {
	t := time.AfterFunc(200*time.Millisecond, c.stalled)
	defer t.Stop()
	return c.Conn.Write(p)
}

func TestHeldCallsAndSmallWindows(t *testing.T) {
	srv := startServer(t, echo)
	h := &hooks{b: srv.backend(), inspect: map[string]h2relay.Inspector{
		"/t.S/Held": func(context.Context, []byte) h2relay.Verdict { return h2relay.Verdict{} },
	}}
	_, conn, _ := relay(t, h2relay.Config{Hooks: h, StreamWindow: 8 << 10, MaxMessageSize: 1 << 20})
	ctx := ctxTimeout(t, 10*time.Second)

	cs, err := conn.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, "/t.S/Held")
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		cs.SendMsg(&raw{make([]byte, 1000)}) // never half-closes
	}
	err = cs.RecvMsg(new(raw))
	if st := status.Convert(err); st.Code() != codes.Internal || !strings.Contains(st.Message(), "exactly one message") {
		t.Errorf("a held call with three messages: %v", err)
	}

	out := new(raw)
	if err := conn.Invoke(ctx, "/t.S/Echo", &raw{pattern(3, 200<<10)}, out); err != nil || !bytes.Equal(out.b, pattern(3, 200<<10)) {
		t.Errorf("200 KiB through 8 KiB stream windows: %v (%d bytes back)", err, len(out.b))
	}
}

// A backend restarting gracefully (GOAWAY, a new server on the socket)
// during a large answer: new calls go to the new server while the answer
// still flows from the old one, which needs the relay's window updates.
func TestBackendRestartDuringLargeAnswer(t *testing.T) {
	srv := startServer(t, func(method string, ss grpc.ServerStream) error {
		if err := ss.RecvMsg(new(raw)); err != nil {
			return err
		}
		if method == "/t.S/Big" {
			for i := 0; i < 64; i++ { // 4 MiB, 16 times the relay's stream window
				if err := ss.SendMsg(&raw{pattern(i, 64<<10)}); err != nil {
					return err
				}
			}
			return nil
		}
		return ss.SendMsg(&raw{[]byte("pong")})
	})
	_, conn, _ := relay(t, h2relay.Config{Hooks: &hooks{b: srv.backend()}, StreamWindow: 256 << 10, ConnWindow: 1 << 20})
	ctx := ctxTimeout(t, 20*time.Second)
	cs := serverStream(t, ctx, conn, "/t.S/Big", "go")
	if err := cs.RecvMsg(new(raw)); err != nil {
		t.Fatal(err)
	}
	// The old server drains; a new one takes the socket and the next call.
	srv.mu.Lock()
	old := srv.srv
	srv.mu.Unlock()
	drained := make(chan struct{})
	go func() { old.GracefulStop(); close(drained) }()
	// Closing its listener unlinks the socket: wait for that, or it would
	// unlink the new server's.
	waitFor(t, func() bool { _, err := os.Stat(srv.sock); return errors.Is(err, os.ErrNotExist) })
	srv.start()
	if err := conn.Invoke(ctx, "/t.S/Ping", &raw{[]byte("x")}, new(raw)); err != nil {
		t.Fatalf("a call during the restart: %v", err)
	}
	for i := 1; i < 64; i++ {
		m := new(raw)
		if err := cs.RecvMsg(m); err != nil {
			t.Fatalf("the large answer stopped at message %d: %v", i, err)
		}
		if !bytes.Equal(m.b, pattern(i, 64<<10)) {
			t.Fatalf("message %d differs", i)
		}
	}
	if err := cs.RecvMsg(new(raw)); !errors.Is(err, io.EOF) {
		t.Errorf("end of the large answer: %v", err)
	}
	<-drained
}

type panicHooks struct{ hooks }

func (*panicHooks) Route(string) (*h2relay.Backend, h2relay.Inspector) { panic("boom in Route") }

// A panic on a session's reading goroutine (here in Route, which runs with
// the session locked) crashes the process, as one in a gRPC-Go server
// would, rather than leaving the connection wedged and the caller waiting.
func TestPanicCrashes(t *testing.T) {
	if os.Getenv("H2RELAY_PANIC_CHILD") == "1" {
		_, conn, _ := relay(t, h2relay.Config{Hooks: &panicHooks{}})
		ctx := ctxTimeout(t, 10*time.Second)
		err := conn.Invoke(ctx, "/t.S/Any", &raw{[]byte("x")}, new(raw))
		t.Fatalf("the relay did not crash; the call ended with %v", err)
	}
	ctx := ctxTimeout(t, 60*time.Second)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestPanicCrashes$", "-test.count=1")
	cmd.Env = append(os.Environ(), "H2RELAY_PANIC_CHILD=1")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "panic: boom in Route") {
		t.Errorf("child: %v (want a crash, exit status 2, with the panic)\n%.2000s", err, out)
	}
}
