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
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	_ "google.golang.org/grpc/encoding/gzip" // the backend takes gzip
	"google.golang.org/grpc/status"

	"github.com/armorshim/armorshim/cri/h2relay"
)

// h2client speaks HTTP/2 frame by frame, to send what gRPC-Go never does.
type h2client struct {
	t       *testing.T
	connWin int64 // what the relay lets us send, as it said
	pinged  bool  // the relay acknowledged our ping
	// settings are the relay's, as it sent them.
	settings map[http2.SettingID]uint32
	conn     net.Conn
	fr       *http2.Framer
	enc      *hpack.Encoder
	ebuf     bytes.Buffer
}

func newH2Client(t *testing.T, sock string, settings ...http2.Setting) *h2client {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	h := &h2client{t: t, conn: c, fr: http2.NewFramer(c, c), connWin: 65535}
	table := uint32(4096)
	for _, s := range settings {
		if s.ID == http2.SettingHeaderTableSize {
			table = s.Val // the relay must keep to it
		}
	}
	h.fr.ReadMetaHeaders = hpack.NewDecoder(table, nil)
	h.enc = hpack.NewEncoder(&h.ebuf)
	c.Write([]byte(http2.ClientPreface))
	h.fr.WriteSettings(settings...)
	return h
}

// block encodes fields (with indexing: the relay's decoder keeps a table).
func (h *h2client) block(fields ...hpack.HeaderField) []byte {
	h.ebuf.Reset()
	for _, f := range fields {
		h.enc.WriteField(f)
	}
	return append([]byte(nil), h.ebuf.Bytes()...)
}

func request(method string, extra ...hpack.HeaderField) []hpack.HeaderField {
	return append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: method}, {Name: ":authority", Value: "localhost"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	}, extra...)
}

func grpcMessage(flag byte, msg []byte) []byte {
	out := make([]byte, 5, 5+len(msg))
	out[0] = flag
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg)))
	return append(out, msg...)
}

// connFrame handles a frame of the connection itself: settings, connection
// credit, the acknowledgement of our ping.
func (h *h2client) connFrame(f http2.Frame) {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if !f.IsAck() {
			if h.settings == nil {
				h.settings = map[http2.SettingID]uint32{}
			}
			f.ForeachSetting(func(s http2.Setting) error { h.settings[s.ID] = s.Val; return nil })
			h.fr.WriteSettingsAck()
		}
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			h.connWin += int64(f.Increment)
		}
	case *http2.PingFrame:
		if f.IsAck() && f.Data == [8]byte{'a', 'r', 'm', 'o', 'r'} {
			h.pinged = true
		}
	}
}

// answer reads frames until stream id ends and returns its body and last
// header block.
func (h *h2client) answer(id uint32) (body []byte, trailers []hpack.HeaderField) {
	h.t.Helper()
	for {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatalf("reading stream %d: %v", id, err)
		}
		h.connFrame(f)
		switch f := f.(type) {
		case *http2.DataFrame:
			if f.StreamID == id {
				body = append(body, f.Data()...)
				if f.StreamEnded() {
					return body, nil
				}
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == id {
				trailers = append([]hpack.HeaderField(nil), f.Fields...)
				if f.StreamEnded() {
					return body, trailers
				}
			}
		case *http2.RSTStreamFrame:
			if f.StreamID == id {
				h.t.Fatalf("stream %d reset: %v", id, f.ErrCode)
			}
		case *http2.GoAwayFrame:
			h.t.Fatalf("GOAWAY: %v %s", f.ErrCode, f.DebugData())
		}
	}
}

// awaitPing reads frames until the relay acknowledges the test's ping; the
// connection deadline fails a relay that never does.
func (h *h2client) awaitPing() {
	h.t.Helper()
	for !h.pinged {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatalf("waiting for the ping's acknowledgement: %v", err)
		}
		h.connFrame(f)
	}
}

// credit reads frames until the relay's connection window has room for n
// bytes: a relay that does not return credit fails the test.
func (h *h2client) credit(n int64) {
	h.t.Helper()
	for h.connWin < n {
		f, err := h.fr.ReadFrame()
		if err != nil {
			h.t.Fatalf("waiting for %d bytes of connection credit (have %d): %v", n, h.connWin, err)
		}
		if wu, ok := f.(*http2.WindowUpdateFrame); ok && wu.StreamID == 0 {
			h.connWin += int64(wu.Increment)
		}
	}
	h.connWin -= n
}

