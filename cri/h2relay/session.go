package h2relay

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// A client connection must send the preface and its first SETTINGS frame
// within handshakeTimeout (gRPC-Go's ConnectionTimeout is 120 s, for any
// network; the kubelet sends both at once over a local socket), or it is
// closed.
const handshakeTimeout = 10 * time.Second

// Keepalive, as gRPC-Go's server does by default (keepalive.ServerParameters
// Time and Timeout): a client connection silent for keepaliveTime is
// pinged, and closed if it still says nothing within keepaliveTimeout, so a
// peer that vanished without closing does not hold its buffers for ever.
const (
	keepaliveTime    = 2 * time.Hour
	keepaliveTimeout = 20 * time.Second
)

// A client's pings are held to gRPC-Go's keepalive enforcement policy, as
// its server does by default (keepalive.EnforcementPolicy, MinTime 5 min,
// PermitWithoutStream false): a ping within pingMinTime of the previous
// one (pingIdleMinTime without calls) is a strike unless the relay sent
// the client headers or data since; past maxPingStrikes strikes the
// connection ends with GOAWAY ENHANCE_YOUR_CALM "too_many_pings", which
// gRPC clients understand (they double their keepalive interval). gRPC-Go
// clients send their BDP pings only after data, so they are never struck.
const (
	pingMinTime     = 5 * time.Minute
	pingIdleMinTime = 2 * time.Hour
	maxPingStrikes  = 2
)

// Rapid reset (CVE-2023-44487): a client that opens calls and resets them
// before they are answered makes the backend start work it never finishes,
// at no cost to itself. Each such reset takes a token from a bucket of
// maxEarlyResets, refilled at earlyResetRate a second; a client that
// empties it is sent GOAWAY ENHANCE_YOUR_CALM "too_many_resets" and cut off,
// so at most maxEarlyResets plus earlyResetRate a second of its calls reach
// the backend. The kubelet resets a call only when its deadline passes
// (a probe's timeout, say): far fewer.
const (
	maxEarlyResets = 1000
	earlyResetRate = 100
)

// session is one client connection and its backend connections. One mutex
// guards all of it; frames are relayed on the goroutine that read them.
type session struct {
	r   *Relay
	cli *side

	ctx    context.Context // ends with the session
	cancel context.CancelFunc

	mu        sync.Mutex
	streams   map[uint32]*stream
	legs      map[*Backend]*leg // the one each new call of a backend uses
	live      map[*leg]struct{} // every backend connection not yet lost
	lastID    uint32            // the client's highest stream ID
	started   bool              // our SETTINGS went out
	acked     bool              // the client acknowledged them
	goingAway bool
	closed    bool

	active atomic.Int32  // calls in flight
	ended  closedStreams // how its last streams closed

	pingStrikes int
	lastPing    time.Time

	heard       bool        // a frame was read since the last keepalive check
	ka          *time.Timer // runs keepalive
	kaPinged    bool        // keepalive sent its ping
	resetTokens float64     // of maxEarlyResets
	resetAt     time.Time

	// connsMu guards conns, the backend connections, for Relay.Close,
	// which must not wait for mu (held by a write to a stuck peer).
	connsMu     sync.Mutex
	conns       map[net.Conn]struct{}
	connsClosed bool // closeAll ran: a connection dialed now is closed at once
}

// closeAll closes the client connection and every backend connection:
// their readers and any write blocked on them end.
func (s *session) closeAll() {
	s.cli.conn.Close()
	s.connsMu.Lock()
	defer s.connsMu.Unlock()
	s.connsClosed = true
	for c := range s.conns {
		c.Close()
	}
}

