package h2relay

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2/hpack"
	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// msgHeaderLen is gRPC's length prefix: a compressed flag and a big-endian
// uint32 length.
const msgHeaderLen = 5

// framing follows gRPC's length-prefixed messages through a byte stream, so
// the relay knows where messages start and how long they claim to be.
type framing struct {
	hdr  [msgHeaderLen]byte
	hn   int    // bytes of hdr seen
	left uint32 // bytes of the current message still to come
}

// next consumes p up to the end of the next complete message header and
// returns the number of bytes consumed and, if a header completed, the
// message length it announces.
func (f *framing) next(p []byte) (n int, length uint32, header bool) {
	for n < len(p) {
		if f.left > 0 {
			k := uint32(len(p) - n)
			if k > f.left {
				k = f.left
			}
			f.left -= k
			n += int(k)
			continue
		}
		f.hdr[f.hn] = p[n]
		f.hn++
		n++
		if f.hn == msgHeaderLen {
			f.hn = 0
			f.left = binary.BigEndian.Uint32(f.hdr[1:])
			return n, f.left, true
		}
	}
	return n, 0, false
}

// atBoundary reports whether no message is partly through.
func (f *framing) atBoundary() bool { return f.hn == 0 && f.left == 0 }

// check walks p and returns an error status for the first message that
// announces more than limit bytes.
func (f *framing) check(p []byte, limit int, verb string) *status.Status {
	for len(p) > 0 {
		n, length, header := f.next(p)
		p = p[n:]
		if header && limit > 0 && int64(length) > int64(limit) {
			return status.Newf(codes.ResourceExhausted, "grpc: %s message larger than max (%d vs. %d)", verb, length, limit)
		}
	}
	return nil
}

var errNotOneMessage = status.New(codes.Internal, "armorshim: a unary call must carry exactly one message")

// oneMessage reports whether body, the part of a unary call read so far,
// holds at most one message: a held call is refused at its second message
// instead of buffered on.
func oneMessage(body []byte) bool {
	if len(body) < msgHeaderLen {
		return true
	}
	return uint64(len(body)) <= msgHeaderLen+uint64(binary.BigEndian.Uint32(body[1:msgHeaderLen]))
}

// unframe returns the one message of a unary call's body, decompressed.
func unframe(body []byte, encoding string, limit int) ([]byte, *status.Status) {
	if len(body) < msgHeaderLen {
		return nil, status.New(codes.Internal, "armorshim: the call carries no message")
	}
	n := binary.BigEndian.Uint32(body[1:msgHeaderLen])
	if limit > 0 && int64(n) > int64(limit) {
		return nil, status.Newf(codes.ResourceExhausted, "grpc: received message larger than max (%d vs. %d)", n, limit)
	}
	if uint32(len(body)-msgHeaderLen) != n {
		return nil, errNotOneMessage
	}
	msg := body[msgHeaderLen:]
	if body[0] == 0 {
		return msg, nil
	}
	if encoding != "gzip" {
		return nil, status.Newf(codes.Unimplemented, "armorshim: cannot decompress a message with grpc-encoding %q", encoding)
	}
	zr, err := gzip.NewReader(bytes.NewReader(msg))
	if err != nil {
		return nil, status.Newf(codes.Internal, "armorshim: cannot decompress the message: %v", err)
	}
	var r io.Reader = zr
	if limit > 0 {
		r = io.LimitReader(zr, int64(limit)+1)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		return nil, status.Newf(codes.Internal, "armorshim: cannot decompress the message: %v", err)
	}
	if limit > 0 && len(out) > limit {
		return nil, status.Newf(codes.ResourceExhausted, "grpc: received message after decompression larger than max (%d)", limit)
	}
	return out, nil
}

// frame prefixes msg as one uncompressed gRPC message.
func frame(msg []byte) []byte {
	out := make([]byte, msgHeaderLen+len(msg))
	binary.BigEndian.PutUint32(out[1:], uint32(len(msg)))
	copy(out[msgHeaderLen:], msg)
	return out
}

