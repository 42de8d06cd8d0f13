package h2relay

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// maxHeaderListSize is the largest header list accepted from either side,
// gRPC-Go's default.
const maxHeaderListSize = 16 << 20

// maxFrameSize is the largest frame the relay reads from either side: the
// SETTINGS_MAX_FRAME_SIZE it advertises to both, which it leaves at the
// protocol's default (RFC 9113 §4.2: a receiver enforces the size it
// advertised; gRPC-Go's transport reads no more either). A larger frame is
// a FRAME_SIZE_ERROR and is never read into memory.
const maxFrameSize = 1 << 14

// writeTimeout bounds each write to a peer. A peer's HTTP/2 reader drains
// its socket whatever its application does, so a write blocks this long
// only on a peer that is stuck; the connection is then closed.
const writeTimeout = 15 * time.Second

// deadlineConn sets the write deadline before every write.
type deadlineConn struct{ net.Conn }

func (c deadlineConn) Write(p []byte) (int, error) {
	c.SetWriteDeadline(time.Now().Add(writeTimeout))
	return c.Conn.Write(p)
}

// bufSize is the read and write buffer of every connection.
const bufSize = 32 << 10

// side is one HTTP/2 connection of a session: the client's, or one to a
// backend. All of it is guarded by the session's mutex.
type side struct {
	conn net.Conn
	br   *bufio.Reader
	bw   *bufio.Writer
	fr   *http2.Framer
	enc  *hpack.Encoder
	ebuf bytes.Buffer

	// What the peer allows us to send.
	maxFrame uint32
	initWin  int64 // each new stream's send window
	sendWin  int64 // the connection's send window

	// What we allow the peer to send: each stream's first window (the
	// protocol's default, or streamWin if smaller), the window a stream
	// may grow to, the connection's window; what the peer may still send
	// on the connection, and the credit we owe it back.
	firstWin           int64
	streamWin, connWin int64
	recvWin            int64
	owed               int64

	// blocked holds the streams with data for this side that wait for its
	// connection window.
	blocked map[*stream]struct{}
	dirty   bool
	sent    bool    // headers or data were written (see pingAllowed)
	failed  bool    // ended with a connection error: read no more of it
	hdr     [9]byte // writeData's frame header
}

func newSide(conn net.Conn, streamWin, connWin int32) *side {
	connWin = max(connWin, 65535) // a connection window only grows
	sd := &side{
		conn:      conn,
		br:        bufio.NewReaderSize(conn, bufSize),
		bw:        bufio.NewWriterSize(deadlineConn{conn}, bufSize),
		maxFrame:  1 << 14, // the protocol default
		initWin:   65535,
		sendWin:   65535,
		firstWin:  min(int64(streamWin), 65535),
		streamWin: int64(streamWin),
		connWin:   int64(connWin),
		recvWin:   int64(connWin),
		blocked:   map[*stream]struct{}{},
	}
	sd.fr = http2.NewFramer(sd.bw, sd.br)
	sd.fr.SetMaxReadFrameSize(maxFrameSize)
	sd.fr.SetReuseFrames()
	sd.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	sd.fr.MaxHeaderListSize = maxHeaderListSize
	sd.enc = hpack.NewEncoder(&sd.ebuf)
	return sd
}

// hello writes the settings and the connection window this side gets. A
// stream starts with the protocol's window and grows as what it sends is
// forwarded (creditStream); only a smaller window is announced.
func (sd *side) hello(settings ...http2.Setting) {
	if sd.firstWin < 65535 {
		settings = append(settings, http2.Setting{ID: http2.SettingInitialWindowSize, Val: uint32(sd.firstWin)})
	}
	sd.fr.WriteSettings(settings...)
	if d := sd.connWin - 65535; d > 0 {
		sd.fr.WriteWindowUpdate(0, uint32(d))
	}
	sd.dirty = true
}

