package h2relay

import (
	"context"
	"errors"
	"fmt"
	"io"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"
)

// maxLegStreamID is where a backend connection's stream IDs run out; the
// next call gets a new connection.
const maxLegStreamID = 1<<31 - 1

// leg is a session's connection to one backend.
type leg struct {
	*side
	b         *Backend
	streams   map[uint32]*stream // by the leg's stream ID
	nextID    uint32
	goingAway bool // GOAWAY received: no new streams
	dead      bool
	// calls are the relay's own calls on the connection (Call), by
	// stream ID.
	calls map[uint32]*internalCall
}

func (l *leg) usable() bool { return !l.goingAway && !l.dead && l.nextID < maxLegStreamID }

// idle reports whether no call, relayed or the relay's own, uses the
// connection.
func (l *leg) idle() bool { return len(l.streams) == 0 && len(l.calls) == 0 }

// dial opens a connection to b for the session and starts reading it
// (s.mu held).
func (s *session) dial(b *Backend) (*leg, error) {
	if s.closed {
		return nil, errors.New("connection closed")
	}
	c, err := b.dial()
	if err != nil {
		return nil, err
	}
	s.connsMu.Lock()
	if s.connsClosed { // Close ran during the dial
		s.connsMu.Unlock()
		c.Close()
		return nil, errors.New("connection closed")
	}
	s.conns[c] = struct{}{}
	s.connsMu.Unlock()
	l := &leg{side: newSide(c, s.r.cfg.StreamWindow, s.r.cfg.ConnWindow), b: b, streams: map[uint32]*stream{}, calls: map[uint32]*internalCall{}, nextID: 1}
	l.bw.WriteString(http2.ClientPreface)
	l.hello(http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize})
	if old := s.legs[b]; old != nil && old.idle() {
		old.conn.Close()
	}
	s.legs[b] = l
	s.live[l] = struct{}{}
	go s.serveLeg(l)
	return l, nil
}

func (s *session) serveLeg(l *leg) {
	for {
		f, err := l.fr.ReadFrame()
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if st := l.streams[se.StreamID]; st != nil {
					st.legEnded = true
					l.reset(se.StreamID, se.Code)
					s.answer(st, status.Newf(codes.Internal, "armorshim: bad answer from the %s: %v", l.b.Name, err))
				}
				s.flush()
				s.mu.Unlock()
				continue
			}
			if code, ok := connectionError(err); ok {
				l.fail(0, code, err.Error()) // the backend opens no streams
			}
			s.legLost(l, err)
			s.flush()
			s.mu.Unlock()
			return
		}
		s.legFrame(l, f)
		if l.failed {
			s.legLost(l, errors.New("protocol error"))
			s.flush()
			s.mu.Unlock()
			return
		}
		if l.br.Buffered() == 0 {
			s.flush()
		}
		s.mu.Unlock()
	}
}

func (s *session) legFrame(l *leg, f http2.Frame) {
	if len(l.calls) > 0 && f.Header().StreamID != 0 && s.callFrame(l, f) {
		return
	}
	switch f := f.(type) {
	case *http2.DataFrame:
		s.legData(l, f)
	case *http2.MetaHeadersFrame:
		s.legHeaders(l, f)
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			if !windowUpdate(&l.sendWin, f.Increment) {
				l.fail(0, http2.ErrCodeFlowControl, "window overflow")
				return
			}
			for st := range l.blocked {
				delete(l.blocked, st)
				s.pumpUp(st)
			}
		} else if st := l.streams[f.StreamID]; st != nil {
			if !windowUpdate(&st.up.win, f.Increment) {
				l.reset(f.StreamID, http2.ErrCodeFlowControl)
				st.legEnded = true
				s.answer(st, status.Newf(codes.Internal, "armorshim: flow-control window overflow from the %s", l.b.Name))
				return
			}
			s.pumpUp(st)
		}
	case *http2.RSTStreamFrame:
		if st := l.streams[f.StreamID]; st != nil {
			st.legEnded = true
			if st.down.closedIn {
				return // the answer is complete; the backend only stops the request
			}
			st.down.closedIn = true
			code := f.ErrCode
			if code == http2.ErrCodeNo {
				code = http2.ErrCodeInternal
			}
			s.close(st, codeOfReset(code), &code)
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return
		}
		if d, ok := l.settings(f, 0); ok && d != 0 {
			for _, st := range l.streams {
				st.up.win += d
				s.pumpUp(st)
			}
		}
	case *http2.PingFrame:
		if !f.IsAck() {
			l.fr.WritePing(true, f.Data)
			l.dirty = true
		}
	case *http2.GoAwayFrame:
		l.goingAway = true
		for id, st := range l.streams {
			if id > f.LastStreamID && !st.sentHeader { // never processed
				// REFUSED_STREAM: gRPC retries the call on a new connection.
				st.legEnded = true
				s.close(st, codes.Unavailable, ptr(http2.ErrCodeRefusedStream))
			}
		}
		s.endCalls(l, f.LastStreamID, "the "+l.b.Name+" went away before the call was processed")
		if l.idle() {
			l.conn.Close()
		}
	case *http2.PushPromiseFrame:
		l.conn.Close() // refused in our settings: a protocol error
	}
}

