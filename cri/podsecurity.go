package cri

import (
	"context"
	"encoding/json"
	"io"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/cri/h2relay"
	"github.com/armorshim/armorshim/pss"
)

// RunPodSandboxMethod is decoded only while Pod Security is configured.
const RunPodSandboxMethod = "/runtime.v1.RuntimeService/RunPodSandbox"

const (
	podSandboxStatusMethod = "/runtime.v1.RuntimeService/PodSandboxStatus"
	imageStatusMethod      = "/runtime.v1.ImageService/ImageStatus"
)

// WithPodSecurity turns on node-side Pod Security Standards with ev; audit,
// if not nil, is the audit log (see WithAuditLog).
func WithPodSecurity(ev *pss.Evaluator, audit io.Writer) Option {
	return func(p *Proxy) {
		p.podSecurity.Store(ev)
		if audit != nil {
			p.audit = audit
		}
	}
}

// WithAuditLog writes one JSON line (an AuditRecord) per audited decision,
// of Pod Security and of the AppArmor policy's rules in audit mode, to
// audit. Writes must be safe for concurrent use and write a whole line or,
// when they fail, nothing.
func WithAuditLog(audit io.Writer) Option { return func(p *Proxy) { p.audit = audit } }

// SetPodSecurity replaces the Pod Security evaluator for the calls that
// start after it; nil turns Pod Security off.
func (p *Proxy) SetPodSecurity(ev *pss.Evaluator) { p.podSecurity.Store(ev) }

// inspectSandbox evaluates a sandbox's pod-level facts: it is forwarded
// unchanged, or refused under enforce.
func (p *Proxy) inspectSandbox(_ context.Context, in []byte) h2relay.Verdict {
	ev := p.podSecurity.Load()
	if ev == nil {
		return h2relay.Verdict{}
	}
	req := &runtimeapi.RunPodSandboxRequest{}
	if err := proto.Unmarshal(in, req); err != nil {
		return refusal(status.Errorf(codes.InvalidArgument, "armorshim: cannot decode RunPodSandboxRequest: %v", err))
	}
	ns := req.GetConfig().GetMetadata().GetNamespace()
	if reason := ev.Exemption(ns, req.GetRuntimeHandler()); reason != "" {
		p.metrics.observeExemption(reason)
	} else if ev.Needs(ns) {
		pod := pss.SandboxPod(req.GetConfig(), req.GetRuntimeHandler(), ev.Config())
		if err := p.report(ev.Evaluate(pod), "RunPodSandbox"); err != nil {
			return refusal(err)
		}
	}
	return h2relay.Verdict{}
}

// checkContainer evaluates a CreateContainer request as armorshim will
// forward it (AppArmor resolved to profile). It asks the runtime for the
// sandbox's runtime handler only when runtime classes are exempt, and for
// the image's user only when restricted is evaluated and the request
// leaves the user to the image.
func (p *Proxy) checkContainer(ctx context.Context, req *runtimeapi.CreateContainerRequest, profile apparmor.Profile) error {
	ev := p.podSecurity.Load()
	if ev == nil {
		return nil
	}
	ns := req.GetSandboxConfig().GetMetadata().GetNamespace()
	if ns == "" {
		ns = req.GetConfig().GetLabels()["io.kubernetes.pod.namespace"]
	}
	if reason := ev.Exemption(ns, ""); reason != "" {
		p.metrics.observeExemption(reason)
		return nil
	}
	if !ev.Needs(ns) {
		return nil
	}
	if ev.ExemptsRuntimeClasses() {
		handler, err := p.runtimeHandler(ctx, req.GetPodSandboxId())
		if err != nil {
			return status.Errorf(codes.Unavailable, "armorshim: cannot read the runtime handler of sandbox %s for Pod Security: %v", req.GetPodSandboxId(), err)
		}
		if reason := ev.Exemption("", handler); reason != "" {
			p.metrics.observeExemption(reason)
			return nil
		}
	}
	d := ev.Evaluate(pss.ContainerPod(req, profile, nil, ev.Config()))
	if pss.NeedsImageUser(req.GetConfig(), req.GetSandboxConfig()) && d.DependsOnUser() {
		if image := p.imageUser(ctx, req.GetConfig().GetImage()); image != nil {
			d = ev.Evaluate(pss.ContainerPod(req, profile, image, ev.Config()))
		}
	}
	return p.report(d, "CreateContainer")
}

func (p *Proxy) runtimeHandler(ctx context.Context, sandboxID string) (string, error) {
	resp := &runtimeapi.PodSandboxStatusResponse{}
	err := p.runtime.Invoke(ctx, podSandboxStatusMethod, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: sandboxID}, resp)
	return resp.GetStatus().GetRuntimeHandler(), err
}

// imageUser asks the image service for the image's user; nil if unknown.
func (p *Proxy) imageUser(ctx context.Context, image *runtimeapi.ImageSpec) *pss.ImageUser {
	resp := &runtimeapi.ImageStatusResponse{}
	if err := p.image.Invoke(ctx, imageStatusMethod, &runtimeapi.ImageStatusRequest{Image: image}, resp); err != nil {
		klog.V(2).InfoS("Pod Security: cannot read the image's user", "image", image.GetImage(), "err", err)
		return nil
	}
	return pss.ImageUserOf(resp.GetImage())
}