// settings applies the peer's settings; it returns the change of the
// initial stream window, to apply to open streams, or false for settings
// out of range (the connection is then failed).
func (sd *side) settings(f *http2.SettingsFrame, lastID uint32) (delta int64, ok bool) {
	if err := f.ForeachSetting(func(s http2.Setting) error { return s.Valid() }); err != nil {
		code := http2.ErrCodeProtocol
		if ce, isConn := err.(http2.ConnectionError); isConn {
			code = http2.ErrCode(ce)
		}
		sd.fail(lastID, code, "invalid settings")
		return 0, false
	}
	f.ForeachSetting(func(s http2.Setting) error {
		switch s.ID {
		case http2.SettingMaxFrameSize:
			sd.maxFrame = s.Val
		case http2.SettingInitialWindowSize:
			delta += int64(s.Val) - sd.initWin
			sd.initWin = int64(s.Val)
		case http2.SettingHeaderTableSize:
			sd.enc.SetMaxDynamicTableSizeLimit(s.Val)
		}
		return nil
	})
	sd.fr.WriteSettingsAck()
	sd.dirty = true
	return delta, true
}

// keptHeaderBuf is the largest header encoding buffer a connection keeps
// between header blocks: gRPC's are a few hundred bytes.
const keptHeaderBuf = 16 << 10

// largeField is the size (name and value) above which a header field is
// written as a literal never indexed (RFC 7541 §6.2.3), piece by piece,
// instead of through HPACK's encoder: the encoder encodes a field whole into
// a buffer it keeps for as long as the connection lives, and a field may be
// as large as the 16 MiB header list.
const largeField = 16 << 10

// writeHeaders writes a header block frame by frame, HEADERS then
// CONTINUATION (RFC 9113 §6.2, §6.10), each frame carrying at most 16 KiB of
// the block whatever larger size the peer allows, so that no buffer, the
// Framer's included, grows past about a frame and a field of largeField.
func (sd *side) writeHeaders(id uint32, fields []hpack.HeaderField, end bool) {
	hw := headerWriter{sd: sd, id: id, end: end, first: true, frame: min(int(sd.maxFrame), maxFrameSize)}
	sd.ebuf.Reset()
	for i, f := range fields {
		if len(f.Name)+len(f.Value) <= largeField {
			sd.enc.WriteField(f)
			hw.emitFull()
			continue
		}
		if i == 0 {
			// A dynamic table size update the peer's SETTINGS made due
			// must open the block (RFC 7541 §4.2); the encoder writes it
			// before its next field. Have it write one, a static entry of
			// one byte, and keep only the update.
			sd.enc.WriteField(hpack.HeaderField{Name: ":method", Value: "GET"})
			sd.ebuf.Truncate(sd.ebuf.Len() - 1)
		}
		hw.literal(f)
	}
	hw.emit(sd.ebuf.Next(sd.ebuf.Len()), true)
	if sd.ebuf.Cap() > keptHeaderBuf {
		sd.ebuf = bytes.Buffer{} // the encoder writes to &sd.ebuf
	}
	sd.dirty, sd.sent = true, true
}

// headerWriter writes a header block as it is encoded into its side's
// ebuf: a frame goes out once more than a frame's worth is buffered, so
// that the last one, marked END_HEADERS, is never empty unless the block
// is.
type headerWriter struct {
	sd    *side
	id    uint32
	end   bool // END_STREAM
	first bool // HEADERS is still to be written
	frame int  // bytes of the block per frame
}

// emitFull writes the whole frames of what is buffered but the last.
func (hw *headerWriter) emitFull() {
	for hw.sd.ebuf.Len() > hw.frame {
		hw.emit(hw.sd.ebuf.Next(hw.frame), false)
	}
}

func (hw *headerWriter) emit(chunk []byte, last bool) {
	if hw.first {
		hw.sd.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: hw.id, BlockFragment: chunk, EndStream: hw.end, EndHeaders: last})
		hw.first = false
	} else {
		hw.sd.fr.WriteContinuation(hw.id, last, chunk)
	}
}

// literal writes f as a literal never indexed with a new name, both
// strings raw (RFC 7541 §6.2.3, §5.2): unlike Huffman's, their length is
// known without encoding them, so they go out a frame at a time.
func (hw *headerWriter) literal(f hpack.HeaderField) {
	hw.sd.ebuf.WriteByte(0x10)
	hw.str(f.Name)
	hw.str(f.Value)
}

