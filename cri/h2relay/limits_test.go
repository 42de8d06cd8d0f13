package h2relay_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/armorshim/armorshim/cri/h2relay"
)

// resetCode reads frames until stream id is reset and returns the code; the
// stream must not be answered first, nor the connection closed.
func (h *h2client) resetCode(id uint32) http2.ErrCode {
	h.t.Helper()
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatalf("waiting for RST_STREAM on stream %d: %v", id, err)
		}
		h.connFrame(f)
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				return f.ErrCode
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				h.t.Fatalf("stream %d answered (%v), want it reset", id, f.Fields)
			}
		case *http2.GoAwayFrame:
			h.t.Fatalf("GOAWAY %v %q, want stream %d reset", f.ErrCode, f.DebugData(), id)
		}
	}
}

// send writes data as DATA frames of at most 16 KiB, each once the
// relay's connection window has room for it.
func (h *h2client) send(id uint32, data []byte, end bool) {
	h.t.Helper()
	for first := true; first || len(data) > 0; first = false {
		n := min(len(data), 16<<10)
		h.credit(int64(n))
		if err := h.fr.WriteData(id, end && n == len(data), data[:n]); err != nil {
			h.t.Fatal(err)
		}
		data = data[n:]
	}
}

// ping sends a ping and waits for its acknowledgement: the relay has read
// every frame sent before it.
func (h *h2client) ping() {
	h.t.Helper()
	h.pinged = false
	h.fr.WritePing(false, [8]byte{'a', 'r', 'm', 'o', 'r'})
	h.awaitPing()
}

// blockUntilCancelled is a backend handler that counts the calls reaching it,
// reads the request and holds each call until the relay cancels it.
func blockUntilCancelled(entered *atomic.Int32) func(string, grpc.ServerStream) error {
	return func(_ string, ss grpc.ServerStream) error {
		entered.Add(1)
		ss.RecvMsg(new(raw))
		<-ss.Context().Done()
		return nil
	}
}

// The relay advertises SETTINGS_MAX_CONCURRENT_STREAMS and keeps to it (RFC
// 9113 §5.1.2): a stream over the limit is refused with REFUSED_STREAM while
// the client may not have seen the limit, and with PROTOCOL_ERROR once it
// acknowledged it; nothing of it reaches the backend; a stream that ends
// makes room for another. The default limit is 1000.
func TestMaxConcurrentStreams(t *testing.T) {
	var entered atomic.Int32
	srv := startServer(t, blockUntilCancelled(&entered))
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{b: srv.backend()}, MaxConcurrentStreams: 3})
	c := newH2Client(t, sock)
	for id := uint32(1); id <= 7; id += 2 { // before reading the relay's SETTINGS
		c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: true, BlockFragment: c.block(request("/t.S/Block")...)})
	}
	if code := c.resetCode(7); code != http2.ErrCodeRefusedStream {
		t.Errorf("4th stream before the SETTINGS ACK: %v, want REFUSED_STREAM", code)
	}
	if got := c.settings[http2.SettingMaxConcurrentStreams]; got != 3 {
		t.Errorf("SETTINGS_MAX_CONCURRENT_STREAMS %d, want 3", got)
	}
	c.ping() // the relay has our SETTINGS ACK
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 9, EndHeaders: true, EndStream: true, BlockFragment: c.block(request("/t.S/Block")...)})
	if code := c.resetCode(9); code != http2.ErrCodeProtocol {
		t.Errorf("4th stream after the SETTINGS ACK: %v, want PROTOCOL_ERROR", code)
	}
	waitFor(t, func() bool { return entered.Load() == 3 })

	c.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 11, EndHeaders: true, EndStream: true, BlockFragment: c.block(request("/t.S/Block")...)})
	waitFor(t, func() bool { return entered.Load() == 4 })
	c.ping()
	if n := entered.Load(); n != 4 {
		t.Errorf("%d calls reached the backend, want 4", n)
	}

	_, _, sock = relay(t, h2relay.Config{Hooks: &hooks{b: srv.backend()}})
	c = newH2Client(t, sock)
	c.ping()
	if got := c.settings[http2.SettingMaxConcurrentStreams]; got != 1000 {
		t.Errorf("default SETTINGS_MAX_CONCURRENT_STREAMS %d, want 1000", got)
	}
}

