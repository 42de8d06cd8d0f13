package h2relay_test

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/armorshim/armorshim/cri/h2relay"
)

// headerBackend is an HTTP/2 server written frame by frame that hands every
// request header block to onHeaders, on the connection's goroutine.
type headerBackend struct {
	sock string
	// onHeaders answers a request; enc encodes into buf for the
	// connection.
	onHeaders func(fr *http2.Framer, enc *hpack.Encoder, buf *bytes.Buffer, f *http2.MetaHeadersFrame)
	// forget, if set, makes it read each header block with a new decoder,
	// so that the buffer HPACK's decoder keeps is not counted in the
	// test's heap (a connection then carries one request).
	forget bool
}

func startHeaderBackend(t *testing.T, b *headerBackend) *h2relay.Backend {
	b.sock = filepath.Join(sockDir(t), "headers.sock")
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
	return &h2relay.Backend{Name: "runtime", Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", b.sock)
	}}
}

func (b *headerBackend) serve(c net.Conn) {
	defer c.Close()
	if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
		return
	}
	fr := http2.NewFramer(c, c)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	fr.WriteSettings()
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
		case *http2.PingFrame:
			if !f.IsAck() {
				fr.WritePing(true, f.Data)
			}
		case *http2.MetaHeadersFrame:
			b.onHeaders(fr, enc, &buf, f)
			if b.forget {
				fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
			}
		}
	}
}

// headerValueOf returns n bytes of printable text that differ with seed.
func headerValueOf(seed uint64, n int) string {
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:;= "
	r := rand.New(rand.NewPCG(seed, 1))
	b := make([]byte, n)
	for i := range b {
		b[i] = chars[r.IntN(len(chars))]
	}
	return string(b)
}

// neverIndexed encodes fields as literals never indexed: the block is the
// same bytes whoever decodes it, and its encoder keeps no table.
func neverIndexed(fields ...hpack.HeaderField) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	for _, f := range fields {
		f.Sensitive = true
		enc.WriteField(f)
	}
	return buf.Bytes()
}

// decodeInFrames decodes block as a Framer does, a 16 KiB frame at a time,
// and returns the decoder, with what it keeps.
func decodeInFrames(t *testing.T, block []byte) *hpack.Decoder {
	d := hpack.NewDecoder(4096, func(hpack.HeaderField) {})
	for len(block) > 0 {
		n := min(len(block), 16<<10)
		if _, err := d.Write(block[:n]); err != nil {
			t.Fatal(err)
		}
		block = block[n:]
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	return d
}

// liveHeap returns the bytes of live heap objects, after collecting twice
// (the second empties sync.Pools).
func liveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

// A header block costs the relay what decoding it costs, and nothing more
// once it is relayed: here a 4 MiB field each way on 2 connections that then
// stay idle. Decoding keeps HPACK's buffer for a field split across frames,
// as it does in gRPC-Go; the relay writes a large field piece by piece, so
// no encoding buffer of its size is made or kept. Before, each connection
// kept another buffer of the field's encoded size per direction (HPACK's
// encoder keeps the one it encoded the field into).
func TestHeaderBlockCostsItsDecoding(t *testing.T) {
	const size, conns = 4 << 20, 2
	val := headerValueOf(1, size)
	req := neverIndexed(append(request("/t.S/Big"), hpack.HeaderField{Name: "x-big", Value: val})...)
	answer := neverIndexed(hpack.HeaderField{Name: ":status", Value: "200"},
		hpack.HeaderField{Name: "content-type", Value: "application/grpc"},
		hpack.HeaderField{Name: "grpc-status", Value: "0"}, hpack.HeaderField{Name: "x-echo", Value: val})
	got := make(chan bool, conns)
	b := startHeaderBackend(t, &headerBackend{forget: true,
		onHeaders: func(fr *http2.Framer, _ *hpack.Encoder, _ *bytes.Buffer, f *http2.MetaHeadersFrame) {
			got <- f.PseudoValue("path") == "/t.S/Big" && value(f.Fields, "x-big") == val
			writeBlock(fr, f.StreamID, answer, true)
		}})
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{b: b}})

	before := liveHeap()
	var decoders []*hpack.Decoder
	for range conns {
		decoders = append(decoders, decodeInFrames(t, req), decodeInFrames(t, answer))
	}
	decoding := liveHeap() - before
	runtime.KeepAlive(decoders)
	decoders = nil

	before = liveHeap()
	for range conns {
		c := newH2Client(t, sock)
		writeBlock(c.fr, 1, req, true)
		if !<-got {
			t.Fatal("the backend got the request without its field")
		}
		_, tr := c.answer(1)
		if value(tr, "grpc-status") != "0" || value(tr, "x-echo") != val {
			t.Fatalf("answer: %d fields, grpc-status %q", len(tr), value(tr, "grpc-status"))
		}
		c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil) // its buffer, not the relay's
	}
	grown := liveHeap() - before
	t.Logf("decoding the blocks keeps %.1f MiB; relaying them, %.1f MiB", float64(decoding)/(1<<20), float64(grown)/(1<<20))
	if grown > decoding+conns<<20 {
		t.Errorf("%d idle connections that relayed a %d MiB field each way keep %.1f MiB, want at most what decoding the blocks keeps (%.1f MiB) + 1 MiB each",
			conns, size>>20, float64(grown)/(1<<20), float64(decoding)/(1<<20))
	}
}

// field is a header field as it arrived, with its HPACK representation's
// never-indexed flag.
type field struct {
	value     string
	sensitive bool
}

func fieldsOf(fs []hpack.HeaderField) map[string]field {
	m := map[string]field{}
	for _, f := range fs {
		m[f.Name] = field{f.Value, f.Sensitive}
	}
	return m
}

