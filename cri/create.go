package cri

import (
	"context"
	"errors"
	"strings"
	"time"

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
	// One policy for the decision and for what is remembered of it: a
	// reload in between must not give the start another expectation.
	pol := p.policy.Load()
	fwd, req, dec, err := p.decideCreate(ctx, msg, pol)
	if err != nil {
		return refusal(err)
	}
	if err := p.checkContainer(ctx, req, dec.Profile); err != nil {
		return refusal(err)
	}
	v := h2relay.Verdict{Request: fwd}
	if p.attest != nil || p.denials != nil || dec.Source == apparmor.SourceLearning {
		v.Response = func(_ context.Context, out []byte, st *status.Status) *status.Status {
			resp := &runtimeapi.CreateContainerResponse{}
			if st.Code() != codes.OK || proto.Unmarshal(out, resp) != nil {
				if dec.Source == apparmor.SourceLearning && p.learning != nil {
					p.learning.Stop(dec.Profile.Name) // no container runs under it
				}
				return nil
			}
			if p.attest != nil {
				p.attest.remember(resp.ContainerId, dec.Profile, req, pol)
			}
			if dec.Source == apparmor.SourceLearning && p.learning != nil {
				p.learning.created(resp.ContainerId, dec.Profile.Name, req.GetPodSandboxId())
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
func (p *Proxy) decideCreate(ctx context.Context, in []byte, pol *apparmor.Policy) ([]byte, *runtimeapi.CreateContainerRequest, apparmor.Decision, error) {
	req := &runtimeapi.CreateContainerRequest{}
	if err := proto.Unmarshal(in, req); err != nil {
		return nil, nil, apparmor.Decision{}, status.Errorf(codes.InvalidArgument, "armorshim: cannot decode CreateContainerRequest: %v", err)
	}
	l, dec, learn, err := apparmor.DecideLearning(req, pol)
	if learn && err == nil {
		err = p.startLearning(ctx, l, req)
	}
	if !learn {
		dec, err = apparmor.Decide(req, p.host, pol)
	}
	if err != nil {
		var r *apparmor.Refusal
		if errors.As(err, &r) || learn {
			if r == nil { // the learning profile could not be loaded
				r = &apparmor.Refusal{Reason: apparmor.ReasonBlocked, Cause: "learning-load", Target: apparmor.TargetOf(req), Message: status.Convert(err).Message()}
				if strings.HasPrefix(r.Message, apparmor.ReasonForbidden) {
					r.Reason, r.Cause = apparmor.ReasonForbidden, "learning-unavailable"
				}
			}
			p.metrics.observeDecision("refused", r.Reason, r.Cause)
			// Never log the request itself: its environment holds secrets.
			p.logs.InfoS("Refused CreateContainer",
				"pod", klog.KRef(r.Target.Namespace, r.Target.Pod), "container", r.Target.Container,
				"profile", r.Profile, "reason", r.Reason, "cause", r.Cause, "message", r.Message)
		}
		return nil, nil, apparmor.Decision{}, err
	}
	p.metrics.observeDecision("forwarded", "", dec.Profile.Type.String())
	if dec.DryRun != nil {
		p.reportDryRun(dec.DryRun, apparmor.TargetOf(req))
	}
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

// reportDryRun counts what enforcing every rule would have done to a
// forwarded request, logs it for a rule in warn mode and audits it for a
// rule in audit mode, in the words of the refusal enforcing would give.
func (p *Proxy) reportDryRun(d *apparmor.DryRun, t apparmor.Target) {
	reason, cause, profile := "", "default", d.Profile.String()
	if r := d.Refusal; r != nil {
		reason, cause, profile = r.Reason, r.Cause, r.Profile
	}
	for _, m := range []apparmor.RuleMode{apparmor.Warn, apparmor.Audit} {
		if d.Mode&m != 0 {
			p.metrics.observeDryRun(string(d.Rule), m.String(), reason, cause)
		}
	}
	if d.Mode&apparmor.Warn != 0 {
		pod := klog.KRef(t.Namespace, t.Pod)
		if d.Refusal != nil {
			p.logs.InfoS("Would refuse CreateContainer", "pod", pod, "container", t.Container, "profile", profile,
				"rule", string(d.Rule), "reason", reason, "cause", cause, "message", d.Message())
		} else {
			p.logs.InfoS("Would apply the default AppArmor profile", "pod", pod, "container", t.Container, "profile", profile,
				"rule", string(d.Rule), "message", d.Message())
		}
	}
	if d.Mode&apparmor.Audit != 0 {
		p.writeRecord(AuditRecord{
			Time: time.Now().UTC(), Policy: AuditAppArmor, Request: "CreateContainer",
			Namespace: t.Namespace, Pod: t.Pod, Container: t.Container, Mode: "audit",
			Rule: string(d.Rule), Profile: profile, Reason: reason, Cause: cause, Message: d.Message(),
		})
	}
}