// messageStart is the start of a gRPC message announcing size bytes, with
// the first n of them.
func messageStart(size, n int) []byte {
	return append(grpcMessage(0, nil)[:1], append(binary.BigEndian.AppendUint32(nil, uint32(size)), make([]byte, n)...)...)
}

// The requests the relay holds whole for an Inspector share one budget
// across connections: a held call that would take it past the limit is
// answered ResourceExhausted as soon as its message announces its length,
// and nothing of it reaches the backend; the bytes come back when a call is
// reset, when its client leaves, and when the Inspector of a reset call
// returns.
func TestHeldBytesBounded(t *testing.T) {
	var entered atomic.Int32
	srv := startServer(t, blockUntilCancelled(&entered))
	inspecting := make(chan struct{}, 1)
	h := &hooks{b: srv.backend(), inspect: map[string]h2relay.Inspector{
		"/t.S/Held": func(context.Context, []byte) h2relay.Verdict { return h2relay.Verdict{} },
		"/t.S/Slow": func(ctx context.Context, _ []byte) h2relay.Verdict {
			inspecting <- struct{}{}
			<-ctx.Done()
			return h2relay.Verdict{}
		},
	}}
	r, _, sock := relay(t, h2relay.Config{Hooks: h, MaxHeldBytes: 1 << 20, MaxMessageSize: 4 << 20})
	const size = 400 << 10
	open := func(c *h2client, id uint32, method string) {
		c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: c.block(request(method)...)})
	}
	c1, c2 := newH2Client(t, sock), newH2Client(t, sock)
	open(c1, 1, "/t.S/Held")
	c1.fr.WriteData(1, false, messageStart(size, 1000))
	open(c2, 1, "/t.S/Held")
	c2.fr.WriteData(1, false, messageStart(size, 1000))
	c1.ping()
	c2.ping()
	if got := r.HeldBytes(); got != 2*(size+5) {
		t.Fatalf("held %d bytes, want the two messages whole (%d)", got, 2*(size+5))
	}
	// A third over the limit: refused at once, whatever it sent.
	open(c2, 3, "/t.S/Held")
	c2.fr.WriteData(3, false, messageStart(size, 10))
	_, trailers := c2.answer(3)
	if value(trailers, "grpc-status") != "8" || !strings.Contains(value(trailers, "grpc-message"), "too many requests held") {
		t.Errorf("held call over the budget: %v", trailers)
	}
	if got := r.HeldBytes(); got != 2*(size+5) {
		t.Errorf("held %d bytes after the refusal, want %d", got, 2*(size+5))
	}
	// A reset gives its bytes back, and so does a client leaving.
	c1.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	c1.ping()
	if got := r.HeldBytes(); got != size+5 {
		t.Errorf("held %d bytes after a reset, want %d", got, size+5)
	}
	c2.conn.Close()
	waitFor(t, func() bool { return r.HeldBytes() == 0 })

	// A call reset while its Inspector runs: the bytes come back once the
	// Inspector returns.
	open(c1, 3, "/t.S/Slow")
	c1.fr.WriteData(3, true, grpcMessage(0, make([]byte, 1000)))
	<-inspecting
	if got := r.HeldBytes(); got != 1005 {
		t.Errorf("held %d bytes while inspecting, want 1005", got)
	}
	c1.fr.WriteRSTStream(3, http2.ErrCodeCancel)
	waitFor(t, func() bool { return r.HeldBytes() == 0 })

	// What is left of the budget still serves calls.
	open(c1, 5, "/t.S/Held")
	c1.send(5, grpcMessage(0, make([]byte, 900<<10)), true)
	waitFor(t, func() bool { return entered.Load() == 1 })
	waitFor(t, func() bool { return r.HeldBytes() == 0 }) // forwarded: no longer held
}

