package cri

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/apparmor"
)

// createContainer decides the AppArmor confinement of a CreateContainer
// request. It returns the frame to forward (the original bytes when the
// decision changed nothing) or the refusal to return.
func (p *Proxy) createContainer(_ context.Context, in *Frame) (*Frame, error) {
	req := &runtimeapi.CreateContainerRequest{}
	if err := proto.Unmarshal(in.Bytes(), req); err != nil {
		in.Free()
		return nil, status.Errorf(codes.InvalidArgument, "armorshim: cannot decode CreateContainerRequest: %v", err)
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
		return nil, err
	}
	p.metrics.observeDecision("forwarded", "", dec.Profile.Type.String())
	if dec.Profile.Type != apparmor.None {
		t := apparmor.TargetOf(req)
		klog.V(2).InfoS("Forwarding CreateContainer", "pod", klog.KRef(t.Namespace, t.Pod),
			"container", t.Container, "profile", dec.Profile.String(), "source", string(dec.Source))
	}
	if !dec.Modified {
		return in, nil
	}
	in.Free()
	b, err := proto.Marshal(req)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "armorshim: cannot encode CreateContainerRequest: %v", err)
	}
	return FrameOf(b), nil
}
