package cri

import (
	"errors"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/apparmor"
)

// createContainer decides the AppArmor confinement of a CreateContainer
// request, then forwards it (the original bytes when the decision changed
// nothing) or returns the refusal.
func (p *Proxy) createContainer(ss grpc.ServerStream, conn grpc.ClientConnInterface, in *Frame) error {
	in, req, dec, err := p.decideCreate(in)
	if err != nil {
		return err
	}
	if err := p.checkContainer(ss.Context(), req, dec.Profile); err != nil {
		in.Free()
		return err
	}
	out, err := invokeUnary(ss, conn, CreateContainerMethod, in)
	if err != nil {
		return err
	}
	if p.attest != nil || p.denials != nil {
		resp := &runtimeapi.CreateContainerResponse{}
		if err := proto.Unmarshal(out.Bytes(), resp); err == nil {
			if p.attest != nil {
				p.attest.remember(resp.ContainerId, dec.Profile, req, p.policy.Load())
			}
			if dec.Profile.Type == apparmor.Localhost {
				p.denials.Confined(resp.ContainerId, dec.Profile.Name)
			}
		}
	}
	return ss.SendMsg(out)
}

// decideCreate returns the frame to forward, with the decoded request and
// the decision, or the refusal.
func (p *Proxy) decideCreate(in *Frame) (*Frame, *runtimeapi.CreateContainerRequest, apparmor.Decision, error) {
	req := &runtimeapi.CreateContainerRequest{}
	if err := proto.Unmarshal(in.Bytes(), req); err != nil {
		in.Free()
		return nil, nil, apparmor.Decision{}, status.Errorf(codes.InvalidArgument, "armorshim: cannot decode CreateContainerRequest: %v", err)
	}
	dec, err := apparmor.Decide(req, p.host, p.policy.Load())
	if err != nil {
		in.Free()
		var r *apparmor.Refusal
		if errors.As(err, &r) {
			p.metrics.observeDecision("refused", r.Reason, r.Cause)
			// Never log the request itself: its environment holds secrets.
			klog.InfoS("Refused CreateContainer",
				"pod", klog.KRef(r.Target.Namespace, r.Target.Pod), "container", r.Target.Container,
				"profile", r.Profile, "reason", r.Reason, "cause", r.Cause, "message", r.Message)
		}
		return nil, nil, apparmor.Decision{}, err
	}
	p.metrics.observeDecision("forwarded", "", dec.Profile.Type.String())
	if dec.Profile.Type != apparmor.None {
		t := apparmor.TargetOf(req)
		klog.V(2).InfoS("Forwarding CreateContainer", "pod", klog.KRef(t.Namespace, t.Pod),
			"container", t.Container, "profile", dec.Profile.String(), "source", string(dec.Source))
	}
	if !dec.Modified {
		return in, req, dec, nil
	}
	in.Free()
	b, err := proto.Marshal(req)
	if err != nil {
		return nil, nil, apparmor.Decision{}, status.Errorf(codes.Internal, "armorshim: cannot encode CreateContainerRequest: %v", err)
	}
	return FrameOf(b), req, dec, nil
}
