// Package h2relay relays gRPC calls from HTTP/2 client connections to
// backend connections stream by stream, without a gRPC server or client in
// between: frames are read, their header blocks re-encoded, their data
// copied under each side's flow control. A hook routes every call to a
// backend and may hold a unary call whole, to refuse it, rewrite its request
// or vet its answer before the caller sees it.
//
// Each client connection gets its own connection to each backend it uses,
// dialed when its first call for that backend arrives and again after a
// backend goes away; stream IDs are kept as the client chose them.
//
// The package is the HTTP/2 endpoint on both sides, so it owns what a
// server's and a client's transport would: the connection preface and
// settings, stream states and IDs (RFC 9113 §5.1), concurrency
// (SETTINGS_MAX_CONCURRENT_STREAMS), flow control both ways, PING and
// GOAWAY, keepalive, and the limits that keep what a peer can make it hold
// bounded: windows, held request bytes, ping strikes, early resets. It
// leaves frame parsing and HPACK to golang.org/x/net/http2 (Framer, hpack).
// docs/h2relay.md lists the rules it enforces, with their RFC sections, and
// its limits.
package h2relay

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// Backend is a place calls are relayed to.
type Backend struct {
	// Name appears in errors ("cannot reach the <Name>").
	Name string
	// Dial opens a new connection to the backend.
	Dial func(ctx context.Context) (net.Conn, error)

	// refusal, if not nil, answers every call routed here (see Refuse).
	refusal *status.Status

	mu       sync.Mutex
	failedAt time.Time
	delay    time.Duration
	lastErr  error
}

// Refuse returns a Backend that answers each call routed to it with st as
// soon as the call's headers are read, before its request: nothing is
// dialed and nothing reaches a backend. The call counts as ended with st's
// code (Hooks.Done).
func Refuse(st *status.Status) *Backend { return &Backend{Name: "refusal", refusal: st} }

// Backoff between dials of a backend that is down: calls fail at once with
// Unavailable, and the backend is tried again after at most maxDialDelay.
const (
	minDialDelay = 50 * time.Millisecond
	maxDialDelay = time.Second
	dialTimeout  = 5 * time.Second
)

func (b *Backend) dial() (net.Conn, error) {
	b.mu.Lock()
	if b.lastErr != nil && time.Since(b.failedAt) < b.delay {
		err := b.lastErr
		b.mu.Unlock()
		return nil, err
	}
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	c, err := b.Dial(ctx)
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil {
		b.delay = min(max(2*b.delay, minDialDelay), maxDialDelay)
		b.failedAt, b.lastErr = time.Now(), err
		return nil, err
	}
	b.delay, b.lastErr = 0, nil
	return c, nil
}

// Inspector sees the whole request message of a held unary call (the
// message itself, decompressed, without gRPC's length prefix) and says what
// to do with the call. It runs on a goroutine of its own; ctx ends when the
// caller gives up (cancellation, deadline) or the relay stops.
type Inspector func(ctx context.Context, req []byte) Verdict

// Verdict is an Inspector's answer.
type Verdict struct {
	// Status, if not nil, answers the call: nothing reaches the backend.
	Status *status.Status
	// Request, if not nil, is forwarded instead of the caller's message.
	Request []byte
	// Response, if not nil, is given the backend's answer before the caller
	// sees it: the response message (nil if there is none or it could not
	// be read) and the status. It returns nil to pass the answer on, or the
	// status to answer with instead. Its ctx lets it Call the backend on
	// the connection that answered.
	Response func(ctx context.Context, resp []byte, st *status.Status) *status.Status
}

// Hooks are the relay's caller.
type Hooks interface {
	// Route returns the backend for a new call and, to hold the call
	// whole, an Inspector (nil: the call streams through untouched). A
	// backend made by Refuse turns the call away at once.
	Route(method string) (*Backend, Inspector)
	// Done reports a call that ended, with its status code.
	Done(method string, code codes.Code, elapsed time.Duration)
}

// Config configures a Relay.
type Config struct {
	Hooks Hooks
	// MaxMessageSize bounds each message, either way, as a gRPC server's
	// and client's limits do; 0 means no limit.
	MaxMessageSize int
	// StreamWindow and ConnWindow are the flow-control windows the relay
	// gives each side: how much it may buffer per stream and per
	// connection. 0 means 1 MiB and 4 MiB.
	StreamWindow, ConnWindow int32
	// MaxConcurrentStreams is the SETTINGS_MAX_CONCURRENT_STREAMS the relay
	// advertises to each client connection and enforces (RFC 9113 §5.1.2).
	// 0 means DefaultMaxConcurrentStreams.
	MaxConcurrentStreams uint32
	// MaxHeldBytes bounds the bytes of the requests the relay holds whole
	// for an Inspector, across all its connections: a held call whose
	// request would take the total past it is answered ResourceExhausted,
	// and nothing of it reaches the backend. 0 means DefaultMaxHeldBytes.
	MaxHeldBytes int64
}

// DefaultMaxHeldBytes is the default bound of the bytes held in requests:
// three of the kubelet's largest messages (16 MiB each and gRPC's 5-byte
// prefix: a fourth does not fit), or thousands of real CreateContainer
// requests (a few KiB each).
const DefaultMaxHeldBytes = 64 << 20

// DefaultMaxConcurrentStreams bounds the calls a client connection may have
// open at once. gRPC-Go's server sets no limit by default; its clients, and
// the kubelet's, keep to the one advertised, and 1000 is about ten times
// the calls a busy kubelet has open (each image pull is one).
const DefaultMaxConcurrentStreams = 1000

