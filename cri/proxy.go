package cri

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/pss"
)

// Proxy forwards CRI calls to the backend connections.
type Proxy struct {
	runtime grpc.ClientConnInterface
	image   grpc.ClientConnInterface
	host    apparmor.Host
	policy  atomic.Pointer[apparmor.Policy]
	metrics *Metrics
	attest  *attestor
	denials *Denials
	// podSecurity is nil while Pod Security is off.
	podSecurity atomic.Pointer[pss.Evaluator]
	audit       io.Writer
}

// Option configures a Proxy.
type Option func(*Proxy)

// WithMetrics counts calls and decisions in m.
func WithMetrics(m *Metrics) Option { return func(p *Proxy) { p.metrics = m } }

// WithDenials tells d which profile each created container runs under, for
// attributing denials of processes that are already gone.
func WithDenials(d *Denials) Option { return func(p *Proxy) { p.denials = d } }

// New returns a Proxy forwarding RuntimeService (and unknown services) to
// runtime and ImageService to image. Both must use Codec for their calls
// (grpc.WithDefaultCallOptions(grpc.ForceCodecV2(Codec{}))). host feeds the
// AppArmor decision; pol may be nil for the default policy.
func New(runtime, image grpc.ClientConnInterface, host apparmor.Host, pol *apparmor.Policy, opts ...Option) *Proxy {
	p := &Proxy{runtime: runtime, image: image, host: host}
	for _, o := range opts {
		o(p)
	}
	p.SetPolicy(pol)
	return p
}

// SetPolicy replaces the node policy for the calls that start after it.
func (p *Proxy) SetPolicy(pol *apparmor.Policy) {
	if pol == nil {
		pol = &apparmor.Policy{}
	}
	p.policy.Store(pol)
}

// Handle is the grpc.StreamHandler for every method the server does not
// serve itself: register it with grpc.UnknownServiceHandler.
func (p *Proxy) Handle(_ any, ss grpc.ServerStream) error {
	method, ok := grpc.MethodFromServerStream(ss)
	if !ok {
		return status.Error(codes.Internal, "armorshim: no method in stream")
	}
	if p.metrics == nil {
		return p.handle(ss, method)
	}
	start := time.Now()
	err := p.handle(ss, method)
	p.metrics.observeCall(method, status.Code(err), time.Since(start))
	return err
}

func (p *Proxy) handle(ss grpc.ServerStream, method string) error {
	conn := p.runtime
	if isImageMethod(method) {
		conn = p.image
	}
	switch Methods[method] {
	case Unary:
		in := new(Frame)
		if err := ss.RecvMsg(in); err != nil {
			return err
		}
		switch {
		case method == CreateContainerMethod:
			return p.createContainer(ss, conn, in)
		case method == RunPodSandboxMethod:
			if ev := p.podSecurity.Load(); ev != nil {
				return p.runPodSandbox(ss, conn, ev, in)
			}
		case method == StartContainerMethod && p.attest != nil:
			return p.startContainer(ss, conn, in)
		}
		return forwardUnary(ss, conn, method, in)
	case ServerStream:
		return forwardStream(ss, conn, method, false)
	default:
		return forwardStream(ss, conn, method, true)
	}
}

// outgoing carries the caller's metadata, deadline and cancellation to the
// backend call. HTTP/2 pseudo-headers stay behind; gRPC drops its reserved
// headers (content-type, user-agent, grpc-timeout ...) itself.
func outgoing(ctx context.Context) context.Context {
	in, _ := metadata.FromIncomingContext(ctx)
	out := make(metadata.MD, len(in))
	for k, v := range in {
		if !strings.HasPrefix(k, ":") {
			out[k] = v
		}
	}
	return metadata.NewOutgoingContext(ctx, out)
}

func forwardUnary(ss grpc.ServerStream, conn grpc.ClientConnInterface, method string, in *Frame) error {
	out, err := invokeUnary(ss, conn, method, in)
	if err != nil {
		return err
	}
	return ss.SendMsg(out)
}

// invokeUnary calls the backend and passes its header and trailer to the
// caller; the response is the caller's to send or free.
func invokeUnary(ss grpc.ServerStream, conn grpc.ClientConnInterface, method string, in *Frame) (*Frame, error) {
	var header, trailer metadata.MD
	out := new(Frame)
	err := conn.Invoke(outgoing(ss.Context()), method, in, out, grpc.Header(&header), grpc.Trailer(&trailer))
	if len(header) > 0 {
		if herr := ss.SetHeader(header); herr != nil && err == nil {
			err = herr
		}
	}
	ss.SetTrailer(trailer)
	if err != nil {
		out.Free()
		return nil, err
	}
	return out, nil
}

// forwardStream relays a server-streaming call, or with duplex any call of
// unknown shape, until the backend ends it.
func forwardStream(ss grpc.ServerStream, conn grpc.ClientConnInterface, method string, duplex bool) error {
	ctx, cancel := context.WithCancel(outgoing(ss.Context()))
	defer cancel()
	desc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: duplex}
	cs, err := conn.NewStream(ctx, desc, method)
	if err != nil {
		return err
	}
	if duplex {
		go relayRequests(ss, cs, cancel)
	} else {
		in := new(Frame)
		if err := ss.RecvMsg(in); err != nil {
			return err
		}
		if err := cs.SendMsg(in); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if err := cs.CloseSend(); err != nil {
			return err
		}
	}
	if header, err := cs.Header(); err == nil && len(header) > 0 {
		if err := ss.SendHeader(header); err != nil {
			return err
		}
	}
	for {
		out := new(Frame)
		err := cs.RecvMsg(out)
		if err != nil {
			ss.SetTrailer(cs.Trailer())
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if err := ss.SendMsg(out); err != nil {
			return err
		}
	}
}

// relayRequests copies the caller's messages to the backend and half-closes
// the backend stream when the caller does; on any other error it cancels.
func relayRequests(ss grpc.ServerStream, cs grpc.ClientStream, cancel context.CancelFunc) {
	for {
		in := new(Frame)
		if err := ss.RecvMsg(in); err != nil {
			if errors.Is(err, io.EOF) {
				cs.CloseSend()
			} else {
				cancel()
			}
			return
		}
		if err := cs.SendMsg(in); err != nil {
			// The backend ended the call; its status reaches the caller
			// through RecvMsg.
			return
		}
	}
}
