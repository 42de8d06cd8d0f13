package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// P7: memory under abuse. Each case is one way a local client can make an
// HTTP/2 server hold memory. It runs against armorshim in front of a fake
// runtime and against the fake runtime (a gRPC-Go server) directly, each
// time on fresh processes, and records how much each process's RSS grew:
// from VmRSS before the abuse to VmHWM once the abuse is in place and RSS
// has settled. The client is this process, over unix sockets; every case
// is bounded and ends by itself.

// abuseCase is one abuse.
type abuseCase struct {
	id, name string
	// containers is the fake node's size: a full ListContainers answer
	// takes about 1 KB per container.
	containers int
	// do performs the abuse and returns once it is in place: connections
	// it leaves open stay open until the measurement is taken.
	do func(a *attack) error
}

// Methods the cases call.
const (
	versionMethod = "/runtime.v1.RuntimeService/Version"
	listMethod    = "/runtime.v1.RuntimeService/ListContainers"
	createMethod  = "/runtime.v1.RuntimeService/CreateContainer"
)

// stallContainers makes a full ListContainers answer about 4 MB.
const stallContainers = 4000

func abuseCases(o options) []abuseCase {
	return []abuseCase{
		{id: "P7a", name: "16 MiB unknown-type frame, 64 connections", containers: 10,
			do: func(a *attack) error { return a.oversizeFrames(64, 0xee) }},
		{id: "P7b", name: "16 MiB DATA frame, 64 connections", containers: 10,
			do: func(a *attack) error { return a.oversizeFrames(64, http2.FrameData) }},
		{id: "P7c", name: "10 MB header block (4 KiB fields), 12 idle connections", containers: 10,
			do: func(a *attack) error { return a.headerBlocks(12, manyFields(10<<20, 4<<10)) }},
		{id: "P7d", name: "10 MB header field, 12 idle connections", containers: 10,
			do: func(a *attack) error { return a.headerBlocks(12, manyFields(10<<20, 10<<20)) }},
		{id: "P7e", name: "rapid reset, 4 connections for 2 s", containers: 10,
			do: func(a *attack) error { return a.rapidReset(4, 2*time.Second) }},
		{id: "P7f", name: "12 CreateContainer of 16 MiB, 15 MiB sent, never finished", containers: 10,
			do: func(a *attack) error { return a.heldCreates(12, 16<<20, 15<<20) }},
		{id: "P7g", name: "PING flood, 16 connections × 10000", containers: 10,
			do: func(a *attack) error { return a.pingFlood(16, 10000) }},
		{id: "P7h", name: fmt.Sprintf("flow-control stall, %d streams × 4 MB", o.stallStreams), containers: stallContainers,
			do: func(a *attack) error { return a.stall(o.stallStreams) }},
		{id: "P7i", name: "256 idle connections", containers: 10,
			do: func(a *attack) error { return a.idle(256) }},
		{id: "P7j", name: "5000 calls opened at once, never finished", containers: 10,
			do: func(a *attack) error { return a.openCalls(5000) }},
	}
}

// stallBackendRow is the row of the backend's growth behind armorshim in
// the flow-control stall.
const stallBackendRow = "P7hb"

// abuseRows are P7's rows: armorshim's growth against gRPC-Go's direct,
// within 1.25 × direct's + 4 MiB.
func abuseRows(o options) []*row {
	var rows []*row
	for _, c := range abuseCases(o) {
		rows = append(rows, &row{id: c.id, name: c.name + ", RSS growth", unit: "MiB", target: abuseTarget()})
	}
	return append(rows, &row{id: stallBackendRow, name: "P7h: the backend's growth (behind armorshim / direct)", unit: "MiB", target: abuseTarget()})
}

func abuseTarget() *target {
	return &target{text: "≤ 1.25×direct+4", scale: 1.25, limit: 4}
}