func newSession(r *Relay, c net.Conn) *session {
	s := &session{
		r:       r,
		cli:     newSide(c, r.cfg.StreamWindow, r.cfg.ConnWindow),
		streams: map[uint32]*stream{},
		legs:    map[*Backend]*leg{},
		live:    map[*leg]struct{}{},
		conns:   map[net.Conn]struct{}{},
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	return s
}

func (s *session) serve() {
	defer s.r.ended(s)
	defer func() {
		if p := recover(); p != nil {
			// s.mu may be held: teardown would block for ever and the
			// connection stay wedged. Crash, as gRPC-Go would.
			panic(p)
		}
		s.teardown()
	}()
	c := s.cli.conn
	c.SetReadDeadline(time.Now().Add(s.r.timeouts.handshake))
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(s.cli.br, preface); err != nil || string(preface) != http2.ClientPreface {
		klog.V(2).InfoS("Closing a connection without the HTTP/2 preface", "err", err)
		return
	}
	s.mu.Lock()
	if s.goingAway { // shut down before the connection started
		s.mu.Unlock()
		return
	}
	s.started = true
	s.cli.hello(http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: s.r.cfg.MaxConcurrentStreams},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize})
	s.cli.flush()
	s.mu.Unlock()
	for first := true; ; first = false {
		f, err := s.cli.fr.ReadFrame()
		if first && (err == nil || errors.As(err, new(http2.StreamError))) {
			// RFC 9113 §3.4: the preface ends with a SETTINGS frame.
			if sf, ok := f.(*http2.SettingsFrame); err != nil || !ok || sf.IsAck() {
				klog.V(2).InfoS("Closing a client connection: no SETTINGS after the preface")
				s.mu.Lock()
				s.cli.fail(0, http2.ErrCodeProtocol, "the preface must end with SETTINGS")
				s.mu.Unlock()
				return
			}
			c.SetReadDeadline(time.Time{})
			s.mu.Lock()
			s.ka = time.AfterFunc(s.r.timeouts.keepalive, s.keepalive)
			s.mu.Unlock()
		}
		s.mu.Lock()
		s.heard = true
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				s.clientStreamError(se)
				s.flush()
				s.mu.Unlock()
				continue
			}
			if code, ok := connectionError(err); ok {
				klog.V(2).InfoS("Closing a client connection: protocol error", "err", err)
				s.cli.fr.WriteGoAway(s.lastID, code, nil)
				s.cli.dirty = true
				s.flush()
			}
			s.mu.Unlock()
			return
		}
		s.clientFrame(f)
		if s.cli.failed { // not even what is already buffered
			s.flush()
			s.mu.Unlock()
			return
		}
		if s.cli.br.Buffered() == 0 {
			s.flush()
		}
		s.mu.Unlock()
	}
}

// flush writes out every connection's buffered frames, including those of
// a backend connection that new calls no longer use (after its GOAWAY)
// but whose calls go on.
func (s *session) flush() {
	s.cli.flush()
	for l := range s.live {
		l.flush()
	}
}

func (s *session) clientFrame(f http2.Frame) {
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		s.clientHeaders(f)
	case *http2.DataFrame:
		s.clientData(f)
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			if !windowUpdate(&s.cli.sendWin, f.Increment) {
				s.cli.fail(s.lastID, http2.ErrCodeFlowControl, "window overflow")
				return
			}
			for st := range s.cli.blocked {
				delete(s.cli.blocked, st)
				s.pumpDown(st)
			}
		} else if s.idle(f.StreamID) {
			s.idleStream()
		} else if st := s.streams[f.StreamID]; st != nil {
			if !windowUpdate(&st.down.win, f.Increment) {
				s.close(st, codes.Internal, ptr(http2.ErrCodeFlowControl))
				return
			}
			s.pumpDown(st)
		}
	case *http2.RSTStreamFrame:
		if s.idle(f.StreamID) {
			s.idleStream()
		} else if st := s.streams[f.StreamID]; st != nil {
			early := !st.sentHeader
			st.up.closedIn = true
			st.resetByCli = true
			s.close(st, codes.Canceled, nil)
			if early && !s.earlyReset() {
				klog.V(2).InfoS("Closing a client connection: too many calls reset before their answer")
				s.cli.fail(s.lastID, http2.ErrCodeEnhanceYourCalm, "too_many_resets")
			}
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			s.acked = true
			return
		}
		if d, ok := s.cli.settings(f, s.lastID); ok && d != 0 {
			for _, st := range s.streams {
				st.down.win += d
				s.pumpDown(st)
			}
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			s.cli.fr.WritePing(true, f.Data)
			s.cli.dirty = true
			if !s.pingAllowed() {
				klog.V(2).InfoS("Closing a client connection: too many pings")
				s.cli.fail(s.lastID, http2.ErrCodeEnhanceYourCalm, "too_many_pings")
			}
		}
	case *http2.GoAwayFrame:
		// The client opens no more streams; the open ones go on.
	}
}