func value(fields []hpack.HeaderField, name string) string {
	for _, f := range fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// Frames gRPC-Go does not send but HTTP/2 allows: a header block split over
// CONTINUATION frames, padded DATA frames, a message split over frames, a
// client that allows no HPACK dynamic table and small frames, a ping; and a
// gzip-compressed message to a held call.
func TestFramesGRPCGoDoesNotSend(t *testing.T) {
	srv := startServer(t, echo)
	var inspected []byte
	h := &hooks{b: srv.backend(), inspect: map[string]h2relay.Inspector{
		"/t.S/Held": func(_ context.Context, req []byte) h2relay.Verdict {
			inspected = req
			return h2relay.Verdict{Request: append([]byte("seen:"), req...)}
		},
	}}
	_, _, sock := relay(t, h2relay.Config{Hooks: h, StreamWindow: 64 << 10, ConnWindow: 256 << 10})
	c := newH2Client(t, sock, http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})

	// Stream 1: HEADERS + 2 CONTINUATION, a 40 KB message over four
	// padded DATA frames (each within the 16 KiB frame size).
	long := hpack.HeaderField{Name: "x-long", Value: string(bytes.Repeat([]byte("v"), 300))}
	blk := c.block(request("/t.S/Echo", long)...)
	third := len(blk) / 3
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: blk[:third]})
	c.fr.WriteContinuation(1, false, blk[third:2*third])
	c.fr.WriteContinuation(1, true, blk[2*third:])
	msg := grpcMessage(0, pattern(7, 40<<10))
	c.fr.WriteDataPadded(1, false, msg[:3], []byte{0, 0, 0, 0, 0, 0, 0})
	c.fr.WriteDataPadded(1, false, msg[3:16000], make([]byte, 200))
	c.fr.WriteDataPadded(1, false, msg[16000:32000], make([]byte, 255))
	c.fr.WriteDataPadded(1, true, msg[32000:], make([]byte, 1))
	c.fr.WritePing(false, [8]byte{'a', 'r', 'm', 'o', 'r'})
	body, trailers := c.answer(1)
	if !bytes.Equal(body, msg) {
		t.Errorf("echo: %d bytes back, want the %d sent", len(body), len(msg))
	}
	if value(trailers, "grpc-status") != "0" {
		t.Errorf("trailers %v", trailers)
	}
	// The answer can overtake the ping's acknowledgement: the relay reads
	// the ping only after it forwarded the end of the stream.
	c.awaitPing()

	// Stream 3: a gzip-compressed message to a held call, which sees it
	// decompressed and forwards its own (uncompressed) message.
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write([]byte("compressed request"))
	zw.Close()
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, EndHeaders: true,
		BlockFragment: c.block(request("/t.S/Held", hpack.HeaderField{Name: "grpc-encoding", Value: "gzip"})...)})
	c.fr.WriteData(3, true, grpcMessage(1, z.Bytes()))
	body, trailers = c.answer(3)
	if len(body) > 5 && body[0] == 1 { // the backend answers in kind
		zr, err := gzip.NewReader(bytes.NewReader(body[5:]))
		if err != nil {
			t.Fatal(err)
		}
		plain, _ := io.ReadAll(zr)
		body = grpcMessage(0, plain)
	}
	if string(inspected) != "compressed request" || !bytes.Equal(body, grpcMessage(0, []byte("seen:compressed request"))) || value(trailers, "grpc-status") != "0" {
		t.Errorf("held gzip call: inspected %q, answer %q, trailers %v", inspected, body, trailers)
	}

	// Stream 5: an unknown compression on a held call is refused.
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 5, EndHeaders: true,
		BlockFragment: c.block(request("/t.S/Held", hpack.HeaderField{Name: "grpc-encoding", Value: "snappy"})...)})
	c.fr.WriteData(5, true, grpcMessage(1, []byte("??")))
	_, trailers = c.answer(5)
	if value(trailers, "grpc-status") != "12" { // Unimplemented
		t.Errorf("unknown compression: %v", trailers)
	}
}

