package h2relay

import (
	"context"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Call makes a unary call of the relay's own on the backend connection that
// answered a held call: ctx is the one a Verdict's Response function was
// given. It writes the request on the goroutine that calls it and is
// answered by the connection's reader, without a gRPC client's goroutines
// in between. It returns the response message (decompressed, without
// gRPC's length prefix) and the call's status; the message is nil unless
// the status is OK.
//
// ok is false when it made no call: ctx is not a Response function's, or
// that connection takes no new call now (it is going away or lost, or its
// windows have no room for the request, which must fit one frame). The
// caller then uses a connection of its own.
//
// The call is a stream of the connection's like the relayed calls, with the
// next stream ID, but no client's: its response is kept whole (at most
// Config.MaxMessageSize) and its data credited back as it is read. It ends
// with ctx (RST_STREAM CANCEL), with the connection (Unavailable) or when
// the backend's GOAWAY leaves it unprocessed (Unavailable).
func Call(ctx context.Context, method string, req []byte) (resp []byte, st *status.Status, ok bool) {
	c, _ := ctx.Value(callerKey{}).(*caller)
	if c == nil {
		return nil, nil, false
	}
	s, l := c.s, c.l
	body := frame(req)
	n := int64(len(body))
	s.mu.Lock()
	if s.closed || !l.usable() || n > l.sendWin || n > l.initWin || n > int64(l.maxFrame) {
		s.mu.Unlock()
		return nil, nil, false
	}
	id := l.nextID
	l.nextID += 2
	ic := &internalCall{done: make(chan struct{})}
	l.calls[id] = ic
	fields := []hpack.HeaderField{
		{Name: ":method", Value: "POST"}, {Name: ":scheme", Value: "http"},
		{Name: ":path", Value: method}, {Name: ":authority", Value: "localhost"},
		{Name: "content-type", Value: "application/grpc"}, {Name: "te", Value: "trailers"},
	}
	if dl, has := ctx.Deadline(); has {
		fields = append(fields, hpack.HeaderField{Name: "grpc-timeout", Value: encodeTimeout(max(time.Until(dl), time.Nanosecond))})
	}
	l.writeHeaders(id, fields, false)
	l.writeData(id, true, body)
	l.sendWin -= n
	l.flush()
	s.mu.Unlock()

	select {
	case <-ic.done:
	case <-ctx.Done():
		s.mu.Lock()
		if l.calls[id] == ic {
			l.reset(id, http2.ErrCodeCancel)
			s.endCall(l, id, status.FromContextError(ctx.Err()))
			l.flush()
		}
		s.mu.Unlock()
		<-ic.done
	}
	if ic.err != nil {
		if dl, has := ctx.Deadline(); has && ic.err.Code() == codes.Canceled && !dl.After(time.Now()) {
			// The backend reset the call as its deadline passed, before
			// ctx did: as a gRPC client reports it.
			return nil, status.New(codes.DeadlineExceeded, "context deadline exceeded"), true
		}
		return nil, ic.err, true
	}
	end := ic.trailers
	if end == nil { // trailers-only
		end = ic.fields
	}
	sst, has := statusOf(end)
	if !has {
		return nil, status.Newf(codes.Unknown, "armorshim: the %s's answer has no grpc-status", l.b.Name), true
	}
	if sst.Code() != codes.OK {
		return nil, sst, true
	}
	msg, ust := unframe(ic.body, headerValue(ic.fields, "grpc-encoding"), s.r.cfg.MaxMessageSize)
	if ust != nil {
		return nil, ust, true
	}
	if msg == nil {
		return nil, status.Newf(codes.Internal, "armorshim: the %s answered a unary call with no message", l.b.Name), true
	}
	return msg, sst, true
}

// callerKey keys the caller in a Response function's context.
type callerKey struct{}

// caller is where Call sends: the connection that answered a held call.
type caller struct {
	s *session
	l *leg
}

// internalCall is a call of the relay's own in flight (Call).
type internalCall struct {
	fields, trailers []hpack.HeaderField
	body             []byte
	err              *status.Status // ended without a complete answer
	done             chan struct{}  // closed when it ends
}

// endCall ends an internal call (s.mu held); err is nil for a complete
// answer.
func (s *session) endCall(l *leg, id uint32, err *status.Status) {
	ic := l.calls[id]
	delete(l.calls, id)
	ic.err = err
	close(ic.done)
	if l.idle() && !l.usable() {
		l.conn.Close()
	}
}

// callFrame handles a frame on a stream of an internal call; it reports
// whether f was one's.
func (s *session) callFrame(l *leg, f http2.Frame) bool {
	id := f.Header().StreamID
	ic := l.calls[id]
	if ic == nil {
		return false
	}
	bad := func(format string, a ...any) {
		l.reset(id, http2.ErrCodeProtocol)
		s.endCall(l, id, status.Newf(codes.Internal, "armorshim: the %s "+format, append([]any{l.b.Name}, a...)...))
	}
	switch f := f.(type) {
	case *http2.DataFrame:
		n := int64(f.Length)
		if !l.received(n, 0) {
			return true // the connection is failed: legLost ends the call
		}
		l.credit(n)
		if ic.fields == nil {
			bad("sent data before headers")
			return true
		}
		ic.body = append(ic.body, f.Data()...)
		if limit := s.r.cfg.MaxMessageSize; limit > 0 && len(ic.body) > msgHeaderLen+limit {
			l.reset(id, http2.ErrCodeCancel)
			s.endCall(l, id, status.Newf(codes.ResourceExhausted, "armorshim: the %s's answer is larger than the largest message (%d bytes)", l.b.Name, limit))
			return true
		}
		if f.StreamEnded() {
			bad("ended a call without trailers")
			return true
		}
		if n > 0 {
			l.fr.WriteWindowUpdate(id, uint32(n))
			l.dirty = true
		}
	case *http2.MetaHeadersFrame:
		switch {
		case f.Truncated:
			l.reset(id, http2.ErrCodeCancel)
			s.endCall(l, id, status.Newf(codes.Internal, "armorshim: the %s sent headers over %d bytes", l.b.Name, maxHeaderListSize))
		case ic.fields == nil:
			ic.fields = append([]hpack.HeaderField(nil), f.Fields...)
			if f.StreamEnded() {
				s.endCall(l, id, nil)
			}
		case !f.StreamEnded():
			bad("sent a second header block")
		default:
			ic.trailers = append([]hpack.HeaderField(nil), f.Fields...)
			s.endCall(l, id, nil)
		}
	case *http2.RSTStreamFrame:
		s.endCall(l, id, status.Newf(codeOfReset(f.ErrCode), "armorshim: the %s reset the call: %v", l.b.Name, f.ErrCode))
	default:
		// WINDOW_UPDATE: the request is already sent whole, and the
		// connection's handling ignores it; the others are its to judge.
		return false
	}
	return true
}

// endCalls ends the internal calls of a lost connection, or those its GOAWAY
// left unprocessed (IDs above last).
func (s *session) endCalls(l *leg, last uint32, why string) {
	for id := range l.calls {
		if id > last {
			s.endCall(l, id, status.Newf(codes.Unavailable, "armorshim: %s", why))
		}
	}
}