// keepalive pings a client connection silent for keepaliveTime and closes
// it if it does not answer within keepaliveTimeout.
func (s *session) keepalive() {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
	case s.heard:
		s.heard, s.kaPinged = false, false
		s.ka.Reset(s.r.timeouts.keepalive)
	case !s.kaPinged:
		s.kaPinged = true
		s.cli.fr.WritePing(false, [8]byte{'k', 'e', 'e', 'p', 'a', 'l', 'i', 'v'})
		s.cli.dirty = true
		s.cli.flush()
		s.ka.Reset(s.r.timeouts.keepaliveTimeout)
	default:
		klog.V(2).InfoS("Closing a client connection: no answer to a keepalive ping")
		s.cli.conn.Close()
	}
}

// pingAllowed applies gRPC-Go's keepalive enforcement to a client's ping
// (see pingMinTime).
func (s *session) pingAllowed() bool {
	now := time.Now()
	defer func() { s.lastPing = now }()
	if s.cli.sent {
		s.cli.sent = false
		s.pingStrikes = 0
		return true
	}
	least := pingMinTime
	if len(s.streams) == 0 {
		least = pingIdleMinTime
	}
	if !s.lastPing.IsZero() && now.Sub(s.lastPing) < least {
		s.pingStrikes++
	}
	return s.pingStrikes <= maxPingStrikes
}

// earlyReset takes a token for a call the client reset before its answer
// (see maxEarlyResets); false when none is left.
func (s *session) earlyReset() bool {
	now := time.Now()
	if s.resetAt.IsZero() {
		s.resetTokens = maxEarlyResets
	} else {
		s.resetTokens = min(maxEarlyResets, s.resetTokens+now.Sub(s.resetAt).Seconds()*earlyResetRate)
	}
	s.resetAt = now
	s.resetTokens--
	return s.resetTokens >= 0
}

func (s *session) clientStreamError(se http2.StreamError) {
	if st := s.streams[se.StreamID]; st != nil {
		st.up.closedIn = true
		s.close(st, codes.Internal, &se.Code)
		return
	}
	if se.StreamID > s.lastID {
		s.lastID = se.StreamID
	}
	s.cli.reset(se.StreamID, se.Code)
	s.ended.add(se.StreamID, closedByRelay)
}

// idle reports whether a stream is idle: one the client has not opened
// (the relay opens none).
func (s *session) idle(id uint32) bool { return id > s.lastID || id%2 == 0 }

// idleStream fails the connection for a frame other than HEADERS on a
// stream the client never opened (RFC 9113 §5.1, "idle").
func (s *session) idleStream() {
	s.cli.fail(s.lastID, http2.ErrCodeProtocol, "frame on an idle stream")
}

// closedStream answers a DATA or HEADERS frame on a stream that is no
// longer open, as RFC 9113 §5.1 says for its way of closing; it reports
// whether the frame is ignored (false: the connection is failed).
func (s *session) closedStream(id uint32, headers bool) bool {
	switch s.ended.lookup(id) {
	case closedByClient:
		// "An endpoint that receives any frame other than PRIORITY after
		// receiving a RST_STREAM MUST treat that as a stream error of
		// type STREAM_CLOSED."
		s.cli.reset(id, http2.ErrCodeStreamClosed)
		s.ended.add(id, closedByRelay)
	case closedEnded:
		// "... after receiving a frame with the END_STREAM flag set MUST
		// treat that as a connection error of type STREAM_CLOSED."
		s.cli.fail(s.lastID, http2.ErrCodeStreamClosed, "frame on a closed stream")
		return false
	case closedUnknown:
		if headers {
			// §5.1.1: a new stream's identifier must be greater than
			// every one the client opened: a connection error
			// PROTOCOL_ERROR. (A stream closed long ago is taken for
			// one too.)
			s.cli.fail(s.lastID, http2.ErrCodeProtocol, "stream ID not greater than the last one")
			return false
		}
		// DATA on a stream closed long ago: ignored, as after our reset.
	}
	// closedByRelay: "An endpoint MUST ignore frames that it receives on
	// closed streams after it has sent a RST_STREAM frame."
	return true
}

