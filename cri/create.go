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
	"github.com/armorshim/armorshim/cri/h2relay"
)

// inspectCreate decides the AppArmor confinement of a CreateContainer
// request: it is forwarded (rewritten only when the decision changed it) or
// refused.
func (p *Proxy) inspectCreate(ctx context.Context, msg []byte) h2relay.Verdict {
	fwd, req, dec, err := p.decideCreate(msg)
	if err != nil {
		return refusal(err)
	}
	if err := p.checkContainer(ctx, req, dec.Profile); err != nil {
		return refusal(err)
	}
	v := h2relay.Verdict{Request: fwd}
	if p.attest != nil || p.denials != nil {
		pol := p.policy.Load()
		v.Response = func(_ context.Context, out []byte, st *status.Status) *status.Status {
			resp := &runtimeapi.CreateContainerResponse{}
			if st.Code() != codes.OK || proto.Unmarshal(out, resp) != nil {
				return nil
			}
			if p.attest != nil {
				p.attest.remember(resp.ContainerId, dec.Profile, req, pol)
			}
			if p.denials != nil {
				p.denials.created(resp.ContainerId, req.GetPodSandboxId(), apparmor.TargetOf(req),
					p.denials.profileOf(dec.Profile, req, pol))
			}
			return nil
		}
	}
	return v
}

// decideCreate returns the request to forward instead of the caller's (nil
// if unchanged), with the decoded request and the decision, or the refusal.
func (p *Proxy) decideCreate(in []byte) ([]byte, *runtimeapi.CreateContainerRequest, apparmor.Decision, error) {
	req := &runtimeapi.CreateContainerRequest{}
	if err := proto.Unmarshal(in, req); err != nil {
		return nil, nil, apparmor.Decision{}, status.Errorf(codes.InvalidArgument, "armorshim: cannot decode CreateContainerRequest: %v", err)
	}
	dec, err := apparmor.Decide(req, p.host, p.policy.Load())
	if err != nil {
		var r *apparmor.Refusal
		if errors.As(err, &r) {
			p.metrics.observeDecision("refused", r.Reason, r.Cause)
			// Never log the request itself: its environment holds secrets.
			p.logs.InfoS("Refused CreateContainer",
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
		return nil, req, dec, nil
	}
	b, err := proto.Marshal(req)
	if err != nil {
		return nil, nil, apparmor.Decision{}, status.Errorf(codes.Internal, "armorshim: cannot encode CreateContainerRequest: %v", err)
	}
	return b, req, dec, nil
}