// benchAbuse runs P7: every case o.abuseRuns times on each path, each time
// on fresh processes, starting with another path each run.
func benchAbuse(o options, dir, self, bin string, rows *rowSet) error {
	sys, err := writeSecurityfs(filepath.Join(dir, "abuse"), 10)
	if err != nil {
		return err
	}
	procfs, err := writeProcfs(filepath.Join(dir, "abuse"), 0)
	if err != nil {
		return err
	}
	config := filepath.Join(dir, "armorshim-abuse.yaml")
	if err := writeShimConfig(config, "enforce"); err != nil {
		return err
	}
	e := &abuseEnv{dir: dir, self: self, shimArgs: func(sock, rtSock string) []string {
		return []string{bin, "serve", "--config", config, "--listen", "unix://" + sock, "--runtime-endpoint", "unix://" + rtSock,
			"--sysfs", sys, "--procfs", procfs, "--profiles-dir=", "--node-features-dir="}
	}}
	for _, c := range abuseCases(o) {
		for run := 0; run < o.abuseRuns; run++ {
			for k := 0; k < 2; k++ {
				p := []int{direct, armorshim}[(run+k)%2]
				fmt.Fprintf(os.Stderr, "run %d/%d: %s %s via %s ...\n", run+1, o.abuseRuns, c.id, c.name, pathNames[p])
				front, back, err := e.once(c, p, run)
				if err != nil {
					return fmt.Errorf("%s via %s: %w", c.id, pathNames[p], err)
				}
				rows.byID[c.id].vals[p] = append(rows.byID[c.id].vals[p], front)
				if c.id == "P7h" {
					rows.byID[stallBackendRow].vals[p] = append(rows.byID[stallBackendRow].vals[p], back)
				}
			}
		}
	}
	return nil
}

// abuseEnv starts the processes of P7.
type abuseEnv struct {
	dir, self string
	shimArgs  func(sock, rtSock string) []string
	n         int // processes started, to name their sockets and logs
}

// once runs c once on path p against fresh processes and returns the RSS
// growth, in MiB, of the process the client talks to and of the backend.
func (e *abuseEnv) once(c abuseCase, p, run int) (front, back float64, err error) {
	e.n++
	name := fmt.Sprintf("p7-%d", e.n)
	rtSock := filepath.Join(e.dir, name+"-rt.sock")
	rt, err := start(e.dir, name+"-runtime", e.self, "fake-runtime", "--listen", rtSock, "--containers", strconv.Itoa(c.containers))
	if err != nil {
		return 0, 0, err
	}
	defer rt.stop()
	if _, err := waitServing(rtSock, time.Now(), 60*time.Second); err != nil {
		return 0, 0, fmt.Errorf("fake runtime: %w (log %s)", err, rt.log)
	}
	sock, procs := rtSock, []*child{rt}
	if p == armorshim {
		sock = filepath.Join(e.dir, name+"-shim.sock")
		shim, err := start(e.dir, name+"-armorshim", e.shimArgs(sock, rtSock)...)
		if err != nil {
			return 0, 0, err
		}
		defer shim.stop()
		if _, err := waitServing(sock, time.Now(), 10*time.Second); err != nil {
			return 0, 0, fmt.Errorf("armorshim: %w (log %s)", err, shim.log)
		}
		procs = []*child{shim, rt}
	}
	base := make([]float64, len(procs))
	for i, c := range procs {
		if base[i], err = c.procStatus("VmRSS"); err != nil {
			return 0, 0, err
		}
		if err := c.resetPeakRSS(); err != nil {
			return 0, 0, fmt.Errorf("reset peak RSS: %w", err)
		}
	}
	a := &attack{sock: sock}
	defer a.close()
	if err := c.do(a); err != nil {
		return 0, 0, err
	}
	settle(procs, 20*time.Second)
	growth := make([]float64, len(procs))
	for i, c := range procs {
		hwm, err := c.procStatus("VmHWM")
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %w (log %s)", c.name, err, c.log)
		}
		growth[i] = hwm - base[i]
		fmt.Fprintf(os.Stderr, "  %s: VmRSS %.1f MiB before, VmHWM %.1f MiB after: +%.1f MiB\n", c.name, base[i], hwm, growth[i])
	}
	return growth[0], growth[len(growth)-1], nil
}

// settle waits until the RSS of none of procs moved by more than 256 KiB
// over half a second, or for at most limit.
func settle(procs []*child, limit time.Duration) {
	const polls = 5
	var hist [][]float64
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var now []float64
		for _, c := range procs {
			v, _ := c.procStatus("VmRSS")
			now = append(now, v)
		}
		hist = append(hist, now)
		if len(hist) <= polls {
			continue
		}
		still := true
		for i := range procs {
			lo, hi := minMax(column(hist[len(hist)-polls-1:], i))
			still = still && hi-lo <= 0.25
		}
		if still {
			return
		}
	}
}

func column(rows [][]float64, i int) []float64 {
	out := make([]float64, len(rows))
	for k, r := range rows {
		out[k] = r[i]
	}
	return out
}

// attack is one abuse's client connections, closed once it is measured.
type attack struct {
	sock  string
	mu    sync.Mutex
	conns []*h2c
}

func (a *attack) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, h := range a.conns {
		h.conn.Close()
	}
	a.conns = nil
}

