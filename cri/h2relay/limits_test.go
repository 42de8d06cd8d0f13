package h2relay_test

import (
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"

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

// ping sends a ping and waits for its acknowledgement: the relay has read
// every frame sent before it.
func (h *h2client) ping() {
	h.t.Helper()
	h.pinged = false
	h.fr.WritePing(false, [8]byte{'a', 'r', 'm', 'o', 'r'})
	h.awaitPing()
}

// blockUntilCancelled is a backend handler that counts the calls reaching it
// and holds each until the relay cancels it.
func blockUntilCancelled(entered *atomic.Int32) func(string, grpc.ServerStream) error {
	return func(_ string, ss grpc.ServerStream) error {
		entered.Add(1)
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
