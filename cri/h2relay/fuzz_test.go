package h2relay_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/armorshim/armorshim/cri/h2relay"
)

// fuzzRelay is one relay (and backend) shared by every fuzz input.
var fuzzRelay struct {
	once sync.Once
	sock string
	conn *grpc.ClientConn
}

func startFuzzRelay(t *testing.T) {
	fuzzRelay.once.Do(func() {
		dir, err := os.MkdirTemp("", "h2f")
		if err != nil {
			t.Fatal(err)
		}
		backend := filepath.Join(dir, "b.sock")
		srv := grpc.NewServer(grpc.ForceServerCodecV2(rawCodec{}), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			m, _ := grpc.MethodFromServerStream(ss)
			return echo(m, ss)
		}))
		l, err := net.Listen("unix", backend)
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(l)
		h := &hooks{b: &h2relay.Backend{Name: "runtime", Dial: func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", backend)
		}}, inspect: map[string]h2relay.Inspector{
			"/t.S/Refuse": func(context.Context, []byte) h2relay.Verdict {
				return h2relay.Verdict{Status: status.New(codes.FailedPrecondition, "Blocked: no")}
			},
			"/t.S/Vet": func(_ context.Context, req []byte) h2relay.Verdict {
				return h2relay.Verdict{Request: append([]byte("x"), req...), Response: func(_ context.Context, resp []byte, st *status.Status) *status.Status {
					if len(resp)%2 == 1 {
						return status.New(codes.FailedPrecondition, "Blocked: odd")
					}
					return nil
				}}
			},
		}}
		r := h2relay.New(h2relay.Config{Hooks: h, MaxMessageSize: 1 << 16, StreamWindow: 16 << 10, ConnWindow: 64 << 10})
		fuzzRelay.sock = filepath.Join(dir, "r.sock")
		rl, err := net.Listen("unix", fuzzRelay.sock)
		if err != nil {
			t.Fatal(err)
		}
		go r.Serve(rl)
		// Not dial: its cleanup would close the connection after the
		// first input.
		fuzzRelay.conn, err = grpc.NewClient("unix://"+fuzzRelay.sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})))
		if err != nil {
			t.Fatal(err)
		}
	})
}

var fuzzMethods = []string{"/t.S/Echo", "/t.S/Refuse", "/t.S/Vet", "/t.S/Missing"}

// FuzzClientFrames sends the relay a client's frames built from ops (4
// bytes each: kind, stream, flags, size) and then checks that the relay
// still relays a call on a new connection: no input may crash or wedge it.
func FuzzClientFrames(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 1, 0, 4, 10})                        // a call: HEADERS, DATA with END_STREAM
	f.Add([]byte{0, 1, 1, 0, 1, 1, 4, 3, 0, 2, 2, 0, 1, 2, 4, 9}) // refused and vetted calls
	f.Add([]byte{0, 0, 8, 0, 1, 0, 2, 200, 2, 0, 8, 0})           // CONTINUATION, padded data, a reset
	f.Add([]byte{4, 0, 0, 0, 0, 3, 0, 0, 1, 3, 0, 255, 3, 0, 1, 9, 5, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		startFuzzRelay(t)
		// An input that wedges the test (or the relay it waits on) fails
		// with every goroutine's stack.
		wd := time.AfterFunc(30*time.Second, func() {
			buf := make([]byte, 1<<20)
			panic("input still running after 30s\n" + string(buf[:runtime.Stack(buf, true)]))
		})
		defer wd.Stop()
		c, err := net.Dial("unix", fuzzRelay.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		go func() { // drain whatever the relay answers
			buf := make([]byte, 32<<10)
			for {
				if _, err := c.Read(buf); err != nil {
					return
				}
			}
		}()
		fr := http2.NewFramer(c, nil)
		var hbuf bytes.Buffer
		enc := hpack.NewEncoder(&hbuf)
		c.Write([]byte(http2.ClientPreface))
		fr.WriteSettings()
		for len(ops) >= 4 {
			kind, s, flags, size := ops[0]%8, uint32(ops[1]%6), ops[2], int(ops[3])
			ops = ops[4:]
			id := 2*s + 1
			switch kind {
			case 0: // HEADERS, maybe split, maybe ending the stream
				hbuf.Reset()
				for _, hf := range request(fuzzMethods[flags%4]) {
					enc.WriteField(hf)
				}
				block := hbuf.Bytes()
				if flags&8 != 0 && len(block) > 2 {
					fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:2], EndStream: flags&4 != 0})
					fr.WriteContinuation(id, true, block[2:])
				} else {
					fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: flags&4 != 0, EndHeaders: true})
				}
			case 1: // DATA: a message of size bytes (or a bare prefix), maybe padded
				msg := make([]byte, 5+size*(1+int(flags>>4)))
				binary.BigEndian.PutUint32(msg[1:], uint32(len(msg)-5))
				if flags&1 != 0 {
					msg = msg[:min(len(msg), 1+int(flags>>5))] // a cut prefix
				}
				if flags&2 != 0 {
					fr.WriteDataPadded(id, flags&4 != 0, msg, make([]byte, size%40))
				} else {
					fr.WriteData(id, flags&4 != 0, msg)
				}
			case 2:
				fr.WriteRSTStream(id, http2.ErrCode(flags%14))
			case 3:
				if flags&1 != 0 {
					id = 0
				}
				fr.WriteWindowUpdate(id, uint32(size)*1000+1)
			case 4:
				fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(size) * 512},
					http2.Setting{ID: http2.SettingHeaderTableSize, Val: uint32(flags) * 16})
			case 5:
				fr.WritePing(flags&1 != 0, [8]byte{flags})
			case 6:
				fr.WriteRawFrame(http2.FrameType(10+flags%5), http2.Flags(flags), id, make([]byte, size%64))
			case 7:
				fr.WritePriority(id, http2.PriorityParam{StreamDep: uint32(flags), Weight: byte(size)})
			}
		}
		time.Sleep(5 * time.Millisecond)
		c.Close()

		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		out := new(raw)
		if err := fuzzRelay.conn.Invoke(ctx, "/t.S/Echo", &raw{[]byte("alive")}, out); err != nil || string(out.b) != "alive" {
			t.Fatalf("the relay no longer relays after the input: %v %q", err, out.b)
		}
	})
}