// Pings are held to gRPC-Go's keepalive enforcement policy: a ping after
// the relay sent data (as gRPC-Go clients send their BDP pings) is always
// welcome, but a client that pings again and again with nothing sent in
// between gets GOAWAY ENHANCE_YOUR_CALM "too_many_pings" after three
// strikes, instead of an acknowledgement for each.
func TestPingFlood(t *testing.T) {
	srv := startServer(t, echo)
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{b: srv.backend()}})
	c := newH2Client(t, sock)
	for i := uint32(0); i < 5; i++ {
		id := 2*i + 1
		c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: c.block(request("/t.S/Echo")...)})
		c.fr.WriteData(id, true, grpcMessage(0, []byte("x")))
		c.answer(id)
		c.ping()
	}
	for range 10 {
		c.fr.WritePing(false, [8]byte{'f', 'l', 'o', 'o', 'd'})
	}
	acks := 0
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY after %d acknowledged pings: %v", acks, err)
		}
		switch f := f.(type) {
		case *http2.PingFrame:
			if acks++; acks == 10 {
				t.Fatal("all 10 pings of the flood acknowledged, no GOAWAY")
			}
		case *http2.GoAwayFrame:
			if f.ErrCode != http2.ErrCodeEnhanceYourCalm || string(f.DebugData()) != "too_many_pings" {
				t.Errorf("GOAWAY %v %q, want ENHANCE_YOUR_CALM too_many_pings", f.ErrCode, f.DebugData())
			}
			if acks > 3 {
				t.Errorf("%d pings of the flood acknowledged before the GOAWAY, want at most 3", acks)
			}
			return
		}
	}
}

// Rapid reset (CVE-2023-44487): a client that opens calls and resets them at
// once gets GOAWAY ENHANCE_YOUR_CALM "too_many_resets" once it reset 1000
// (plus 100 a second) before their answer, and no more of its calls reach
// the backend. Before, every one of them did.
func TestRapidReset(t *testing.T) {
	var entered atomic.Int32
	srv := startServer(t, blockUntilCancelled(&entered))
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{b: srv.backend()}})
	c := newH2Client(t, sock)
	c.conn.SetDeadline(time.Now().Add(60 * time.Second))
	start := time.Now()
	const pairs = 3000
	stop := make(chan struct{})
	go func() {
		for i := uint32(0); i < pairs; i++ {
			select {
			case <-stop:
				return
			default:
			}
			id := 2*i + 1
			if c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: true, BlockFragment: c.block(request("/t.S/Reset")...)}) != nil ||
				c.fr.WriteRSTStream(id, http2.ErrCodeCancel) != nil {
				return
			}
		}
		c.fr.WritePing(false, [8]byte{'d', 'o', 'n', 'e'}) // all read
	}()
	defer close(stop)
	var goAway *http2.GoAwayFrame
	for goAway == nil {
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY after %d resets (%d reached the backend): %v", pairs, entered.Load(), err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			goAway = f
		case *http2.PingFrame:
			if f.Data == [8]byte{'d', 'o', 'n', 'e'} {
				settled(t, func() int64 { return int64(entered.Load()) })
				t.Fatalf("no GOAWAY after %d resets; %d reached the backend", pairs, entered.Load())
			}
		}
	}
	elapsed := time.Since(start)
	if goAway.ErrCode != http2.ErrCodeEnhanceYourCalm || string(goAway.DebugData()) != "too_many_resets" {
		t.Errorf("GOAWAY %v %q, want ENHANCE_YOUR_CALM too_many_resets", goAway.ErrCode, goAway.DebugData())
	}
	settled(t, func() int64 { return int64(entered.Load()) })
	if n, most := entered.Load(), 1000+int32(100*elapsed.Seconds())+1; n > most {
		t.Errorf("%d reset calls reached the backend in %v, want at most %d", n, elapsed, most)
	}
}

