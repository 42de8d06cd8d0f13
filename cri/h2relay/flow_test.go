package h2relay_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
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
			if b.answer > 0 {
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