// dial opens an HTTP/2 connection: the preface and SETTINGS with settings.
func (a *attack) dial(settings ...http2.Setting) (*h2c, error) {
	c, err := net.Dial("unix", a.sock)
	if err != nil {
		return nil, err
	}
	h := &h2c{conn: c, bw: bufio.NewWriterSize(c, 64<<10), connWin: 65535, initWin: 65535,
		win: map[uint32]int64{}, ended: map[uint32]bool{}, acked: map[uint64]bool{}}
	h.cond = sync.NewCond(&h.mu)
	h.fr = http2.NewFramer(h.bw, c)
	h.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	h.enc = hpack.NewEncoder(&h.ebuf)
	a.mu.Lock()
	a.conns = append(a.conns, h)
	a.mu.Unlock()
	if err := h.write(func(fr *http2.Framer) error {
		h.bw.WriteString(http2.ClientPreface)
		return fr.WriteSettings(settings...)
	}); err != nil {
		return nil, err
	}
	go h.read()
	return h, nil
}

// h2c is an HTTP/2 client connection written frame by frame. It never
// grants window: what it is sent is bounded by the protocol's 64 KiB
// windows.
type h2c struct {
	conn net.Conn
	bw   *bufio.Writer
	fr   *http2.Framer
	wmu  sync.Mutex // writes
	enc  *hpack.Encoder
	ebuf bytes.Buffer

	mu      sync.Mutex
	cond    *sync.Cond
	connWin int64            // what the peer lets us send
	initWin int64            // each new stream's send window
	win     map[uint32]int64 // by stream
	ended   map[uint32]bool  // streams the peer ended or reset
	acked   map[uint64]bool  // our pings it acknowledged
	pings   uint64
	closed  bool // read failed, or GOAWAY
}

// write runs f on the framer and flushes, within 10 s.
func (h *h2c) write(f func(fr *http2.Framer) error) error {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	h.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := f(h.fr); err != nil {
		return err
	}
	return h.bw.Flush()
}

func (h *h2c) read() {
	for {
		f, err := h.fr.ReadFrame()
		var reply func(fr *http2.Framer) error
		h.mu.Lock()
		if err != nil && !errors.As(err, new(http2.StreamError)) {
			h.closed = true
			h.cond.Broadcast()
			h.mu.Unlock()
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
					for id := range h.win {
						h.win[id] += int64(v) - h.initWin
					}
					h.initWin = int64(v)
				}
				reply = func(fr *http2.Framer) error { return fr.WriteSettingsAck() }
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				h.connWin += int64(f.Increment)
			} else {
				h.win[f.StreamID] += int64(f.Increment)
			}
		case *http2.DataFrame:
			if f.StreamEnded() {
				h.ended[f.StreamID] = true
			}
		case *http2.MetaHeadersFrame:
			if f.StreamEnded() {
				h.ended[f.StreamID] = true
			}
		case *http2.RSTStreamFrame:
			h.ended[f.StreamID] = true
		case *http2.GoAwayFrame:
			h.closed = true
		case *http2.PingFrame:
			if f.IsAck() {
				h.acked[binary.BigEndian.Uint64(f.Data[:])] = true
			} else {
				data := f.Data
				reply = func(fr *http2.Framer) error { return fr.WritePing(true, data) }
			}
		}
		h.cond.Broadcast()
		h.mu.Unlock()
		if reply != nil {
			h.write(reply)
		}
	}
}

// wait waits until ok (called with h.mu held) or for at most d, and
// reports ok.
func (h *h2c) wait(d time.Duration, ok func() bool) bool {
	t := time.AfterFunc(d, func() {
		h.mu.Lock()
		h.cond.Broadcast()
		h.mu.Unlock()
	})
	defer t.Stop()
	deadline := time.Now().Add(d)
	h.mu.Lock()
	defer h.mu.Unlock()
	for !ok() {
		if !time.Now().Before(deadline) {
			return false
		}
		h.cond.Wait()
	}
	return true
}

// block encodes fields with the connection's encoder.
func (h *h2c) block(fields []hpack.HeaderField) []byte {
	h.wmu.Lock()
	defer h.wmu.Unlock()
	h.ebuf.Reset()
	for _, f := range fields {
		h.enc.WriteField(f)
	}
	return append([]byte(nil), h.ebuf.Bytes()...)
}

// headers writes a header block as HEADERS and CONTINUATION frames of at
// most 16 KiB.
func (h *h2c) headers(id uint32, block []byte, end bool) error {
	h.mu.Lock()
	h.win[id] = h.initWin
	h.mu.Unlock()
	return h.write(func(fr *http2.Framer) error { return writeBlock(fr, id, block, end) })
}