func (hw *headerWriter) str(s string) {
	var n [10]byte
	hw.sd.ebuf.Write(appendVarInt(n[:0], 7, uint64(len(s))))
	for len(s) > 0 {
		k := min(len(s), max(hw.frame+1-hw.sd.ebuf.Len(), 1))
		hw.sd.ebuf.WriteString(s[:k])
		s = s[k:]
		hw.emitFull()
	}
}

// appendVarInt appends i as an HPACK integer with an n-bit prefix (RFC
// 7541 §5.1), the prefix's other bits left 0.
func appendVarInt(dst []byte, n byte, i uint64) []byte {
	k := uint64(1)<<n - 1
	if i < k {
		return append(dst, byte(i))
	}
	dst = append(dst, byte(k))
	for i -= k; i >= 128; i >>= 7 {
		dst = append(dst, byte(0x80|i&0x7f))
	}
	return append(dst, byte(i))
}

// credit returns n bytes of connection window to the peer, in updates of
// at least a quarter of the window.
func (sd *side) credit(n int64) {
	sd.owed += n
	if sd.owed >= sd.connWin/4 {
		sd.fr.WriteWindowUpdate(0, uint32(sd.owed))
		sd.recvWin += sd.owed
		sd.owed = 0
		sd.dirty = true
	}
}

// received accounts for a DATA frame of n bytes. Its connection credit is
// returned once the bytes are forwarded or dropped (credit), so that what
// the relay buffers for a connection stays within the window it
// advertised. A peer that sends more than its window is cut off
// (FLOW_CONTROL_ERROR).
func (sd *side) received(n int64, lastID uint32) bool {
	sd.recvWin -= n
	if sd.recvWin < 0 {
		sd.fail(lastID, http2.ErrCodeFlowControl, "data beyond the flow-control window")
		return false
	}
	return true
}

// connectionError returns the error code of a connection error that
// Framer.ReadFrame reported, for the GOAWAY telling the peer why.
func connectionError(err error) (http2.ErrCode, bool) {
	var ce http2.ConnectionError
	switch {
	case errors.As(err, &ce):
		return http2.ErrCode(ce), true
	case errors.Is(err, http2.ErrFrameTooLarge):
		return http2.ErrCodeFrameSize, true
	}
	return 0, false
}

// fail ends the connection with a connection error; its reader cleans up.
func (sd *side) fail(lastID uint32, code http2.ErrCode, why string) {
	sd.failed = true
	sd.fr.WriteGoAway(lastID, code, []byte(why))
	sd.dirty = true
	sd.flush()
	sd.conn.Close()
}

// windowUpdate adds a peer's WINDOW_UPDATE increment to a send window; a
// window past 2^31-1 is a flow-control error.
func windowUpdate(win *int64, inc uint32) bool {
	*win += int64(inc)
	return *win <= 1<<31-1
}

// writeData writes a DATA frame straight into the buffered writer (the
// Framer would copy the payload once more, into its own frame buffer).
func (sd *side) writeData(id uint32, end bool, p []byte) {
	h := &sd.hdr
	h[0], h[1], h[2] = byte(len(p)>>16), byte(len(p)>>8), byte(len(p))
	h[3] = byte(http2.FrameData)
	h[4] = 0
	if end {
		h[4] = byte(http2.FlagDataEndStream)
	}
	binary.BigEndian.PutUint32(h[5:], id)
	sd.bw.Write(h[:])
	sd.bw.Write(p)
	sd.dirty, sd.sent = true, true
}

func (sd *side) reset(id uint32, code http2.ErrCode) {
	sd.fr.WriteRSTStream(id, code)
	sd.dirty = true
}

// flush writes out what is buffered; a failed write closes the connection,
// and its reader cleans up.
func (sd *side) flush() {
	if !sd.dirty {
		return
	}
	sd.dirty = false
	if err := sd.bw.Flush(); err != nil {
		sd.conn.Close()
	}
}