// statusFields encodes st as gRPC trailers; with only, as a trailers-only
// answer that carries the response headers too.
func statusFields(st *status.Status, only bool) []hpack.HeaderField {
	var f []hpack.HeaderField
	if only {
		f = append(f, hpack.HeaderField{Name: ":status", Value: "200"},
			hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
	}
	f = append(f, hpack.HeaderField{Name: "grpc-status", Value: strconv.Itoa(int(st.Code()))})
	if m := st.Message(); m != "" {
		f = append(f, hpack.HeaderField{Name: "grpc-message", Value: encodeMessage(m)})
	}
	if p := st.Proto(); len(p.GetDetails()) > 0 {
		if b, err := proto.Marshal(p); err == nil {
			f = append(f, hpack.HeaderField{Name: "grpc-status-details-bin", Value: base64.RawStdEncoding.EncodeToString(b)})
		}
	}
	return f
}

// statusOf reads the status out of trailers (or a trailers-only answer).
func statusOf(fields []hpack.HeaderField) (*status.Status, bool) {
	var (
		code    = -1
		msg     string
		details []byte
	)
	for _, f := range fields {
		switch f.Name {
		case "grpc-status":
			if c, err := strconv.ParseUint(f.Value, 10, 32); err == nil {
				code = int(c)
			}
		case "grpc-message":
			msg = decodeMessage(f.Value)
		case "grpc-status-details-bin":
			details, _ = decodeBinary(f.Value)
		}
	}
	if code < 0 {
		return nil, false
	}
	if details != nil {
		p := &spb.Status{}
		if proto.Unmarshal(details, p) == nil && p.Code == int32(code) {
			return status.FromProto(p), true
		}
	}
	return status.New(codes.Code(code), msg), true
}

func decodeBinary(v string) ([]byte, error) {
	if len(v)%4 == 0 {
		return base64.StdEncoding.DecodeString(v)
	}
	return base64.RawStdEncoding.DecodeString(v)
}

// encodeMessage percent-encodes a grpc-message value as the gRPC spec says.
func encodeMessage(m string) string {
	var b strings.Builder
	for i := 0; i < len(m); i++ {
		c := m[i]
		if c >= ' ' && c <= '~' && c != '%' {
			b.WriteByte(c)
			continue
		}
		fmt.Fprintf(&b, "%%%02X", c)
	}
	return b.String()
}

func decodeMessage(v string) string {
	if !strings.Contains(v, "%") {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '%' && i+2 < len(v) {
			if c, err := strconv.ParseUint(v[i+1:i+3], 16, 8); err == nil {
				b.WriteByte(byte(c))
				i += 2
				continue
			}
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

// timeoutOf parses a grpc-timeout value ("100m", "5S"...).
func timeoutOf(v string) (time.Duration, bool) {
	if len(v) < 2 || len(v) > 9 {
		return 0, false
	}
	n, err := strconv.ParseInt(v[:len(v)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	unit := map[byte]time.Duration{'H': time.Hour, 'M': time.Minute, 'S': time.Second,
		'm': time.Millisecond, 'u': time.Microsecond, 'n': time.Nanosecond}[v[len(v)-1]]
	if unit == 0 {
		return 0, false
	}
	if n > int64(math.MaxInt64/unit) {
		return math.MaxInt64, true
	}
	return time.Duration(n) * unit, true
}

// encodeTimeout writes d as a grpc-timeout value: at most 8 digits, in the
// finest unit that fits, rounded up.
func encodeTimeout(d time.Duration) string {
	for _, u := range []struct {
		unit time.Duration
		name string
	}{{time.Nanosecond, "n"}, {time.Microsecond, "u"}, {time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}} {
		if n := ceilDiv(d, u.unit); n <= 99999999 {
			return strconv.FormatInt(n, 10) + u.name
		}
	}
	return strconv.FormatInt(min(ceilDiv(d, time.Hour), 99999999), 10) + "H"
}

func ceilDiv(d, unit time.Duration) int64 {
	n := int64(d / unit)
	if d%unit != 0 {
		n++
	}
	return n
}