// Header fields larger than 16 KiB arrive whole and byte for byte, both
// ways, and are sent as literals never indexed (RFC 7541 §6.2.3), written
// piece by piece; smaller fields keep their representation (a never-indexed
// one stays so). A block whose first field is large still carries a
// pending dynamic table size update first (RFC 7541 §4.2): here the client
// lowers its table between an answer's headers and its trailers. gRPC-Go
// reads them on both ends. Before, large fields went out as literals
// without indexing, encoded whole.
func TestLargeHeaderFieldsRelayed(t *testing.T) {
	large := map[string]string{
		"x-large-20k":                      headerValueOf(2, 20<<10),
		"x-large-1m":                       headerValueOf(3, 1<<20),
		"x-" + strings.Repeat("n", 20<<10): "a long name",
	}
	small := map[string]string{"x-small": headerValueOf(4, 100), "x-16k": headerValueOf(5, 16<<10-len("x-16k"))}
	var extra []hpack.HeaderField
	for _, m := range []map[string]string{large, small} {
		for k, v := range m {
			extra = append(extra, hpack.HeaderField{Name: k, Value: v})
		}
	}
	extra = append(extra, hpack.HeaderField{Name: "x-secret", Value: "s3cret", Sensitive: true})

	check := func(where string, got map[string]field) {
		t.Helper()
		for k, v := range large {
			if f, ok := got[k]; !ok || f.value != v || !f.sensitive {
				t.Errorf("%s: field %.20s… (%d bytes): arrived %v, equal %v, never indexed %v, want all true", where, k, len(k)+len(v), ok, f.value == v, f.sensitive)
			}
		}
		for k, v := range small {
			if f := got[k]; f.value != v || f.sensitive {
				t.Errorf("%s: field %s: equal %v, never indexed %v; want equal, not never indexed", where, k, f.value == v, f.sensitive)
			}
		}
		if f := got["x-secret"]; f.value != "s3cret" || !f.sensitive {
			t.Errorf("%s: never-indexed x-secret arrived as %+v", where, f)
		}
	}

	// Both ways, through an HPACK decoder on each end.
	var mu sync.Mutex
	var atBackend map[string]field
	headersSent, trailersDue := make(chan struct{}), make(chan struct{})
	b := startHeaderBackend(t, &headerBackend{
		onHeaders: func(fr *http2.Framer, enc *hpack.Encoder, buf *bytes.Buffer, f *http2.MetaHeadersFrame) {
			mu.Lock()
			atBackend = fieldsOf(f.Fields)
			mu.Unlock()
			buf.Reset()
			enc.WriteField(hpack.HeaderField{Name: ":status", Value: "200"})
			enc.WriteField(hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
			writeBlock(fr, f.StreamID, buf.Bytes(), false)
			close(headersSent)
			<-trailersDue
			buf.Reset()
			enc.WriteField(hpack.HeaderField{Name: "x-large-20k", Value: large["x-large-20k"]}) // first
			for _, f := range extra {
				if f.Name != "x-large-20k" {
					enc.WriteField(f)
				}
			}
			enc.WriteField(hpack.HeaderField{Name: "grpc-status", Value: "0"})
			writeBlock(fr, f.StreamID, buf.Bytes(), true)
		}})
	_, _, sock := relay(t, h2relay.Config{Hooks: &hooks{b: b}})
	c := newH2Client(t, sock)
	writeBlock(c.fr, 1, c.block(request("/t.S/Large", extra...)...), true)
	for got := false; !got; {
		f, err := c.fr.ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		c.connFrame(f)
		_, got = f.(*http2.MetaHeadersFrame)
	}
	<-headersSent
	c.fr.WriteSettings(http2.Setting{ID: http2.SettingHeaderTableSize, Val: 0})
	c.fr.ReadMetaHeaders.SetAllowedMaxDynamicTableSize(0)
	c.ping() // the relay applied the setting
	close(trailersDue)
	_, tr := c.answer(1)
	mu.Lock()
	check("at the backend", atBackend)
	mu.Unlock()
	check("at the client", fieldsOf(tr))
	if value(tr, "grpc-status") != "0" {
		t.Errorf("trailers: grpc-status %q", value(tr, "grpc-status"))
	}

	// gRPC-Go on both ends: metadata in the request, the answer's headers
	// and its trailers.
	bin := string(pattern(6, 64<<10))
	srv := startServer(t, func(_ string, ss grpc.ServerStream) error {
		md, _ := metadata.FromIncomingContext(ss.Context())
		ss.SendHeader(metadata.Pairs("x-large", md.Get("x-large")[0]))
		ss.SetTrailer(metadata.Pairs("x-large-bin", md.Get("x-large-bin")[0]))
		return echo("", ss)
	})
	_, conn, _ := relay(t, h2relay.Config{Hooks: &hooks{b: srv.backend()}})
	ctx := metadata.AppendToOutgoingContext(ctxTimeout(t, 10*time.Second), "x-large", large["x-large-1m"], "x-large-bin", bin)
	var hdr, trl metadata.MD
	if err := conn.Invoke(ctx, "/t.S/Echo", &raw{[]byte("x")}, new(raw), grpc.Header(&hdr), grpc.Trailer(&trl)); err != nil {
		t.Fatal(err)
	}
	if got := hdr.Get("x-large"); len(got) != 1 || got[0] != large["x-large-1m"] {
		t.Errorf("gRPC-Go: x-large in the answer's headers: %d values", len(got))
	}
	if got := trl.Get("x-large-bin"); len(got) != 1 || got[0] != bin {
		t.Errorf("gRPC-Go: x-large-bin in the trailers: %d values", len(got))
	}
}