func writeBlock(fr *http2.Framer, id uint32, block []byte, end bool) error {
	for first := true; first || len(block) > 0; first = false {
		n := min(len(block), 16<<10)
		var err error
		if first {
			err = fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block[:n], EndStream: end, EndHeaders: n == len(block)})
		} else {
			err = fr.WriteContinuation(id, n == len(block), block[:n])
		}
		if err != nil {
			return err
		}
		block = block[n:]
	}
	return nil
}

// send writes p on stream id within the windows the peer gives, and
// reports whether all of it went: it stops when the stream or the
// connection ends, or when no window comes for 3 s.
func (h *h2c) send(id uint32, p []byte, end bool) (bool, error) {
	for first := true; first || len(p) > 0; first = false {
		var n int64
		if !h.wait(3*time.Second, func() bool {
			n = min(int64(len(p)), h.connWin, h.win[id], 16<<10)
			return h.closed || h.ended[id] || n > 0 || len(p) == 0
		}) {
			return false, nil
		}
		h.mu.Lock()
		stop := h.closed || h.ended[id]
		if !stop {
			h.connWin -= n
			h.win[id] -= n
		}
		h.mu.Unlock()
		if stop {
			return false, nil
		}
		chunk := p[:n]
		p = p[n:]
		if err := h.write(func(fr *http2.Framer) error { return fr.WriteData(id, end && len(p) == 0, chunk) }); err != nil {
			return false, err
		}
	}
	return true, nil
}

// ping sends a ping and waits up to 10 s for its acknowledgement: the peer
// has read every frame sent before it.
func (h *h2c) ping() error {
	h.mu.Lock()
	h.pings++
	n := h.pings
	h.mu.Unlock()
	var data [8]byte
	binary.BigEndian.PutUint64(data[:], n)
	if err := h.write(func(fr *http2.Framer) error { return fr.WritePing(false, data) }); err != nil {
		return err
	}
	if !h.wait(10*time.Second, func() bool { return h.acked[n] || h.closed }) {
		return errors.New("no acknowledgement of a ping within 10 s")
	}
	return nil
}

func (h *h2c) isClosed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed
}

// request is a gRPC request's header block for method.
func request(method string, extra ...hpack.HeaderField) []hpack.HeaderField {
	return append([]hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: method}, {Name: ":authority", Value: "localhost"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	}, extra...)
}

// emptyMessage is a gRPC message of 0 bytes (an empty request).
var emptyMessage = make([]byte, 5)

// oversizeFrames opens conns connections and sends on each a frame of
// type typ announcing 16 MiB − 1 bytes, over the 16 KiB both servers
// advertise, then its payload as far as the server reads it; a DATA frame
// goes on a Version call. Both answer FRAME_SIZE_ERROR and close (RFC 9113
// §4.2); what they read of it before is what is measured.
func (a *attack) oversizeFrames(conns int, typ http2.FrameType) error {
	const size = 1<<24 - 1
	payload := make([]byte, 256<<10)
	for range conns {
		h, err := a.dial()
		if err != nil {
			return err
		}
		var id uint32
		if typ == http2.FrameData {
			id = 1
			if err := h.headers(id, h.block(request(versionMethod)), false); err != nil {
				return err
			}
		}
		var hdr [9]byte
		hdr[0], hdr[1], hdr[2], hdr[3] = size>>16, size>>8&0xff, size&0xff, byte(typ)
		binary.BigEndian.PutUint32(hdr[5:], id)
		if err := h.write(func(*http2.Framer) error { _, err := h.bw.Write(hdr[:]); return err }); err != nil {
			continue
		}
		for left := size; left > 0; left -= len(payload) {
			p := payload[:min(left, len(payload))]
			if h.write(func(*http2.Framer) error { _, err := h.bw.Write(p); return err }) != nil {
				break // closed by the server
			}
		}
		h.wait(2*time.Second, func() bool { return h.closed })
	}
	return nil
}

// manyFields returns header fields of printable text, size bytes in all,
// each of at most fieldSize bytes.
func manyFields(size, fieldSize int) []hpack.HeaderField {
	const chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:;= "
	r := rand.New(rand.NewPCG(7, 7))
	var out []hpack.HeaderField
	for i := 0; size > 0; i++ {
		name := fmt.Sprintf("x-abuse-%d", i)
		n := min(size, fieldSize) - len(name)
		var b strings.Builder
		b.Grow(n)
		for range n {
			b.WriteByte(chars[r.IntN(len(chars))])
		}
		out = append(out, hpack.HeaderField{Name: name, Value: b.String()})
		size -= len(name) + n
	}
	return out
}

