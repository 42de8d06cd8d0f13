package h2relay_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/armorshim/armorshim/cri/h2relay"
)

// rawBackend is an HTTP/2 server written frame by frame: it answers each
// stream with response headers and then as much of answer bytes as the
// relay's windows let it send, and counts what it sent; it gives the relay
// window (a SETTINGS_INITIAL_WINDOW_SIZE and connection credit) only as
// told, and counts the request bytes it received.
type rawBackend struct {
	t      *testing.T
	sock   string
	answer int    // bytes to send on each stream
	window uint32 // its SETTINGS_INITIAL_WINDOW_SIZE; the connection window stays at 65535
	// headerBytes, if not 0, makes it answer each stream at once with a
	// trailers-only answer of about that many bytes of headers.
	headerBytes int

	sent, received atomic.Int64
}

func startRawBackend(t *testing.T, answer int, window uint32) *rawBackend {
	b := &rawBackend{t: t, sock: filepath.Join(sockDir(t), "raw.sock"), answer: answer, window: window}
	l, err := net.Listen("unix", b.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			go b.serve(c)
		}
	}()
	return b
}

func (b *rawBackend) backend() *h2relay.Backend {
	return &h2relay.Backend{Name: "runtime", Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", b.sock)
	}}
}

func (b *rawBackend) serve(c net.Conn) {
	defer c.Close()
	if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
		return
	}
	var mu sync.Mutex
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: b.window})
	connWin, initWin := int64(65535), int64(65535)
	type out struct{ win, left int64 }
	streams := map[uint32]*out{}
	chunk := make([]byte, 16<<10)
	pump := func() { // mu held
		for id, st := range streams {
			for st.left > 0 {
				n := min(st.left, st.win, connWin, int64(len(chunk)))
				if n <= 0 {
					break
				}
				if fr.WriteData(id, false, chunk[:n]) != nil {
					return
				}
				st.left -= n
				st.win -= n
				connWin -= n
				b.sent.Add(n)
			}
		}
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return
		}
		mu.Lock()
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
					for _, st := range streams {
						st.win += int64(v) - initWin
					}
					initWin = int64(v)
				}
				fr.WriteSettingsAck()
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connWin += int64(f.Increment)
			} else if st := streams[f.StreamID]; st != nil {
				st.win += int64(f.Increment)
			}
		case *http2.MetaHeadersFrame:
			if b.headerBytes > 0 {
				hbuf.Reset()
				enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
				enc.WriteField(hpack.HeaderField{Name: "grpc-status", Value: "0"})
				writeBigFields(enc, b.headerBytes)
				writeBlock(fr, f.StreamID, hbuf.Bytes(), true)
				hbuf = bytes.Buffer{} // not to count in the test's heap
				enc = hpack.NewEncoder(&hbuf)
			} else if b.answer > 0 {
				hbuf.Reset()
				enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
				enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
				fr.WriteHeaders(http2.HeadersFrameParam{StreamID: f.StreamID, EndHeaders: true, BlockFragment: hbuf.Bytes()})
				streams[f.StreamID] = &out{win: initWin, left: int64(b.answer)}
			}
		case *http2.DataFrame:
			b.received.Add(int64(len(f.Data())))
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		}
		pump()
		mu.Unlock()
	}
}

// writeBigFields writes header fields of 4 KiB values, n bytes in all.
func writeBigFields(enc *hpack.Encoder, n int) {
	v := string(bytes.Repeat([]byte("v"), 4<<10))
	for i := 0; i < n/(4<<10); i++ {
		enc.WriteField(hpack.HeaderField{Name: fmt.Sprintf("x-big-%d", i), Value: v})
	}
}

// writeBlock writes a header block as HEADERS and CONTINUATION frames of
// 16 KiB.
func writeBlock(fr *http2.Framer, id uint32, block []byte, end bool) {
	for first := true; first || len(block) > 0; first = false {
		n := min(len(block), 16<<10)
		if first {
			fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:n], EndStream: end, EndHeaders: n == len(block)})
		} else {
			fr.WriteContinuation(id, n == len(block), block[:n])
		}
		block = block[n:]
	}
}

// settled waits until n stops changing for half a second, and returns it.
func settled(t *testing.T, n func() int64) int64 {
	t.Helper()
	last, still := int64(-1), 0
	for deadline := time.Now().Add(15 * time.Second); still < 5; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("still moving after 15s: %d", n())
		}
		if v := n(); v != last {
			last, still = v, 0
			continue
		}
		still++
	}
	return last
}

