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
	fwd, req, dec, learn, err := p.decideCreate(msg, pol)
	if err != nil {
		return refusal(err)
	}
	if err := p.checkContainer(ctx, req, dec.Profile); err != nil {
		return refusal(err)
	}
	// Loaded last: a call refused above leaves no learning profile behind.
	if learn != nil {
		if err := p.startLearning(ctx, *learn, req); err != nil {
			r := &apparmor.Refusal{Reason: apparmor.ReasonBlocked, Cause: "learning-load", Target: apparmor.TargetOf(req), Message: status.Convert(err).Message()}
			if strings.HasPrefix(r.Message, apparmor.ReasonForbidden) {
				r.Reason, r.Cause = apparmor.ReasonForbidden, "learning-unavailable"
			}
			p.logRefusal(r)
			return refusal(err)
		}
		p.metrics.observeDecision("forwarded", "", "learning")
	}
	v := h2relay.Verdict{Request: fwd}
	if p.attest != nil || p.denials != nil || learn != nil {
		v.Response = func(_ context.Context, out []byte, st *status.Status) *status.Status {
			resp := &runtimeapi.CreateContainerResponse{}
			if st.Code() != codes.OK || proto.Unmarshal(out, resp) != nil {
				if learn != nil {
					p.learning.abandon(dec.Profile.Name) // unless a container runs under it
				}
				return nil
			}
			if p.attest != nil {
				p.attest.remember(resp.ContainerId, dec.Profile, req, pol)
			}
			if learn != nil {
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
// if unchanged), with the decoded request and the decision, or the refusal;
// and, for a pod that learns a profile, its learning (the profile is not
// loaded yet).
func (p *Proxy) decideCreate(in []byte, pol *apparmor.Policy) ([]byte, *runtimeapi.CreateContainerRequest, apparmor.Decision, *apparmor.Learning, error) {
	req := &runtimeapi.CreateContainerRequest{}
	if err := proto.Unmarshal(in, req); err != nil {
		return nil, nil, apparmor.Decision{}, nil, status.Errorf(codes.InvalidArgument, "armorshim: cannot decode CreateContainerRequest: %v", err)
	}
	var learn *apparmor.Learning
	l, dec, learns, err := apparmor.DecideLearning(req, pol)
	if learns && err == nil {
		learn = &l
	}
	if !learns {
		dec, err = apparmor.Decide(req, p.host, pol)
	}
	if err != nil {
		var r *apparmor.Refusal
		if errors.As(err, &r) {
			p.logRefusal(r)
		}
		return nil, nil, apparmor.Decision{}, nil, err
	}
	if learn == nil { // a learning container's once its profile is loaded
		p.metrics.observeDecision("forwarded", "", dec.Profile.Type.String())
	}
	if dec.DryRun != nil {
		p.reportDryRun(dec.DryRun, apparmor.TargetOf(req))
	}
	if dec.Profile.Type != apparmor.None {
		t := apparmor.TargetOf(req)
		klog.V(2).InfoS("Forwarding CreateContainer", "pod", klog.KRef(t.Namespace, t.Pod),
			"container", t.Container, "profile", dec.Profile.String(), "source", string(dec.Source))
	}
	if !dec.Modified {
		return nil, req, dec, learn, nil
	}
	b, err := proto.Marshal(req)
	if err != nil {
		return nil, nil, apparmor.Decision{}, nil, status.Errorf(codes.Internal, "armorshim: cannot encode CreateContainerRequest: %v", err)
	}
	return b, req, dec, learn, nil
}

// logRefusal counts and logs a refused CreateContainer.
func (p *Proxy) logRefusal(r *apparmor.Refusal) {
	p.metrics.observeDecision("refused", r.Reason, r.Cause)
	// Never log the request itself: its environment holds secrets.
	p.logs.InfoS("Refused CreateContainer",
		"pod", klog.KRef(r.Target.Namespace, r.Target.Pod), "container", r.Target.Container,
		"profile", r.Profile, "reason", r.Reason, "cause", r.Cause, "message", r.Message)
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