// Connection credit: a client that sends more than the relay's connection
// window in total, over many streams, never stalls, so the relay returns
// every byte of credit, padding and discarded data included.
func TestConnectionCreditReturned(t *testing.T) {
	srv := startServer(t, func(_ string, ss grpc.ServerStream) error {
		// Answer without reading the whole request: the rest is
		// discarded by the relay.
		return ss.SendMsg(&raw{[]byte("ok")})
	})
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{b: srv.backend()}, StreamWindow: 32 << 10, ConnWindow: 64 << 10})
	c := newH2Client(t, sock)
	c.conn.SetDeadline(time.Now().Add(3 * time.Second))
	sent := 0
	for i := uint32(0); i < 60; i++ {
		id := 2*i + 1
		c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: c.block(request("/t.S/Any")...)})
		// 8 KB padded frames: 3 of them per stream (24 KB + padding),
		// 60 streams: over 20 times the connection window.
		for j := 0; j < 3; j++ {
			c.credit(8101)
			c.fr.WriteDataPadded(id, j == 2, grpcMessage(0, make([]byte, 8000))[:8000], make([]byte, 100))
			sent += 8101
		}
		_, trailers := c.answer(id)
		if value(trailers, "grpc-status") != "0" {
			t.Fatalf("stream %d: %v", id, trailers)
		}
	}
	if sent < 15*(64<<10) {
		t.Fatalf("sent only %d bytes", sent)
	}
}

// A client that sends beyond a stream's window is stopped with
// FLOW_CONTROL_ERROR, so what the relay queues for a stream stays bounded.
func TestFlowControlEnforced(t *testing.T) {
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	srv := startServer(t, func(string, grpc.ServerStream) error { <-block; return nil }) // never reads
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{b: srv.backend()}, StreamWindow: 64 << 10, ConnWindow: 1 << 20})
	c := newH2Client(t, sock)
	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: c.block(request("/t.S/Any")...)})
	chunk := make([]byte, 8000)
	for i := 0; i < 25; i++ { // 200 KB: the backend takes 64 KB, the relay's window another 64 KB
		if err := c.fr.WriteData(1, false, chunk); err != nil {
			t.Fatal(err)
		}
	}
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("stream never reset: %v", err)
		}
		if r, ok := f.(*http2.RSTStreamFrame); ok && r.StreamID == 1 {
			if r.ErrCode != http2.ErrCodeFlowControl {
				t.Errorf("RST_STREAM %v, want FLOW_CONTROL_ERROR", r.ErrCode)
			}
			return
		}
	}
}

// Settings out of range end the connection (PROTOCOL_ERROR) instead of
// being obeyed: a max frame size of 0 would make header blocks endless.
func TestInvalidSettings(t *testing.T) {
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{}})
	c := newH2Client(t, sock, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 0})
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY: %v", err)
		}
		if g, ok := f.(*http2.GoAwayFrame); ok {
			if g.ErrCode != http2.ErrCodeProtocol {
				t.Errorf("GOAWAY %v, want PROTOCOL_ERROR", g.ErrCode)
			}
			return
		}
	}
}

// A call routed to a Refuse backend is answered as soon as its headers are
// read, with the status, before the client sends its request: nothing is
// dialed, the request that follows is discarded (its credit returned) and
// the connection serves on. The call ends with the status's code.
func TestRefuseAnswersAtOnce(t *testing.T) {
	var mu sync.Mutex
	var seen []string
	srv := startServer(t, func(method string, ss grpc.ServerStream) error {
		mu.Lock()
		seen = append(seen, method)
		mu.Unlock()
		return echo(method, ss)
	})
	h := &hooks{b: srv.backend(), refuse: map[string]*status.Status{
		"t.S/Refused": status.New(codes.Unimplemented, "refused: not here"),
	}}
	_, _, sock := relay(t, h2relay.Config{Hooks: h, ConnWindow: 64 << 10})
	c := newH2Client(t, sock)

	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: c.block(request("t.S/Refused")...)})
	var trailers []hpack.HeaderField
	for trailers == nil {
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatalf("no answer before the request: %v", err)
		}
		c.connFrame(f)
		if hf, ok := f.(*http2.MetaHeadersFrame); ok && hf.StreamID == 1 {
			if !hf.StreamEnded() {
				t.Fatalf("response headers without END_STREAM: %v", hf.Fields)
			}
			trailers = append([]hpack.HeaderField(nil), hf.Fields...)
		}
	}
	if value(trailers, ":status") != "200" || value(trailers, "grpc-status") != "12" || value(trailers, "grpc-message") != "refused: not here" {
		t.Errorf("refusal %v", trailers)
	}
	// The request comes anyway: over the connection window in all, which
	// the relay must give back although no stream takes it.
	for range 6 {
		c.credit(16000)
		c.fr.WriteData(1, false, make([]byte, 16000))
	}
	c.fr.WriteData(1, true, nil)

	c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, EndHeaders: true, BlockFragment: c.block(request("/t.S/Echo")...)})
	msg := grpcMessage(0, []byte("after"))
	c.credit(int64(len(msg)))
	c.fr.WriteData(3, true, msg)
	if body, tr := c.answer(3); !bytes.Equal(body, msg) || value(tr, "grpc-status") != "0" {
		t.Errorf("call after the refusal: %q %v", body, tr)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != 1 || seen[0] != "/t.S/Echo" {
		t.Errorf("backend saw %v, want only /t.S/Echo", seen)
	}
	waitFor(t, func() bool { return len(h.ended()) == 2 })
	if got := h.ended(); got[0] != "t.S/Refused Unimplemented" {
		t.Errorf("ended %v", got)
	}
}