// report counts, logs and audits a decision and returns the refusal, if
// enforce refuses it.
func (p *Proxy) report(d *pss.Decision, request string) error {
	pod := d.Pod
	ref := klog.KRef(pod.Meta.Namespace, pod.Meta.Name)
	for _, v := range d.Verdicts {
		p.metrics.observePodSecurity(string(v.Mode), string(v.Level.Level), v.Allowed())
		if v.Allowed() {
			continue
		}
		if v.Mode == pss.Warn {
			p.logs.InfoS("Pod Security warning", "pod", ref, "container", pod.Container, "request", request, "warning", v.Message())
		} else {
			p.writeAudit(d, v, request) // audit violations and enforce refusals
		}
	}
	v, denied := d.Denied()
	if !denied {
		return nil
	}
	msg := "Forbidden: " + v.Message()
	p.logs.InfoS("Refused by Pod Security", "pod", ref, "container", pod.Container, "request", request, "message", msg)
	st := status.New(codes.PermissionDenied, msg)
	md := map[string]string{"cause": "pod-security", "level": v.Level.String(), "namespace": pod.Meta.Namespace, "pod": pod.Meta.Name}
	if pod.Container != "" {
		md["container"] = pod.Container
	}
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: apparmor.ReasonForbidden, Domain: apparmor.ErrorDomain, Metadata: md}); err == nil {
		st = withInfo
	}
	return st.Err()
}

// AuditRecord is one line of the audit log: a Pod Security violation or
// refusal, or what the AppArmor policy's rules in audit mode would have
// done.
type AuditRecord struct {
	Time time.Time `json:"time"`
	// Policy says whose record it is: AuditPodSecurity or AuditAppArmor.
	Policy    string `json:"policy"`
	Request   string `json:"request"` // RunPodSandbox or CreateContainer
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	Container string `json:"container,omitempty"`
	Mode      string `json:"mode"` // audit, or enforce for a Pod Security refusal
	// Pod Security: the level and version violated, and the violations.
	Level      string   `json:"level,omitempty"`
	Version    string   `json:"version,omitempty"`
	Violations []string `json:"violations,omitempty"`
	// AppArmor: the rule in audit mode, the profile the message is about,
	// and the reason and cause of the refusal enforcing would have given
	// (none when it would have applied the default profile).
	Rule    string `json:"rule,omitempty"`
	Profile string `json:"profile,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Cause   string `json:"cause,omitempty"`
	Message string `json:"message"`
}

// AuditRecord.Policy values.
const (
	AuditPodSecurity = "PodSecurity"
	AuditAppArmor    = "AppArmor"
)

func (p *Proxy) writeAudit(d *pss.Decision, v pss.Verdict, request string) {
	if p.audit == nil {
		return
	}
	rec := AuditRecord{
		Time: time.Now().UTC(), Policy: AuditPodSecurity, Request: request,
		Namespace: d.Pod.Meta.Namespace, Pod: d.Pod.Meta.Name, Container: d.Pod.Container,
		Mode: string(v.Mode), Level: string(v.Level.Level), Version: v.Level.Version.String(),
		Message: v.Message(),
	}
	for i, r := range v.Result.ForbiddenReasons {
		if det := v.Result.ForbiddenDetails[i]; det != "" {
			r += " (" + det + ")"
		}
		rec.Violations = append(rec.Violations, r)
	}
	p.writeRecord(rec)
}

// writeRecord writes one line to the audit log, if there is one; a line
// that cannot be written is counted as dropped.
func (p *Proxy) writeRecord(rec AuditRecord) {
	if p.audit == nil {
		return
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return
	}
	_, err = p.audit.Write(append(b, '\n'))
	if err != nil {
		p.metrics.observeAuditDropped()
	}
	// Logged once per change: a full disk fails every record.
	if failing := err != nil; p.auditFailing.Swap(failing) != failing {
		if failing {
			klog.ErrorS(err, "Cannot write the audit log: records are dropped (armorshim_pod_security_audit_records_dropped_total) until it can be written again")
		} else {
			klog.InfoS("Writing the audit log again")
		}
	}
}

// podSecurityMetrics counts Pod Security evaluations and exemptions.
type podSecurityMetrics struct {
	evaluations  *prometheus.CounterVec
	exemptions   *prometheus.CounterVec
	auditDropped prometheus.Counter
}

func newPodSecurityMetrics(reg prometheus.Registerer) *podSecurityMetrics {
	m := &podSecurityMetrics{
		evaluations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "armorshim_pod_security_evaluations_total",
			Help: "Pod Security evaluations of sandboxes and containers, by mode (enforce, audit, warn), level (privileged, baseline, restricted) and outcome (allowed, violation).",
		}, []string{"mode", "level", "outcome"}),
		exemptions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "armorshim_pod_security_exemptions_total",
			Help: "Sandboxes and containers passed without Pod Security evaluation, by reason (namespace, runtimeClass).",
		}, []string{"reason"}),
		auditDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "armorshim_pod_security_audit_records_dropped_total",
			Help: "Audit records, of Pod Security and of the AppArmor policy's rules in audit mode, not written: the audit log could not be written (disk full, I/O error).",
		}),
	}
	reg.MustRegister(m.evaluations, m.exemptions, m.auditDropped)
	return m
}

func (m *Metrics) observePodSecurity(mode, level string, allowed bool) {
	if m == nil {
		return
	}
	outcome := "violation"
	if allowed {
		outcome = "allowed"
	}
	m.pss.evaluations.WithLabelValues(mode, level, outcome).Inc()
}

func (m *Metrics) observeExemption(reason string) {
	if m == nil {
		return
	}
	m.pss.exemptions.WithLabelValues(reason).Inc()
}

func (m *Metrics) observeAuditDropped() {
	if m == nil {
		return
	}
	m.pss.auditDropped.Inc()
}