func (s *session) clientHeaders(f *http2.MetaHeadersFrame) {
	id := f.StreamID
	if st := s.streams[id]; st != nil {
		// Trailers from the client: gRPC sends none; they end the request.
		if st.up.closedIn {
			s.clientStreamError(http2.StreamError{StreamID: id, Code: http2.ErrCodeStreamClosed})
			return
		}
		if !f.StreamEnded() {
			s.clientStreamError(http2.StreamError{StreamID: id, Code: http2.ErrCodeProtocol})
			return
		}
		s.endRequest(st)
		return
	}
	if id%2 == 0 {
		s.cli.fail(s.lastID, http2.ErrCodeProtocol, "even stream ID from a client")
		return
	}
	if id <= s.lastID {
		s.closedStream(id, true)
		return
	}
	s.lastID = id
	if s.goingAway {
		s.ended.add(id, closedByRelay)
		return // sent after our GOAWAY: not processed, the client retries it
	}
	if len(s.streams) >= int(s.r.cfg.MaxConcurrentStreams) {
		// RFC 9113 §5.1.2: a stream error. Until the client has our
		// SETTINGS it may not know the limit: REFUSED_STREAM, which gRPC
		// retries; after, PROTOCOL_ERROR, as x/net/http2's server does.
		code := http2.ErrCodeRefusedStream
		if s.acked {
			code = http2.ErrCodeProtocol
		}
		s.cli.reset(id, code)
		s.ended.add(id, closedByRelay)
		return
	}
	method := f.PseudoValue("path")
	st := &stream{id: id, method: method, start: time.Now(), code: codes.Unknown}
	st.down.win = s.cli.initWin
	st.up.size = s.cli.firstWin
	st.up.closedIn = f.StreamEnded()
	s.streams[id] = st
	s.active.Add(1)
	if f.Truncated {
		s.answer(st, status.New(codes.ResourceExhausted, "armorshim: header list too large"))
		return
	}
	st.backend, st.inspect = s.r.cfg.Hooks.Route(method)
	if b := st.backend; b != nil && b.refusal != nil {
		s.answer(st, b.refusal) // the request that may follow is discarded
		return
	}
	if st.inspect != nil {
		st.fields = append([]hpack.HeaderField(nil), f.Fields...)
		st.encoding = headerValue(f.Fields, "grpc-encoding")
		if st.up.closedIn {
			s.inspect(st)
		}
		return
	}
	s.open(st, f.Fields, st.up.closedIn)
}

// open opens st on its backend connection, dialing it if need be, and sends
// the request headers; if the backend cannot be reached it answers st.
func (s *session) open(st *stream, fields []hpack.HeaderField, end bool) bool {
	l := s.legs[st.backend]
	if l == nil || !l.usable() {
		var err error
		if l, err = s.dial(st.backend); err != nil {
			s.answer(st, status.Newf(codes.Unavailable, "armorshim: cannot reach the %s: %v", st.backend.Name, err))
			return false
		}
	}
	st.leg = l
	st.legID = l.nextID
	l.nextID += 2
	l.streams[st.legID] = st
	st.up.win = l.initWin
	st.down.size = l.firstWin
	st.legOpen = true
	l.writeHeaders(st.legID, fields, end)
	return true
}

