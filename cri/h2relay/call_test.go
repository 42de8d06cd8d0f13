package h2relay_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/armorshim/armorshim/cri/h2relay"
)

// A held call's Response function calls the backend on the connection that
// answered it: answers of any size within the window and the message limit,
// failures, deadlines and a lost backend come back as a gRPC client's would.
func TestCall(t *testing.T) {
	big := pattern(3, 200<<10) // more than a stream's first window
	entered := make(chan struct{}, 1)
	cancelled := make(chan struct{}, 1)
	srv := startServer(t, func(method string, ss grpc.ServerStream) error {
		m := new(raw)
		if err := ss.RecvMsg(m); err != nil {
			return err
		}
		switch method {
		case "/t.S/Big":
			return ss.SendMsg(&raw{big})
		case "/t.S/Huge":
			return ss.SendMsg(&raw{make([]byte, 2<<20)})
		case "/t.S/Fail":
			return status.Error(codes.NotFound, "no such container")
		case "/t.S/Slow":
			<-ss.Context().Done()
			cancelled <- struct{}{}
			return ss.Context().Err()
		case "/t.S/Hang":
			entered <- struct{}{}
			<-ss.Context().Done()
			return nil
		}
		return ss.SendMsg(m) // echo, and the held call's own answer
	})
	type result struct {
		resp []byte
		code codes.Code
		ok   bool
	}
	var mu sync.Mutex
	results := map[string]result{}
	h := &hooks{inspect: map[string]h2relay.Inspector{
		"/t.S/Held": func(_ context.Context, req []byte) h2relay.Verdict {
			return h2relay.Verdict{Response: func(ctx context.Context, resp []byte, st *status.Status) *status.Status {
				if string(req) == "Slow" {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, 100*time.Millisecond)
					defer cancel()
				}
				out, cst, ok := h2relay.Call(ctx, "/t.S/"+string(req), []byte("ask "+string(req)))
				r := result{resp: out, ok: ok}
				if ok {
					r.code = cst.Code()
				}
				mu.Lock()
				results[string(req)] = r
				mu.Unlock()
				return nil
			}}
		},
	}}
	h.b = srv.backend()
	_, conn, _ := relay(t, h2relay.Config{Hooks: h, MaxMessageSize: 1 << 20})
	ctx := ctxTimeout(t, 20*time.Second)
	call := func(what string) result {
		t.Helper()
		var resp raw
		if err := conn.Invoke(ctx, "/t.S/Held", &raw{[]byte(what)}, &resp); err != nil {
			t.Fatalf("%s: the held call: %v", what, err)
		}
		if string(resp.b) != what {
			t.Errorf("%s: the held call answered %q", what, resp.b)
		}
		mu.Lock()
		defer mu.Unlock()
		return results[what]
	}

	if r := call("Echo"); !r.ok || r.code != codes.OK || string(r.resp) != "ask Echo" {
		t.Errorf("Echo: %q %v ok=%v", r.resp, r.code, r.ok)
	}
	if r := call("Big"); !r.ok || r.code != codes.OK || !bytes.Equal(r.resp, big) {
		t.Errorf("Big: %d bytes %v ok=%v", len(r.resp), r.code, r.ok)
	}
	if r := call("Fail"); !r.ok || r.code != codes.NotFound || r.resp != nil {
		t.Errorf("Fail: %q %v ok=%v", r.resp, r.code, r.ok)
	}
	if r := call("Huge"); !r.ok || r.code != codes.ResourceExhausted {
		t.Errorf("Huge: %v ok=%v", r.code, r.ok)
	}
	if r := call("Slow"); !r.ok || r.code != codes.DeadlineExceeded {
		t.Errorf("Slow: %v ok=%v", r.code, r.ok)
	}
	select {
	case <-cancelled: // the backend was told to stop
	case <-time.After(5 * time.Second):
		t.Error("Slow: the backend's call was not cancelled")
	}
	// The connection goes on after all of them.
	var resp raw
	if err := conn.Invoke(ctx, "/t.S/Echo", &raw{[]byte("plain")}, &resp); err != nil || string(resp.b) != "plain" {
		t.Errorf("a relayed call after: %q %v", resp.b, err)
	}

	// The backend goes away with the call in flight.
	done := make(chan error, 1)
	go func() {
		done <- conn.Invoke(ctx, "/t.S/Held", &raw{[]byte("Hang")}, new(raw))
	}()
	select {
	case <-entered:
	case err := <-done:
		t.Fatalf("Hang: ended before the backend had it: %v", err)
	}
	srv.stop()
	if err := <-done; err != nil && status.Code(err) != codes.Unavailable {
		t.Errorf("Hang: the held call: %v", err)
	}
	mu.Lock()
	r := results["Hang"]
	mu.Unlock()
	if !r.ok || r.code != codes.Unavailable {
		t.Errorf("Hang: %v ok=%v", r.code, r.ok)
	}

	// Outside a Response function there is no connection to call on.
	if _, _, ok := h2relay.Call(ctx, "/t.S/Echo", nil); ok {
		t.Error("Call outside a Response function made a call")
	}
}

// A backend's GOAWAY that leaves the relay's own call unprocessed ends it
// with Unavailable; the held call it vets is answered.
func TestCallGoAway(t *testing.T) {
	sock := filepath.Join(sockDir(t), "raw.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
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
		var buf bytes.Buffer
		enc := hpack.NewEncoder(&buf)
		block := func(fields ...hpack.HeaderField) []byte {
			buf.Reset()
			for _, f := range fields {
				enc.WriteField(f)
			}
			return append([]byte(nil), buf.Bytes()...)
		}
		for {
			f, err := fr.ReadFrame()
			if err != nil {
				return
			}
			switch f := f.(type) {
			case *http2.SettingsFrame:
				if !f.IsAck() {
					fr.WriteSettingsAck()
				}
			case *http2.DataFrame:
				if !f.StreamEnded() {
					continue
				}
				if f.StreamID == 1 { // the held call: answered
					fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, BlockFragment: block(
						hpack.HeaderField{Name: ":status", Value: "200"}, hpack.HeaderField{Name: "content-type", Value: "application/grpc"})})
					fr.WriteData(1, false, []byte{0, 0, 0, 0, 2, 'o', 'k'})
					fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, EndHeaders: true, EndStream: true, BlockFragment: block(
						hpack.HeaderField{Name: "grpc-status", Value: "0"})})
					continue
				}
				fr.WriteGoAway(1, http2.ErrCodeNo, nil) // the relay's own call: not processed
			}
		}
	}()
	b := &h2relay.Backend{Name: "runtime", Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}
	got := make(chan *status.Status, 1)
	h := &hooks{b: b, inspect: map[string]h2relay.Inspector{
		"/t.S/Held": func(context.Context, []byte) h2relay.Verdict {
			return h2relay.Verdict{Response: func(ctx context.Context, _ []byte, _ *status.Status) *status.Status {
				_, st, ok := h2relay.Call(ctx, "/t.S/Status", []byte("x"))
				if !ok {
					st = status.New(codes.OK, "no call made")
				}
				got <- st
				return nil
			}}
		},
	}}
	_, conn, _ := relay(t, h2relay.Config{Hooks: h})
	var resp raw
	if err := conn.Invoke(ctxTimeout(t, 5*time.Second), "/t.S/Held", &raw{[]byte("x")}, &resp); err != nil || string(resp.b) != "ok" {
		t.Errorf("held call: %q %v", resp.b, err)
	}
	if st := <-got; st.Code() != codes.Unavailable {
		t.Errorf("Call: %v, want Unavailable", st)
	}
}