// relayWithTimeouts starts a relay with short handshake and keepalive
// timeouts and returns its socket.
func relayWithTimeouts(t *testing.T, cfg h2relay.Config, handshake, keepalive, keepaliveTimeout time.Duration) string {
	t.Helper()
	r := h2relay.NewWithTimeouts(cfg, handshake, keepalive, keepaliveTimeout)
	t.Cleanup(r.Close)
	sock := filepath.Join(sockDir(t), "relay.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go r.Serve(l)
	return sock
}

// closedWithin reads c until the relay closes it, failing if that takes
// longer than d; it returns what it read.
func closedWithin(t *testing.T, c net.Conn, d time.Duration) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("the connection is still open after %v: %v", d, err)
	}
	return got
}

// A connection must complete its handshake, the preface and then a SETTINGS
// frame (RFC 9113 §3.4), within the handshake timeout (10 s; 200 ms here):
// one that sends nothing, or the preface and then nothing, is closed; one
// that starts with another frame gets GOAWAY PROTOCOL_ERROR; one that
// completes it stays open past the timeout.
func TestHandshakeTimeout(t *testing.T) {
	sock := relayWithTimeouts(t, h2relay.Config{Hooks: &hooks{}}, 200*time.Millisecond, time.Hour, time.Hour)
	dial := func() net.Conn {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	closedWithin(t, dial(), 3*time.Second)

	c := dial()
	c.Write([]byte(http2.ClientPreface))
	closedWithin(t, c, 3*time.Second)

	c = dial()
	c.Write([]byte(http2.ClientPreface))
	http2.NewFramer(c, nil).WritePing(false, [8]byte{})
	fr := http2.NewFramer(nil, bytes.NewReader(closedWithin(t, c, 3*time.Second)))
	if code := goAwayCode(t, fr, [8]byte{}); code != http2.ErrCodeProtocol {
		t.Errorf("a PING before SETTINGS: GOAWAY %v, want PROTOCOL_ERROR", code)
	}

	h := newH2Client(t, sock)
	time.Sleep(500 * time.Millisecond)
	h.ping()
}

// Keepalive as gRPC-Go's server does it (2 h, then 20 s; 300 ms each here):
// a silent connection is pinged; one that answers stays open, one that does
// not is closed.
func TestKeepalive(t *testing.T) {
	sock := relayWithTimeouts(t, h2relay.Config{Hooks: &hooks{}}, time.Second, 300*time.Millisecond, 300*time.Millisecond)
	h := newH2Client(t, sock)
	h.conn.SetDeadline(time.Now().Add(10 * time.Second))
	for pings := 0; pings < 3; {
		f, err := h.fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %d keepalive pings: %v", pings, err)
		}
		h.connFrame(f)
		if p, ok := f.(*http2.PingFrame); ok && !p.IsAck() {
			pings++
			h.fr.WritePing(true, p.Data)
		}
	}

	silent := newH2Client(t, sock)
	silent.ping() // the handshake is complete
	closedWithin(t, silent.conn, 3*time.Second)
}

// afterPing sends a ping and reads frames until its acknowledgement, or
// the end of the connection after a GOAWAY; it returns the first
// RST_STREAM or GOAWAY the relay sent before, if any.
func (h *h2client) afterPing() http2.Frame {
	h.t.Helper()
	h.pinged = false
	h.fr.WritePing(false, [8]byte{'a', 'r', 'm', 'o', 'r'})
	var first http2.Frame
	for !h.pinged {
		f, err := h.fr.ReadFrame()
		if err != nil {
			if _, ok := first.(*http2.GoAwayFrame); ok {
				return first
			}
			h.t.Fatalf("waiting for the ping's acknowledgement: %v", err)
		}
		h.connFrame(f)
		switch f := f.(type) {
		case *http2.RSTStreamFrame:
			if first == nil {
				first = &http2.RSTStreamFrame{FrameHeader: f.FrameHeader, ErrCode: f.ErrCode}
			}
		case *http2.GoAwayFrame:
			if first == nil {
				first = &http2.GoAwayFrame{FrameHeader: f.FrameHeader, ErrCode: f.ErrCode}
			}
		}
	}
	return first
}