func (s *session) clientData(f *http2.DataFrame) {
	n := int64(f.Length) // with padding: all of it counts against the windows
	if !s.cli.received(n, s.lastID) {
		return
	}
	data := f.Data()
	st := s.streams[f.StreamID]
	if st == nil {
		s.cli.credit(n)
		if s.idle(f.StreamID) {
			s.idleStream()
			return
		}
		s.closedStream(f.StreamID, false)
		return
	}
	if st.up.closedIn {
		// Half-closed (remote): RFC 9113 §5.1 asks for a stream error
		// STREAM_CLOSED.
		s.cli.credit(n)
		s.clientStreamError(http2.StreamError{StreamID: f.StreamID, Code: http2.ErrCodeStreamClosed})
		return
	}
	if !st.up.receive(n) {
		s.cli.credit(n)
		s.close(st, codes.ResourceExhausted, ptr(http2.ErrCodeFlowControl))
		return
	}
	if pad := n - int64(len(data)); pad > 0 {
		s.cli.credit(pad)
		s.creditStream(s.cli, st, &st.up, pad)
	}
	end := f.StreamEnded()
	if end {
		st.up.closedIn = true
	}
	if sst := st.up.framing.check(data, s.r.cfg.MaxMessageSize, "received"); sst != nil {
		s.cli.credit(int64(len(data)))
		s.answer(st, sst)
		return
	}
	if st.inspect != nil {
		// Held: bounded by the relay's budget of held bytes instead.
		s.cli.credit(int64(len(data)))
		if !s.hold(st, data) {
			return
		}
		if !oneMessage(st.body) {
			s.answer(st, errNotOneMessage)
			return
		}
		s.creditStream(s.cli, st, &st.up, int64(len(data)))
		if end {
			s.inspect(st)
		}
		return
	}
	if !st.legOpen || st.legEnded {
		s.cli.credit(int64(len(data)))
		return // the backend already answered
	}
	s.forward(st, &st.up, data, end, s.pumpUp)
}

// hold appends data to a held call's request within the relay's budget of
// held bytes; it reports false if the call was answered instead. Once the
// message's length is known, the whole message is reserved, so a call is
// refused before it is buffered, and its storage never outgrows it.
func (s *session) hold(st *stream, data []byte) bool {
	n := len(st.body) + len(data)
	need := int64(n)
	if n >= msgHeaderLen {
		var hdr [msgHeaderLen]byte
		copy(hdr[copy(hdr[:], st.body):], data)
		need = max(need, msgHeaderLen+int64(binary.BigEndian.Uint32(hdr[1:])))
	}
	if need > st.heldBytes {
		if !s.r.reserveHeld(need - st.heldBytes) {
			s.answer(st, s.heldRefusal())
			return false
		}
		st.heldBytes = need
	}
	if cap(st.body) < n {
		body := make([]byte, len(st.body), min(max(2*cap(st.body), n, 4<<10), int(st.heldBytes)))
		copy(body, st.body)
		st.body = body
	}
	st.body = append(st.body, data...)
	return true
}

// heldRefusal answers a held call over the relay's budget of held bytes.
func (s *session) heldRefusal() *status.Status {
	return status.Newf(codes.ResourceExhausted,
		"armorshim: too many requests held at once (%d bytes, at most %d): retry later", s.r.held.Load(), s.r.cfg.MaxHeldBytes)
}

// releaseHeld gives a held request's bytes back to the relay's budget.
func (s *session) releaseHeld(st *stream) {
	s.r.held.Add(-st.heldBytes)
	st.heldBytes = 0
	st.body = nil
}

// endRequest ends the client's side of st.
func (s *session) endRequest(st *stream) {
	st.up.closedIn = true
	if st.inspect != nil {
		s.inspect(st)
		return
	}
	if st.legOpen && !st.legEnded {
		st.up.end = true
		s.pumpUp(st)
	}
}

// forward queues data on p and writes what the windows allow. data is only
// borrowed.
func (s *session) forward(st *stream, p *pipe, data []byte, end bool, pump func(*stream)) {
	if end {
		p.end = true
	}
	if len(p.queue) > 0 {
		p.enqueue(data)
		pump(st)
		return
	}
	p.queue = data
	pump(st)
	if rest := p.queue; len(rest) > 0 {
		p.queue = nil
		p.enqueue(rest)
	}
}

// pumpUp writes st's request bytes to the backend as far as its windows
// allow.
func (s *session) pumpUp(st *stream) {
	if s.streams[st.id] != st || !st.legOpen || st.legEnded {
		return
	}
	l := st.leg
	if s.pump(st, &st.up, l.side, s.cli, st.legID) {
		st.up.end = false
	}
	if st.heldBytes > 0 && len(st.up.queue) == 0 { // a held request, all forwarded
		st.up.queue = nil
		s.releaseHeld(st)
	}
}