// headerBlocks sends, on each of conns connections, a Version call whose
// header block carries fields (legal up to the 16 MiB header list both
// servers advertise), waits for its answer and leaves the connection idle.
func (a *attack) headerBlocks(conns int, fields []hpack.HeaderField) error {
	var block []byte
	for range conns {
		h, err := a.dial()
		if err != nil {
			return err
		}
		if block == nil { // a new connection's encoder encodes it the same
			block = h.block(request(versionMethod, fields...))
		}
		if err := h.headers(1, block, false); err != nil {
			return err
		}
		if _, err := h.send(1, emptyMessage, true); err != nil {
			return err
		}
		if !h.wait(30*time.Second, func() bool { return h.ended[1] || h.closed }) {
			return errors.New("a call with a large header block got no answer within 30 s")
		}
	}
	return nil
}

// rapidReset opens Version calls and resets each at once (CVE-2023-44487)
// on conns connections for d, in batches of 100, opening a new connection
// when the server closes one.
func (a *attack) rapidReset(conns int, d time.Duration) error {
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				h, err := a.dial()
				if err != nil {
					errs <- err
					return
				}
				for id := uint32(1); time.Now().Before(deadline) && !h.isClosed() && id < 1<<30; {
					err := h.write(func(fr *http2.Framer) error {
						for range 100 {
							h.ebuf.Reset()
							for _, f := range request(versionMethod) {
								h.enc.WriteField(f)
							}
							fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.ebuf.Bytes(), EndHeaders: true})
							fr.WriteRSTStream(id, http2.ErrCodeCancel)
							id += 2
						}
						return nil
					})
					if err != nil {
						break
					}
				}
				h.conn.Close()
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// heldCreates opens, on each of conns connections at once, a
// CreateContainer call whose message announces size bytes, sends send
// bytes of it as the windows allow and never finishes it.
func (a *attack) heldCreates(conns, size, send int) error {
	msg := make([]byte, 5+send)
	binary.BigEndian.PutUint32(msg[1:], uint32(size))
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for range conns {
		h, err := a.dial()
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.headers(1, h.block(request(createMethod)), false); err != nil {
				errs <- err
				return
			}
			if _, err := h.send(1, msg, false); err != nil {
				errs <- err
				return
			}
			if !h.isClosed() {
				errs <- h.ping()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// pingFlood sends pings pings at once on each of conns connections, with
// no call open, and waits up to 5 s for the server to close it.
func (a *attack) pingFlood(conns, pings int) error {
	for range conns {
		h, err := a.dial()
		if err != nil {
			return err
		}
		h.write(func(fr *http2.Framer) error {
			for i := range pings {
				var data [8]byte
				binary.BigEndian.PutUint64(data[:], uint64(1<<32+i))
				if err := fr.WritePing(false, data); err != nil {
					return err
				}
			}
			return nil
		})
		h.wait(5*time.Second, func() bool { return h.closed })
	}
	return nil
}

// stall opens streams full ListContainers calls on one connection and
// never grants window: each answer is about 4 MB, of which the client
// takes 64 KiB in all.
func (a *attack) stall(streams int) error {
	h, err := a.dial()
	if err != nil {
		return err
	}
	for i := range streams {
		id := uint32(2*i + 1)
		if err := h.headers(id, h.block(request(listMethod)), false); err != nil {
			return err
		}
		if err := h.write(func(fr *http2.Framer) error { return fr.WriteData(id, true, emptyMessage) }); err != nil {
			return err
		}
	}
	return h.ping()
}

// idle opens conns connections that complete the handshake and then send
// nothing.
func (a *attack) idle(conns int) error {
	for range conns {
		h, err := a.dial()
		if err != nil {
			return err
		}
		if err := h.ping(); err != nil {
			return err
		}
	}
	return nil
}

// openCalls opens calls Version calls on one connection, in batches of
// 100, and never sends their request: a server with no
// SETTINGS_MAX_CONCURRENT_STREAMS runs a handler for each.
func (a *attack) openCalls(calls int) error {
	h, err := a.dial()
	if err != nil {
		return err
	}
	for id := uint32(1); id < uint32(2*calls); {
		err := h.write(func(fr *http2.Framer) error {
			for i := 0; i < 100 && id < uint32(2*calls); i++ {
				h.ebuf.Reset()
				for _, f := range request(versionMethod) {
					h.enc.WriteField(f)
				}
				if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: h.ebuf.Bytes(), EndHeaders: true}); err != nil {
					return err
				}
				id += 2
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return h.ping()
}