// Relay accepts client connections and relays their calls.
type Relay struct {
	cfg Config

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	// draining is set (under mu) once the relay stops accepting; sessions
	// read it without mu.
	draining atomic.Bool
	idle     *sync.Cond // signalled when a session ends or gets idle

	// held is the bytes of the requests held whole, on every connection.
	held atomic.Int64

	timeouts timeouts

	// hooks run the Inspectors and vetting functions on long-lived
	// goroutines, whose stacks stay grown; when all are busy, on a new one.
	hooks chan func()
	done  chan struct{}
}

// timeouts are the relay's connection timeouts (see handshakeTimeout and
// keepaliveTime); tests shorten them.
type timeouts struct{ handshake, keepalive, keepaliveTimeout time.Duration }

// HeldBytes returns the bytes of the requests the relay holds whole now, on
// every connection (see Config.MaxHeldBytes).
func (r *Relay) HeldBytes() int64 { return r.held.Load() }

// reserveHeld takes n bytes of the budget of held requests, if it has them.
func (r *Relay) reserveHeld(n int64) bool {
	for {
		cur := r.held.Load()
		if cur+n > r.cfg.MaxHeldBytes {
			return false
		}
		if r.held.CompareAndSwap(cur, cur+n) {
			return true
		}
	}
}

// hookWorkers is the number of long-lived goroutines running hooks.
const hookWorkers = 4

func (r *Relay) runHook(f func()) {
	select {
	case r.hooks <- f:
	default:
		go f()
	}
}

func (r *Relay) hookWorker() {
	for {
		select {
		case f := <-r.hooks:
			f()
		case <-r.done:
			return
		}
	}
}

// New returns a Relay.
func New(cfg Config) *Relay {
	if cfg.StreamWindow <= 0 {
		cfg.StreamWindow = 1 << 20
	}
	if cfg.ConnWindow <= 0 {
		cfg.ConnWindow = 4 << 20
	}
	if cfg.MaxHeldBytes <= 0 {
		cfg.MaxHeldBytes = DefaultMaxHeldBytes
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	r := &Relay{cfg: cfg, listeners: map[net.Listener]struct{}{}, sessions: map[*session]struct{}{},
		hooks: make(chan func()), done: make(chan struct{}),
		timeouts: timeouts{handshakeTimeout, keepaliveTime, keepaliveTimeout}}
	r.idle = sync.NewCond(&r.mu)
	for range hookWorkers {
		go r.hookWorker()
	}
	return r
}

// ErrRelayClosed is returned by Serve after Shutdown or Close.
var ErrRelayClosed = errors.New("h2relay: relay closed")

// Serve accepts connections on l until l fails or the relay is shut down.
func (r *Relay) Serve(l net.Listener) error {
	r.mu.Lock()
	if r.draining.Load() {
		r.mu.Unlock()
		l.Close()
		return ErrRelayClosed
	}
	r.listeners[l] = struct{}{}
	r.mu.Unlock()
	var delay time.Duration
	for {
		c, err := l.Accept()
		if err != nil {
			if r.draining.Load() {
				return ErrRelayClosed
			}
			if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ENOBUFS) ||
				errors.Is(err, syscall.ENOMEM) || errors.Is(err, syscall.ECONNABORTED) {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				klog.ErrorS(err, "Accept failed; retrying", "delay", delay)
				time.Sleep(delay)
				continue
			}
			return err
		}
		delay = 0
		s := newSession(r, c)
		r.mu.Lock()
		if r.draining.Load() {
			r.mu.Unlock()
			c.Close()
			continue
		}
		r.sessions[s] = struct{}{}
		r.mu.Unlock()
		go s.serve()
	}
}

func (r *Relay) stopListening() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.draining.Swap(true) {
		close(r.done)
	}
	for l := range r.listeners {
		l.Close()
	}
}

// Shutdown stops accepting connections, tells every client to open no new
// calls (GOAWAY), and waits for the calls in flight to end or ctx to end,
// then closes every connection.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.stopListening()
	// Past ctx, Close: it also frees a session stuck writing to its peer.
	stop := context.AfterFunc(ctx, func() {
		r.Close()
		r.mu.Lock()
		r.idle.Broadcast()
		r.mu.Unlock()
	})
	defer stop()
	for _, s := range r.snapshot() {
		s.goAway()
	}
	r.mu.Lock()
	for ctx.Err() == nil && r.busy() {
		r.idle.Wait()
	}
	r.mu.Unlock()
	if ctx.Err() == nil {
		for _, s := range r.snapshot() {
			s.finish() // the last answers may still be buffered
		}
	}
	r.Close()
	return ctx.Err()
}

// snapshot returns the sessions, to act on them without r.mu.
func (r *Relay) snapshot() []*session {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*session, 0, len(r.sessions))
	for s := range r.sessions {
		out = append(out, s)
	}
	return out
}

// busy reports whether a session has calls in flight (r.mu held).
func (r *Relay) busy() bool {
	for s := range r.sessions {
		if s.active.Load() > 0 {
			return true
		}
	}
	return false
}

// Close closes the listeners and every connection at once.
func (r *Relay) Close() {
	r.stopListening()
	for _, s := range r.snapshot() {
		s.closeAll()
	}
}

func (r *Relay) ended(s *session) {
	r.mu.Lock()
	delete(r.sessions, s)
	r.idle.Broadcast()
	r.mu.Unlock()
}

// streamIdle is called when a session's last call ends.
func (r *Relay) streamIdle() {
	r.mu.Lock()
	r.idle.Broadcast()
	r.mu.Unlock()
}