// pumpDown writes st's response to the client as far as its windows allow,
// then its trailers.
func (s *session) pumpDown(st *stream) {
	if s.streams[st.id] != st {
		return
	}
	var in *side
	if st.leg != nil {
		in = st.leg.side
	}
	if !s.pump(st, &st.down, s.cli, in, st.id) {
		return
	}
	if st.down.trailers != nil {
		s.cli.writeHeaders(st.id, st.down.trailers, true)
		st.down.trailers = nil
	}
	s.close(st, st.code, nil)
}

// pump writes p's queue to out within the stream and connection windows,
// crediting in for what it wrote; it reports whether the queue emptied with
// the end of the stream due (and written, unless trailers follow).
func (s *session) pump(st *stream, p *pipe, out, in *side, id uint32) bool {
	for len(p.queue) > 0 {
		n := min(int64(len(p.queue)), p.win, out.sendWin, int64(out.maxFrame))
		if n <= 0 {
			if out.sendWin <= 0 {
				out.blocked[st] = struct{}{}
			}
			return false
		}
		last := n == int64(len(p.queue)) && p.end && p.trailers == nil
		out.writeData(id, last, p.queue[:n])
		p.queue = p.queue[n:]
		p.win -= n
		out.sendWin -= n
		if !p.credited && in != nil {
			in.credit(n)
			s.creditStream(in, st, p, n)
		}
		if last {
			return true
		}
	}
	if !p.end {
		return false
	}
	if p.trailers == nil {
		out.writeData(id, true, nil)
	}
	return true
}

// creditStream returns n bytes of stream credit to the side that sends on
// p, while it still does: bytes forwarded (or held, or padding). The
// stream's window grows by as much, up to the side's streamWin: a stream
// whose reader keeps up gets the whole window, one whose reader stalls
// keeps the little it had, and the relay buffers no more for it.
func (s *session) creditStream(in *side, st *stream, p *pipe, n int64) {
	if p.closedIn {
		return
	}
	p.owed += n
	p.grow += max(0, min(n, in.streamWin-p.size-p.grow))
	if p.owed+p.grow >= p.size/4 {
		id := st.id
		if in != s.cli {
			id = st.legID
		}
		in.fr.WriteWindowUpdate(id, uint32(p.owed+p.grow))
		in.dirty = true
		p.recvd -= p.owed
		p.size += p.grow
		p.owed, p.grow = 0, 0
	}
}