// A client that never gives window back (here, 20 streams of 4 MB answers
// and 64 KiB of window in all) makes the relay buffer no more than the
// connection window it advertised to the backend: it gives the backend
// credit only as the client takes the bytes. Before, each stream got its
// 1 MiB window and the connection credit came back on receipt: 20 MiB
// buffered.
func TestStalledClientBoundsBackendCredit(t *testing.T) {
	b := startRawBackend(t, 4<<20, 65535)
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{b: b.backend()}})
	c := newH2Client(t, sock)
	c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	for i := uint32(0); i < 20; i++ {
		c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 2*i + 1, EndHeaders: true, EndStream: true, BlockFragment: c.block(request("/t.S/Big")...)})
	}
	var got atomic.Int64
	go func() { // reads everything, gives no window back
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return
			}
			if d, ok := f.(*http2.DataFrame); ok {
				got.Add(int64(len(d.Data())))
			}
		}
	}()
	sent := settled(t, b.sent.Load)
	if got.Load() > 65535 {
		t.Errorf("the client got %d bytes, over its 65535 window", got.Load())
	}
	if buffered := sent - got.Load(); buffered > 4<<20 || sent < 1<<20 {
		t.Errorf("the backend sent %d bytes, the client got %d: the relay buffers %d, want at most its 4 MiB connection window", sent, got.Load(), buffered)
	}
}

// The same the other way: a backend that gives no window (a stream window
// of 0) makes the relay accept from a client no more than the connection
// window it advertised, over 100 streams. Before, 64 MiB (the test's cap):
// each stream got 1 MiB and the connection credit came back on receipt.
func TestStalledBackendBoundsClientCredit(t *testing.T) {
	b := startRawBackend(t, 0, 0)
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{b: b.backend()}})
	c := newH2Client(t, sock)
	c.conn.SetDeadline(time.Now().Add(30 * time.Second))
	var mu sync.Mutex
	connWin, win := int64(65535), map[uint32]int64{}
	for i := uint32(0); i < 100; i++ {
		id := 2*i + 1
		c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, EndHeaders: true, BlockFragment: c.block(request("/t.S/Up")...)})
		win[id] = 65535
	}
	var accepted atomic.Int64
	wake := make(chan struct{}, 1)
	go func() {
		for {
			f, err := c.fr.ReadFrame()
			if err != nil {
				return
			}
			if sf, ok := f.(*http2.SettingsFrame); ok && !sf.IsAck() {
				mu.Lock() // the writer's framer
				if v, ok := sf.Value(http2.SettingInitialWindowSize); ok {
					for id := range win {
						win[id] += int64(v) - 65535
					}
				}
				c.fr.WriteSettingsAck()
				mu.Unlock()
			}
			if w, ok := f.(*http2.WindowUpdateFrame); ok {
				mu.Lock()
				if w.StreamID == 0 {
					connWin += int64(w.Increment)
				} else {
					win[w.StreamID] += int64(w.Increment)
				}
				mu.Unlock()
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}
	}()
	chunk := make([]byte, 16<<10)
	done := make(chan struct{})
	go func() { // sends whatever the windows allow
		defer close(done)
		for accepted.Load() < 64<<20 {
			mu.Lock()
			var id uint32
			var n int64
			for sid, w := range win {
				if n = min(w, connWin, int64(len(chunk))); n > 0 {
					id = sid
					break
				}
			}
			if n <= 0 {
				mu.Unlock()
				select {
				case <-wake:
					continue
				case <-time.After(time.Second):
					return
				}
			}
			win[id] -= n
			connWin -= n
			err := c.fr.WriteData(id, false, chunk[:n])
			mu.Unlock()
			if err != nil {
				return
			}
			accepted.Add(n)
		}
	}()
	<-done
	if got := accepted.Load(); got > 4<<20 || got < 1<<20 {
		t.Errorf("the relay let the client send %d bytes to a backend that took %d: want at most its 4 MiB connection window", got, b.received.Load())
	}
}

// A header block of some MiB, legal under the 16 MiB header list limit,
// leaves no buffer of its size behind: each connection's encoding buffer
// goes back to a small one once a block is written, and blocks are written
// in frames of 16 KiB (here, 3 idle connections that each relayed 2 MiB of
// headers both ways). Before, each connection kept about 2 blocks' worth
// for as long as it lived, 3 with a client allowing large frames.
func TestHeaderBuffersReleased(t *testing.T) {
	const size = 2 << 20
	b := startRawBackend(t, 0, 65535)
	b.headerBytes = size
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{b: b.backend()}})
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range 3 {
		// A client allowing frames of up to 16 MiB still gets 16 KiB
		// ones: a Framer keeps a buffer the size of its largest frame.
		c := newH2Client(t, sock, http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1<<24 - 1})
		c.fr.SetMaxReadFrameSize(1<<24 - 1)
		var block bytes.Buffer
		enc := hpack.NewEncoder(&block)
		for _, f := range request("/t.S/Big") {
			enc.WriteField(f)
		}
		writeBigFields(enc, size)
		writeBlock(c.fr, 1, block.Bytes(), true)
		if _, tr := c.answer(1); value(tr, "grpc-status") != "0" || value(tr, "x-big-0") == "" {
			t.Fatalf("answer: %d fields", len(tr))
		}
		c.ebuf = bytes.Buffer{}
		c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil) // its buffer, not the relay's
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if grown := int64(after.HeapInuse) - int64(before.HeapInuse); grown > 4<<20 {
		t.Errorf("the heap grew by %.1f MiB after 3 connections relayed 2 MiB header blocks both ways and went idle, want under 4 MiB", float64(grown)/(1<<20))
	}
}