func (s *session) legHeaders(l *leg, f *http2.MetaHeadersFrame) {
	st := l.streams[f.StreamID]
	if st == nil {
		return // a call already ended
	}
	end := f.StreamEnded()
	if end {
		st.legEnded = true
		st.down.closedIn = true
	}
	if f.Truncated {
		s.answer(st, status.Newf(codes.Internal, "armorshim: the %s sent headers over %d bytes", l.b.Name, maxHeaderListSize))
		return
	}
	fields := f.Fields
	if !st.gotHeaders {
		st.gotHeaders = true
		if st.vet != nil {
			st.held.fields = append(st.held.fields[:0:0], fields...)
			if end {
				s.vetAnswer(st)
			}
			return
		}
		if end { // trailers-only
			st.code = codeOf(fields)
			s.cli.writeHeaders(st.id, fields, true)
			s.close(st, st.code, nil)
			return
		}
		st.sentHeader = true
		s.cli.writeHeaders(st.id, fields, false)
		return
	}
	if !end {
		st.legEnded = true
		l.reset(f.StreamID, http2.ErrCodeProtocol)
		s.answer(st, status.Newf(codes.Internal, "armorshim: the %s sent a second header block", l.b.Name))
		return
	}
	st.code = codeOf(fields)
	if st.vet != nil {
		st.held.trailers = append(st.held.trailers[:0:0], fields...)
		s.vetAnswer(st)
		return
	}
	st.down.trailers = append(st.down.trailers[:0:0], fields...)
	st.down.end = true
	s.pumpDown(st)
}

func (s *session) legData(l *leg, f *http2.DataFrame) {
	n := int64(f.Length)
	if !l.received(n, 0) {
		return
	}
	data := f.Data()
	st := l.streams[f.StreamID]
	if st == nil || st.down.closedIn {
		l.credit(n)
		return
	}
	if !st.down.receive(n) {
		l.credit(n)
		l.reset(f.StreamID, http2.ErrCodeFlowControl)
		st.legEnded = true
		s.answer(st, status.Newf(codes.Internal, "armorshim: the %s sent beyond the flow-control window", l.b.Name))
		return
	}
	if pad := n - int64(len(data)); pad > 0 {
		l.credit(pad)
		s.creditStream(l.side, st, &st.down, pad)
	}
	end := f.StreamEnded()
	if end {
		st.legEnded = true
		st.down.closedIn = true
	}
	if sst := st.down.framing.check(data, s.r.cfg.MaxMessageSize, "received"); sst != nil {
		l.credit(int64(len(data)))
		s.answer(st, sst)
		return
	}
	if st.vet != nil {
		l.credit(int64(len(data)))
		st.held.body = append(st.held.body, data...)
		if !oneMessage(st.held.body) {
			s.answer(st, status.Newf(codes.Internal, "armorshim: the %s answered a unary call with more than one message", l.b.Name))
			return
		}
		s.creditStream(l.side, st, &st.down, int64(len(data)))
		if end {
			s.vetAnswer(st)
		}
		return
	}
	s.forward(st, &st.down, data, end, s.pumpDown)
}

// vetAnswer gives a held answer to the call's vetting function, then sends
// it, or what the function answers instead, to the client.
func (s *session) vetAnswer(st *stream) {
	h := st.held
	st.held = heldResponse{}
	vet := st.vet
	st.vet = nil
	end := h.fields
	if h.trailers != nil {
		end = h.trailers
	}
	sst, ok := statusOf(end)
	if !ok {
		sst = status.New(codes.Unknown, "armorshim: the answer has no grpc-status")
	}
	var msg []byte
	if len(h.body) > 0 {
		msg, _ = unframe(h.body, headerValue(h.fields, "grpc-encoding"), s.r.cfg.MaxMessageSize)
	}
	ctx := context.WithValue(st.ctx, callerKey{}, &caller{s, st.leg})
	s.r.runHook(func() {
		repl := vet(ctx, msg, sst)
		s.mu.Lock()
		defer s.mu.Unlock()
		defer s.flush()
		if s.streams[st.id] != st {
			return
		}
		if repl != nil {
			s.answer(st, repl)
			return
		}
		st.code = sst.Code()
		if h.trailers == nil { // trailers-only
			s.cli.writeHeaders(st.id, h.fields, true)
			s.close(st, st.code, nil)
			return
		}
		st.sentHeader = true
		s.cli.writeHeaders(st.id, h.fields, false)
		st.down.credited = true
		st.down.queue = h.body
		st.down.trailers = h.trailers
		st.down.end = true
		s.pumpDown(st)
	})
}

// legLost ends the calls of a backend connection that failed.
func (s *session) legLost(l *leg, err error) {
	l.dead = true
	l.conn.Close()
	s.connsMu.Lock()
	delete(s.conns, l.conn)
	s.connsMu.Unlock()
	delete(s.live, l)
	if s.legs[l.b] == l {
		delete(s.legs, l.b)
	}
	if errors.Is(err, io.EOF) {
		err = fmt.Errorf("connection closed")
	}
	s.endCalls(l, 0, fmt.Sprintf("lost the connection to the %s: %v", l.b.Name, err))
	if len(l.streams) > 0 {
		klog.InfoS("Lost a connection to the backend with calls in flight", "backend", l.b.Name, "calls", len(l.streams), "err", err)
	}
	for _, st := range l.streams {
		if st.legEnded {
			continue // the answer is complete: on its way or being vetted
		}
		st.legEnded = true
		st.down.closedIn = true
		sst := status.Newf(codes.Unavailable, "armorshim: lost the connection to the %s: %v", l.b.Name, err)
		if !st.sentHeader || st.down.framing.atBoundary() {
			if st.sentHeader && len(st.down.queue) > 0 {
				// Whole messages wait for the client's window: the
				// status goes after them.
				st.down.trailers = statusFields(sst, false)
				st.down.end = true
				st.code = sst.Code()
				s.pumpDown(st)
				continue
			}
			s.answer(st, sst)
			continue
		}
		code := http2.ErrCodeInternal
		s.close(st, codes.Internal, &code)
	}
}