// goAwayCode reads frames until a GOAWAY and returns its code; ping, if
// not zero, must not be acknowledged first (the frame before it was read).
func goAwayCode(t *testing.T, fr *http2.Framer, ping [8]byte) http2.ErrCode {
	t.Helper()
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			t.Fatalf("no GOAWAY: %v", err)
		}
		switch f := f.(type) {
		case *http2.GoAwayFrame:
			return f.ErrCode
		case *http2.PingFrame:
			if f.IsAck() && ping != [8]byte{} && f.Data == ping {
				t.Fatal("the oversize frame was read: the ping after it was answered")
			}
		}
	}
}

// The relay reads no frame larger than the SETTINGS_MAX_FRAME_SIZE it
// advertised (the default, 16 KiB): a client that sends one gets a
// FRAME_SIZE_ERROR GOAWAY, without the relay reading (or allocating) its
// payload. A frame of exactly 16 KiB is read.
func TestOversizeFrameFromClient(t *testing.T) {
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{}})
	c := newH2Client(t, sock)
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	const unknownType = http2.FrameType(0xfa) // ignored when read
	c.fr.WriteRawFrame(unknownType, 0, 0, make([]byte, 1<<14))
	c.fr.WritePing(false, [8]byte{'a', 'r', 'm', 'o', 'r'})
	c.awaitPing()

	c.fr.WriteRawFrame(unknownType, 0, 0, make([]byte, 1<<14+1))
	c.fr.WritePing(false, [8]byte{'b', 'i', 'g'})
	if code := goAwayCode(t, c.fr, [8]byte{'b', 'i', 'g'}); code != http2.ErrCodeFrameSize {
		t.Errorf("GOAWAY %v, want FRAME_SIZE_ERROR", code)
	}
}

// The same bound holds for the backend: a backend that sends a frame over
// 16 KiB gets a FRAME_SIZE_ERROR GOAWAY, and the call on it fails with
// Unavailable.
func TestOversizeFrameFromBackend(t *testing.T) {
	sock := filepath.Join(sockDir(t), "raw.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	goAway := make(chan http2.ErrCode, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
			return
		}
		fr := http2.NewFramer(c, c)
		fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
		fr.WriteSettings()
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				close(goAway)
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					fr.WriteSettingsAck()
				}
			case *http2.MetaHeadersFrame:
				fr.WriteData(f.StreamID, false, make([]byte, 1<<14+1))
			case *http2.GoAwayFrame:
				goAway <- f.ErrCode
				return
			}
		}
	}()
	b := &h2relay.Backend{Name: "runtime", Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	_, conn, _ := relay(t, h2relay.Config{Hooks: &hooks{b: b}})
	err = conn.Invoke(ctxTimeout(t, 5*time.Second), "/t.S/Any", &raw{[]byte("x")}, new(raw))
	if st := status.Convert(err); st.Code() != codes.Unavailable || !strings.Contains(st.Message(), "frame too large") {
		t.Errorf("call: %v, want Unavailable: frame too large", err)
	}
	if code, ok := <-goAway; !ok || code != http2.ErrCodeFrameSize {
		t.Errorf("backend got GOAWAY %v (%v), want FRAME_SIZE_ERROR", code, ok)
	}
}
