package h2relay

import (
	"context"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// pipe is one direction of a stream: bytes read from one side, on their way
// to the other under its flow control.
type pipe struct {
	queue    []byte // read, not yet written
	buf      []byte // the storage queue reuses once the first bytes wait
	end      bool   // END_STREAM follows the queue
	trailers []hpack.HeaderField
	win      int64 // the stream's send window on the writing side
	size     int64 // the stream window given to the reading side's peer
	owed     int64 // stream credit owed to the reading side
	grow     int64 // growth of size not yet given
	recvd    int64 // bytes read not yet given back as stream credit
	closedIn bool  // the reading side ended the stream
	credited bool  // the queue was credited when it was read
	framing  framing
}

// receive accounts for n bytes read on p; false if the peer sent beyond the
// stream window, which would let a stream make the relay queue without
// bound. A window below the protocol's default is only known to the peer
// once it read our SETTINGS: until then it may fill the default.
func (p *pipe) receive(n int64) bool {
	p.recvd += n
	return p.recvd <= max(p.size, 65535)
}

func ptr[T any](v T) *T { return &v }

// closedHow says how a client's stream closed, for the frames that still
// come on it (RFC 9113 §5.1, "closed").
type closedHow uint8

const (
	// closedUnknown: not remembered, or never opened.
	closedUnknown closedHow = iota
	// closedByRelay: the relay reset it (or refused it, or ignored it
	// after its GOAWAY): what the client sent before it knew is ignored.
	closedByRelay
	// closedByClient: the client reset it; any frame after is a stream
	// error STREAM_CLOSED.
	closedByClient
	// closedEnded: both sides ended it with END_STREAM; a DATA or HEADERS
	// frame after is a connection error STREAM_CLOSED.
	closedEnded
)

// closedMemory is how many of a connection's last closed streams are
// remembered.
const closedMemory = 256

// closedStreams remembers how a connection's last closedMemory streams
// closed.
type closedStreams struct {
	ids  [closedMemory]uint32
	how  [closedMemory]closedHow
	next int
}

func (c *closedStreams) add(id uint32, how closedHow) {
	c.ids[c.next], c.how[c.next] = id, how
	c.next = (c.next + 1) % closedMemory
}

// lookup is only for frames on streams no longer open: rare.
func (c *closedStreams) lookup(id uint32) closedHow {
	for i, v := range c.ids {
		if v == id {
			return c.how[i]
		}
	}
	return closedUnknown
}

// queueBufs keeps the storage of pipes whose streams ended: a big answer
// waiting for the client's window would otherwise allocate all it queues.
var queueBufs = sync.Pool{New: func() any { return new([]byte) }}

// maxPooledQueue bounds the storage put back in queueBufs.
const maxPooledQueue = 4 << 20

// enqueue copies data to the end of the queue.
func (p *pipe) enqueue(data []byte) {
	if p.buf == nil {
		p.buf = (*queueBufs.Get().(*[]byte))[:0]
	}
	if len(p.queue) == 0 {
		p.queue = p.buf[:0]
	}
	if cap(p.queue)-len(p.queue) < len(data) {
		n := len(p.queue) + len(data)
		if n > cap(p.buf) {
			p.buf = make([]byte, 0, max(2*cap(p.buf), n, 32<<10))
		}
		p.queue = p.buf[:copy(p.buf[:cap(p.buf)], p.queue)]
	}
	p.queue = append(p.queue, data...)
}

// release gives the pipe's storage back; the pipe is not used again.
func (p *pipe) release() {
	p.queue = nil
	if p.buf != nil && cap(p.buf) <= maxPooledQueue {
		b := p.buf[:0]
		queueBufs.Put(&b)
	}
	p.buf = nil
}

// stream is one call: the client's stream and its stream on a backend.
type stream struct {
	id      uint32 // the client's stream ID
	legID   uint32 // its ID on the backend connection; 0 before it is opened
	method  string
	start   time.Time
	backend *Backend
	leg     *leg

	up   pipe // client to backend
	down pipe // backend to client

	legOpen    bool // HEADERS went to the backend
	legEnded   bool // the backend ended its side (END_STREAM or RST_STREAM)
	gotHeaders bool // the backend's response headers arrived
	sentHeader bool // response headers went to the client
	resetByCli bool // the client reset it
	code       codes.Code

	// A held call.
	inspect  Inspector
	fields   []hpack.HeaderField // the request headers
	body     []byte              // the request, as read
	encoding string
	ctx      context.Context
	cancel   context.CancelFunc
	vet      func(ctx context.Context, resp []byte, st *status.Status) *status.Status
	held     heldResponse
	// heldBytes is what the request takes of the relay's budget of held
	// bytes (Relay.held): from the moment its length is known, all of it.
	heldBytes int64
	hooking   bool // its Inspector runs, and may still read body
}

// heldResponse is a backend's answer kept back until it is vetted.
type heldResponse struct {
	fields   []hpack.HeaderField
	body     []byte
	trailers []hpack.HeaderField
}

// codeOfReset is the status code a gRPC client reports for RST_STREAM
// (gRPC's HTTP/2 mapping).
func codeOfReset(c http2.ErrCode) codes.Code {
	switch c {
	case http2.ErrCodeRefusedStream:
		return codes.Unavailable
	case http2.ErrCodeCancel:
		return codes.Canceled
	case http2.ErrCodeEnhanceYourCalm, http2.ErrCodeFlowControl:
		return codes.ResourceExhausted
	case http2.ErrCodeInadequateSecurity:
		return codes.PermissionDenied
	}
	return codes.Internal
}

func codeOf(fields []hpack.HeaderField) codes.Code {
	if st, ok := statusOf(fields); ok {
		return st.Code()
	}
	return codes.Unknown
}

// setHeader replaces the value of a field that is present.
func setHeader(fields []hpack.HeaderField, name, value string) {
	for i := range fields {
		if fields[i].Name == name {
			fields[i].Value = value
		}
	}
}

func headerValue(fields []hpack.HeaderField, name string) string {
	for _, f := range fields {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}