// inspect hands a held call's whole request to its Inspector.
func (s *session) inspect(st *stream) {
	msg, sst := unframe(st.body, st.encoding, s.r.cfg.MaxMessageSize)
	if sst == nil && len(st.body) > 0 && st.body[0] != 0 {
		// Decompressed, the message is held too: a few KiB of gzip may
		// stand for the whole MaxMessageSize.
		if s.r.reserveHeld(int64(len(msg))) {
			st.heldBytes += int64(len(msg))
		} else {
			sst = s.heldRefusal()
		}
	}
	if sst != nil {
		s.answer(st, sst)
		return
	}
	ctx := s.ctx
	var cancel context.CancelFunc
	if d, ok := timeoutOf(headerValue(st.fields, "grpc-timeout")); ok {
		ctx, cancel = context.WithDeadline(ctx, st.start.Add(d)) // from the call's start
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	st.ctx, st.cancel = ctx, cancel
	st.hooking = true
	s.r.runHook(func() {
		v := st.inspect(ctx, msg)
		s.mu.Lock()
		defer s.mu.Unlock()
		defer s.flush()
		st.hooking = false
		if s.streams[st.id] != st {
			s.releaseHeld(st) // reset meanwhile: close left it to us
			return
		}
		if v.Status != nil {
			s.answer(st, v.Status)
			return
		}
		body := st.body
		if v.Request != nil {
			body = frame(v.Request)
		}
		st.body = nil
		st.vet = v.Response
		if dl, ok := ctx.Deadline(); ok {
			// The backend gets what is left of the caller's deadline.
			left := time.Until(dl)
			if left <= 0 {
				s.answer(st, status.New(codes.DeadlineExceeded, "context deadline exceeded"))
				return
			}
			setHeader(st.fields, "grpc-timeout", encodeTimeout(left))
		}
		if !s.open(st, st.fields, false) {
			return
		}
		st.fields = nil
		st.up.credited = true
		st.up.queue = body
		st.up.end = true
		s.pumpUp(st)
	})
}

// answer ends st with a status of the relay's own, telling the backend to
// stop if it had the call.
func (s *session) answer(st *stream, sst *status.Status) {
	if s.streams[st.id] != st {
		return
	}
	if st.sentHeader {
		st.down.framing = framing{}
		s.dropDown(st)
		s.cli.writeHeaders(st.id, statusFields(sst, false), true)
	} else {
		s.cli.writeHeaders(st.id, statusFields(sst, true), true)
	}
	s.close(st, sst.Code(), nil)
}

// dropDown discards the response bytes still queued for the client,
// returning their connection credit to the backend.
func (s *session) dropDown(st *stream) {
	if !st.down.credited && st.leg != nil {
		st.leg.credit(int64(len(st.down.queue)))
	}
	st.down.queue, st.down.trailers, st.down.end = nil, nil, false
	delete(s.cli.blocked, st)
}

// close ends st: the client's side has its answer (or is reset with rst),
// the backend's side is cancelled if still open, and the bytes never
// forwarded are dropped.
func (s *session) close(st *stream, code codes.Code, rst *http2.ErrCode) {
	if s.streams[st.id] != st {
		return
	}
	delete(s.streams, st.id)
	switch {
	case rst != nil:
		s.cli.reset(st.id, *rst)
		s.ended.add(st.id, closedByRelay)
	case !st.up.closedIn:
		s.cli.reset(st.id, http2.ErrCodeNo) // answered: stop sending
		s.ended.add(st.id, closedByRelay)
	case st.resetByCli:
		s.ended.add(st.id, closedByClient)
	default:
		s.ended.add(st.id, closedEnded)
	}
	s.dropDown(st)
	if !st.up.credited {
		s.cli.credit(int64(len(st.up.queue)))
	}
	st.up.release()
	st.down.release()
	st.fields = nil
	if !st.hooking { // else msg, which may be body, is still read
		s.releaseHeld(st)
	}
	if l := st.leg; l != nil {
		delete(l.blocked, st)
		if st.legOpen && !st.legEnded {
			l.reset(st.legID, http2.ErrCodeCancel)
		}
		delete(l.streams, st.legID)
		if l.idle() && !l.usable() {
			l.conn.Close()
		}
	}
	if st.cancel != nil {
		st.cancel()
	}
	s.r.cfg.Hooks.Done(st.method, code, time.Since(st.start))
	if s.active.Add(-1) == 0 {
		if s.goingAway {
			s.cli.flush()
			s.cli.conn.Close()
		}
		if s.r.draining.Load() {
			go s.r.streamIdle()
		}
	}
}

// finish writes out what is buffered and closes the connections of a
// session with no call left.
func (s *session) finish() {
	s.mu.Lock()
	s.flush()
	s.mu.Unlock()
	s.closeAll()
}

// goAway tells the client to open no new calls; the connection closes when
// the open ones end.
func (s *session) goAway() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.goingAway || s.closed {
		return
	}
	s.goingAway = true
	if !s.started {
		s.cli.conn.Close()
		return
	}
	s.cli.fr.WriteGoAway(s.lastID, http2.ErrCodeNo, nil)
	s.cli.dirty = true
	s.flush()
	if len(s.streams) == 0 {
		s.cli.conn.Close()
	}
}

// teardown ends every call of a client connection that is gone.
func (s *session) teardown() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	if s.ka != nil {
		s.ka.Stop()
	}
	s.cancel()
	s.cli.conn.Close()
	for _, st := range s.streams {
		st.up.closedIn = true
		s.close(st, codes.Canceled, nil)
	}
	s.flush()
	for l := range s.live {
		l.conn.Close()
	}
}