// Frames on streams that are not open get what RFC 9113 §5.1 asks for,
// instead of being dropped (a client opening a stream with a used ID waited
// for ever): HEADERS on a stream that ended both ways or DATA after it,
// connection error STREAM_CLOSED; HEADERS opening a stream below the last
// one, connection error PROTOCOL_ERROR (§5.1.1); any frame on a stream the
// client reset, stream error STREAM_CLOSED; DATA after the client's
// END_STREAM, stream error STREAM_CLOSED, and the call is cancelled; frames
// on a stream the relay reset, ignored; DATA, WINDOW_UPDATE or RST_STREAM
// on a stream never opened (an even one included), connection error
// PROTOCOL_ERROR.
func TestFramesOnClosedStreams(t *testing.T) {
	var entered atomic.Int32
	block := blockUntilCancelled(&entered)
	srv := startServer(t, func(method string, ss grpc.ServerStream) error {
		if method == "/t.S/Echo" {
			return echo(method, ss)
		}
		return block(method, ss)
	})
	h := &hooks{b: srv.backend(), refuse: map[string]*status.Status{"/t.S/Refused": status.New(codes.Unimplemented, "no")}}
	_, _, sock := relay(t, h2relay.Config{Hooks: h})
	headers := func(c *h2client, id uint32, method string, end bool) {
		c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, EndStream: end, BlockFragment: c.block(request(method)...)})
	}
	echoCall := func(c *h2client, id uint32) {
		headers(c, id, "/t.S/Echo", false)
		c.fr.WriteData(id, true, grpcMessage(0, []byte("x")))
		if _, tr := c.answer(id); value(tr, "grpc-status") != "0" {
			t.Fatalf("echo: %v", tr)
		}
	}
	goAway := func(what string, f http2.Frame, code http2.ErrCode) {
		t.Helper()
		if g, ok := f.(*http2.GoAwayFrame); !ok || g.ErrCode != code {
			t.Errorf("%s: %v, want GOAWAY %v", what, f, code)
		}
	}
	reset := func(what string, f http2.Frame, id uint32, code http2.ErrCode) {
		t.Helper()
		if r, ok := f.(*http2.RSTStreamFrame); !ok || r.StreamID != id || r.ErrCode != code {
			t.Errorf("%s: %v, want RST_STREAM %d %v", what, f, id, code)
		}
	}

	c := newH2Client(t, sock)
	echoCall(c, 1)
	headers(c, 1, "/t.S/Echo", false)
	goAway("HEADERS reusing a stream that ended", c.afterPing(), http2.ErrCodeStreamClosed)

	c = newH2Client(t, sock)
	echoCall(c, 1)
	c.fr.WriteData(1, false, []byte("late"))
	goAway("DATA on a stream that ended", c.afterPing(), http2.ErrCodeStreamClosed)

	c = newH2Client(t, sock)
	echoCall(c, 5)
	headers(c, 3, "/t.S/Echo", false)
	goAway("HEADERS opening a stream below the last", c.afterPing(), http2.ErrCodeProtocol)

	c = newH2Client(t, sock)
	headers(c, 1, "/t.S/Block", false)
	c.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	c.fr.WriteData(1, false, []byte("late"))
	reset("DATA after the client's RST_STREAM", c.afterPing(), 1, http2.ErrCodeStreamClosed)

	headers(c, 3, "/t.S/Block", true)
	waitFor(t, func() bool { return entered.Load() == 2 })
	c.fr.WriteData(3, false, []byte("more"))
	reset("DATA after the client's END_STREAM", c.afterPing(), 3, http2.ErrCodeStreamClosed)
	waitFor(t, func() bool { // the call ended, its backend stream cancelled
		for _, d := range h.ended() {
			if d == "/t.S/Block Internal" {
				return true
			}
		}
		return false
	})

	headers(c, 5, "/t.S/Refused", false) // answered and reset by the relay
	if _, tr := c.answer(5); value(tr, "grpc-status") != "12" {
		t.Fatalf("refused: %v", tr)
	}
	c.fr.WriteData(5, false, []byte("in flight"))
	headers(c, 5, "/t.S/Refused", true)
	c.fr.WriteRSTStream(5, http2.ErrCodeCancel)
	if f := c.afterPing(); f != nil && !isReset(f, 5, http2.ErrCodeNo) {
		t.Errorf("frames on a stream the relay reset: %v, want them ignored", f)
	}
	echoCall(c, 7) // still serving

	for _, f := range []func(c *h2client){
		func(c *h2client) { c.fr.WriteData(9, false, []byte("x")) },
		func(c *h2client) { c.fr.WriteWindowUpdate(9, 1) },
		func(c *h2client) { c.fr.WriteRSTStream(9, http2.ErrCodeCancel) },
		func(c *h2client) { c.fr.WriteData(2, false, []byte("x")) }, // even: the relay opens none
	} {
		c := newH2Client(t, sock)
		echoCall(c, 7)
		f(c)
		goAway("a frame on a stream never opened", c.afterPing(), http2.ErrCodeProtocol)
	}
}

