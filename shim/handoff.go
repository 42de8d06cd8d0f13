package shim

import (
	"errors"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// DrainMessage is the status message of the calls armorshim turns away
// while it drains (code Unavailable: the kubelet retries them).
const DrainMessage = "armorshim is shutting down: retry"

// handoff shares the serving socket between the relay, while armorshim
// serves, and a server that turns every call away with Unavailable, while it
// drains: the socket stays open, and its path in place, until the drain
// ends. One goroutine accepts; each connection goes to exactly one of them.
type handoff struct {
	l     net.Listener
	relay *phaseListener
	drain *phaseListener
	done  chan struct{} // closed when the accept loop ends

	mu       sync.Mutex
	cond     *sync.Cond
	draining bool
	// inTransit is set while a connection handed to the relay has not
	// been registered by it yet (its Accept has not been called again).
	inTransit bool
}

type accepted struct {
	c   net.Conn
	err error
}

// phaseListener is the net.Listener the relay or the drain server accepts
// on: it closes without closing the socket.
type phaseListener struct {
	h       *handoff
	ch      chan accepted
	closed  chan struct{}
	once    sync.Once
	onEnter func()
}

func newHandoff(l net.Listener) *handoff {
	h := &handoff{l: l, done: make(chan struct{})}
	h.cond = sync.NewCond(&h.mu)
	h.relay = &phaseListener{h: h, ch: make(chan accepted), closed: make(chan struct{}), onEnter: h.relayAccepting}
	h.drain = &phaseListener{h: h, ch: make(chan accepted), closed: make(chan struct{})}
	go h.run()
	return h
}

func (h *handoff) run() {
	defer close(h.done)
	for {
		c, err := h.l.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		h.mu.Lock()
		p := h.relay
		if h.draining {
			p = h.drain
		} else if c != nil {
			h.inTransit = true
		}
		h.mu.Unlock()
		select {
		case p.ch <- accepted{c, err}:
		case <-p.closed:
			if c != nil {
				c.Close()
			}
			if p == h.relay {
				h.relayAccepting()
			}
		}
	}
}

// relayAccepting records that the relay came back to Accept: the
// connection handed to it before, if any, is one of its sessions.
func (h *handoff) relayAccepting() {
	h.mu.Lock()
	h.inTransit = false
	h.cond.Broadcast()
	h.mu.Unlock()
}

// startDrain sends every connection accepted from now on to the drain
// listener it returns. It returns once the relay has taken in the
// connection it was handed last, so that the relay's Shutdown sees it.
func (h *handoff) startDrain() net.Listener {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.draining = true
	for h.inTransit {
		h.cond.Wait()
	}
	return h.drain
}

// Close closes the socket (removing a socket armorshim created) and both
// listeners.
func (h *handoff) Close() error {
	err := h.l.Close()
	h.relay.Close()
	h.drain.Close()
	<-h.done
	return err
}

func (p *phaseListener) Accept() (net.Conn, error) {
	if p.onEnter != nil {
		p.onEnter()
	}
	select {
	case a := <-p.ch:
		return a.c, a.err
	case <-p.closed:
		return nil, net.ErrClosed
	case <-p.h.done:
		return nil, net.ErrClosed
	}
}

func (p *phaseListener) Close() error {
	p.once.Do(func() {
		close(p.closed)
		if p.onEnter != nil {
			p.onEnter() // the relay will not come back: nothing is in transit
		}
	})
	return nil
}

func (p *phaseListener) Addr() net.Addr { return p.h.l.Addr() }

// newDrainServer returns the server that answers calls arriving during the
// drain: health checks with the health service's (NOT_SERVING) status,
// everything else with Unavailable.
func newDrainServer(health healthpb.HealthServer) *grpc.Server {
	srv := grpc.NewServer(grpc.UnknownServiceHandler(func(any, grpc.ServerStream) error {
		return status.Error(codes.Unavailable, DrainMessage)
	}))
	healthpb.RegisterHealthServer(srv, health)
	return srv
}

// serveDrain serves the drain listener until stop is called.
func serveDrain(l net.Listener, health healthpb.HealthServer) (stop func()) {
	srv := newDrainServer(health)
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(l)
	}()
	return func() {
		srv.Stop()
		<-done
	}
}