func isReset(f http2.Frame, id uint32, code http2.ErrCode) bool {
	r, ok := f.(*http2.RSTStreamFrame)
	return ok && r.StreamID == id && r.ErrCode == code
}

// DATA, HEADERS and CONTINUATION frames over the 16 KiB
// SETTINGS_MAX_FRAME_SIZE the relay advertises (the default) are a
// connection error FRAME_SIZE_ERROR (RFC 9113 §4.2: always for frames
// carrying a header block), and are not read.
func TestOversizeFramesOfStreams(t *testing.T) {
	srv := startServer(t, echo)
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{b: srv.backend()}})
	big := make([]byte, 1<<14+1)
	for _, tc := range []struct {
		name string
		send func(c *h2client)
	}{
		{"DATA", func(c *h2client) {
			c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: c.block(request("/t.S/Echo")...)})
			c.fr.WriteRawFrame(http2.FrameData, 0, 1, big)
		}},
		{"HEADERS", func(c *h2client) {
			c.fr.WriteRawFrame(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, big)
		}},
		{"CONTINUATION", func(c *h2client) {
			c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: c.block(request("/t.S/Echo")...)})
			c.fr.WriteRawFrame(http2.FrameContinuation, http2.FlagContinuationEndHeaders, 1, big)
		}},
	} {
		c := newH2Client(t, sock)
		c.conn.SetDeadline(time.Now().Add(5 * time.Second))
		tc.send(c)
		c.fr.WritePing(false, [8]byte{'b', 'i', 'g'})
		if code := goAwayCode(t, c.fr, [8]byte{'b', 'i', 'g'}); code != http2.ErrCodeFrameSize {
			t.Errorf("%s over 16 KiB: GOAWAY %v, want FRAME_SIZE_ERROR", tc.name, code)
		}
	}
}

// A compressed held request counts with its decompressed size: a few KiB
// of gzip that decompress to more than the budget left are refused
// ResourceExhausted before the Inspector runs.
func TestHeldBytesCountDecompressed(t *testing.T) {
	srv := startServer(t, echo)
	var inspected atomic.Int32
	h := &hooks{b: srv.backend(), inspect: map[string]h2relay.Inspector{
		"/t.S/Held": func(context.Context, []byte) h2relay.Verdict { inspected.Add(1); return h2relay.Verdict{} },
	}}
	r, _, sock := relay(t, h2relay.Config{Hooks: h, MaxHeldBytes: 1 << 20, MaxMessageSize: 4 << 20})
	c := newH2Client(t, sock)
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: c.block(request("/t.S/Held")...)})
	c.fr.WriteData(1, false, messageStart(400<<10, 1000)) // 400 KiB held
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(make([]byte, 700<<10))
	zw.Close()
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, EndHeaders: true,
		BlockFragment: c.block(request("/t.S/Held", hpack.HeaderField{Name: "grpc-encoding", Value: "gzip"})...)})
	c.fr.WriteData(3, true, grpcMessage(1, z.Bytes()))
	_, trailers := c.answer(3)
	if value(trailers, "grpc-status") != "8" || inspected.Load() != 0 {
		t.Errorf("%d bytes of gzip for 700 KiB with 600 KiB of budget left: %v (inspected %d)", z.Len(), trailers, inspected.Load())
	}
	c.fr.WriteRSTStream(1, http2.ErrCodeCancel)
	waitFor(t, func() bool { return r.HeldBytes() == 0 })
}
