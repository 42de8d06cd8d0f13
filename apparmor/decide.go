package apparmor

import (
	"fmt"
	"strconv"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Source says where a resolved profile came from.
type Source string

const (
	SourceNone       Source = ""
	SourceField      Source = "apparmor"         // config.linux.security_context.apparmor
	SourceDeprecated Source = "apparmor_profile" // the deprecated string field
	SourceAnnotation Source = "annotation"       // the pod's beta annotation
	SourceDefault    Source = "policy default"   // the node policy's defaultProfile
	SourceLearning   Source = "learning"         // the pod asks to learn a profile (LearnAnnotation)
)

// Host yields the host snapshot a decision checks against. It is only asked
// when a check needs it. *Snapshot is a Host that returns itself.
type Host interface {
	Snapshot() *Snapshot
}

// Snapshot makes a fixed *Snapshot usable as a Host.
func (s *Snapshot) Snapshot() *Snapshot { return s }

// Decision is the outcome of an accepted request.
type Decision struct {
	Profile Profile
	Source  Source
	// Modified: the request was changed and must be re-encoded; otherwise
	// the original bytes can be forwarded.
	Modified bool
	// DryRun, if not nil, is what enforcing every rule would have done
	// instead: a rule in warn or audit mode made the difference.
	DryRun *DryRun
}

// DryRun is what the policy with every rule enforced would have done to a
// request that was forwarded because a rule is in warn or audit mode.
type DryRun struct {
	// Rule is the rule in warn or audit mode that made the difference, and
	// Mode its mode.
	Rule Rule
	Mode RuleMode
	// Refusal is the refusal enforcing would have given, word for word;
	// nil when enforcing would have forwarded the request with Profile (a
	// default profile the container did not get).
	Refusal *Refusal
	Profile Profile
}

// Message says what enforcing would have done: the refusal's message, or
// the profile the container would have run with.
func (d *DryRun) Message() string {
	if d.Refusal != nil {
		return d.Refusal.Message
	}
	return fmt.Sprintf("AppArmor profile %s would be applied (defaultProfile): the container asks for none", quoted(d.Profile.String()))
}

// Refusal reasons, the ErrorInfo reason and the message prefix.
const (
	ReasonBlocked   = "Blocked"
	ReasonForbidden = "Forbidden"
	ReasonInvalid   = "InvalidProfile"
)

// ErrorDomain is the ErrorInfo domain of armorshim's refusals.
const ErrorDomain = "armorshim.io"

// Refusal is a CreateContainer request armorshim will not forward.
type Refusal struct {
	Code    codes.Code
	Reason  string // ReasonBlocked, ReasonForbidden or ReasonInvalid
	Cause   string // short machine-readable cause, e.g. "not-loaded"
	Message string // what the kubelet shows the operator
	Profile string // the reference the refusal is about, if any
	Target  Target
	// Rule is the policy rule that refused; "" for the checks that are
	// always enforced (invalid references, AppArmor disabled on the node,
	// the host's state).
	Rule Rule
}

func (r *Refusal) Error() string { return r.Message }

// GRPCStatus is the status returned to the caller, with a google.rpc.ErrorInfo
// detail naming reason, profile, container, pod and namespace.
func (r *Refusal) GRPCStatus() *status.Status {
	st := status.New(r.Code, r.Message)
	md := map[string]string{"cause": r.Cause}
	for k, v := range map[string]string{
		"profile": r.Profile, "container": r.Target.Container,
		"pod": r.Target.Pod, "namespace": r.Target.Namespace,
	} {
		if v != "" {
			md[k] = v
		}
	}
	if withInfo, err := st.WithDetails(&errdetails.ErrorInfo{Reason: r.Reason, Domain: ErrorDomain, Metadata: md}); err == nil {
		return withInfo
	}
	return st
}

// Target names the container a request creates, for messages and logs.
type Target struct {
	Namespace, Pod, Container string
}

// TargetOf reads the container, pod and namespace names from a request,
// falling back to the kubelet's container labels.
func TargetOf(req *runtimeapi.CreateContainerRequest) Target {
	t := Target{
		Container: req.GetConfig().GetMetadata().GetName(),
		Pod:       req.GetSandboxConfig().GetMetadata().GetName(),
		Namespace: req.GetSandboxConfig().GetMetadata().GetNamespace(),
	}
	labels := req.GetConfig().GetLabels()
	if t.Pod == "" {
		t.Pod = labels["io.kubernetes.pod.name"]
	}
	if t.Namespace == "" {
		t.Namespace = labels["io.kubernetes.pod.namespace"]
	}
	if t.Container == "" {
		t.Container = labels["io.kubernetes.container.name"]
	}
	return t
}

// Resolve returns the profile a request asks for: the apparmor field first,
// else the deprecated apparmor_profile string, else the beta annotation for
// this container in the sandbox config, else None.
func Resolve(req *runtimeapi.CreateContainerRequest) (Profile, Source, error) {
	sc := req.GetConfig().GetLinux().GetSecurityContext()
	if sp := sc.GetApparmor(); sp != nil {
		p, err := fromSecurityProfile(sp)
		return p, SourceField, err
	}
	if ref := sc.GetApparmorProfile(); ref != "" {
		p, err := ParseReference(ref)
		return p, SourceDeprecated, err
	}
	if name := req.GetConfig().GetMetadata().GetName(); name != "" {
		// An empty value asks for nothing, as in the Kubernetes API (which
		// accepts it) and like an empty apparmor_profile string.
		if ref := req.GetSandboxConfig().GetAnnotations()[AnnotationPrefix+name]; ref != "" {
			p, err := ParseReference(ref)
			return p, SourceAnnotation, err
		}
	}
	return Profile{}, SourceNone, nil
}

func fromSecurityProfile(sp *runtimeapi.SecurityProfile) (Profile, error) {
	switch sp.GetProfileType() {
	case runtimeapi.SecurityProfile_RuntimeDefault, runtimeapi.SecurityProfile_Unconfined:
		p := Profile{Type: RuntimeDefault}
		if sp.GetProfileType() == runtimeapi.SecurityProfile_Unconfined {
			p.Type = Unconfined
		}
		if sp.GetLocalhostRef() != "" {
			return Profile{}, &InvalidError{Ref: p.String(), Reason: fmt.Sprintf("localhost_ref %q is only valid with profile type Localhost", sp.GetLocalhostRef())}
		}
		return p, nil
	case runtimeapi.SecurityProfile_Localhost:
		// critest sends the ref with the prefix, the kubelet without it.
		name := strings.TrimPrefix(sp.GetLocalhostRef(), LocalhostPrefix)
		if reason := ValidateName(name); reason != "" {
			return Profile{}, &InvalidError{Ref: LocalhostPrefix + name, Reason: reason}
		}
		return Profile{Type: Localhost, Name: name}, nil
	}
	return Profile{}, &InvalidError{Ref: sp.GetProfileType().String(), Reason: "unknown profile type"}
}

// Decide resolves the profile of a CreateContainer request, applies the node
// policy, checks the host where the profile needs it and, on success, sets
// both CRI fields of req to the resolved profile. A refusal is a *Refusal.
//
// A rule in warn or audit mode is left out of the decision, and when
// enforcing it would have changed the outcome, Decision.DryRun says how.
// The host is asked at most once.
func Decide(req *runtimeapi.CreateContainerRequest, host Host, pol *Policy) (Decision, error) {
	p, src, err := Resolve(req)
	if err != nil {
		return Decision{}, &Refusal{
			Code: codes.InvalidArgument, Reason: ReasonInvalid, Cause: "invalid",
			Message: err.Error(), Target: TargetOf(req),
		}
	}
	if pol == nil {
		pol = &Policy{}
	}
	dryRuns := pol.DryRuns()
	if dryRuns {
		host = &onceHost{host: host} // both passes see one snapshot
	}
	privileged := req.GetConfig().GetLinux().GetSecurityContext().GetPrivileged()
	got, gotSrc, r := pol.decide(p, src, privileged, host, !dryRuns)
	if r != nil {
		r.Target = TargetOf(req)
		return Decision{}, r
	}
	dec := Decision{Profile: got, Source: gotSrc}
	if dryRuns {
		dec.DryRun = pol.dryRun(p, src, privileged, host, got)
		if dec.DryRun != nil && dec.DryRun.Refusal != nil {
			dec.DryRun.Refusal.Target = TargetOf(req)
		}
	}
	dec.Modified = apply(req, got)
	return dec, nil
}

// decide decides the requested profile p: the profile to run, or the
// refusal. Rules in warn or audit mode are left out unless all is set.
func (pol *Policy) decide(p Profile, src Source, privileged bool, host Host, all bool) (Profile, Source, *Refusal) {
	on := func(r Rule) bool { return all || pol.Mode(r).Enforced() }
	if p.Type == None && pol.Default.Type != None && on(RuleDefaultProfile) {
		p, src = pol.Default, SourceDefault
	}
	if r := pol.check(p, on(RuleAllowedProfiles)); r != nil {
		return Profile{}, "", r
	}
	if r := checkHost(p, privileged, host, pol, pol.RequireEnforce && on(RuleRequireEnforce)); r != nil {
		return Profile{}, "", r
	}
	return p, src, nil
}

// dryRun decides p again with every rule enforced and says what that
// changes for a request forwarded with profile got, or nil.
func (pol *Policy) dryRun(p Profile, src Source, privileged bool, host Host, got Profile) *DryRun {
	want, _, r := pol.decide(p, src, privileged, host, true)
	if r == nil && want == got {
		return nil
	}
	// The rules left out made the difference. A refusal by one of them is
	// its own; any other (the host's checks, or an enforced rule) was of a
	// default profile the request did not get.
	d := &DryRun{Rule: RuleDefaultProfile, Refusal: r}
	if r == nil {
		d.Profile = want
	} else if r.Rule != "" && !pol.Mode(r.Rule).Enforced() {
		d.Rule = r.Rule
	}
	d.Mode = pol.Mode(d.Rule)
	return d
}

// onceHost asks its host for one snapshot, the first time it is needed.
type onceHost struct {
	host  Host
	snap  *Snapshot
	asked bool
}

func (h *onceHost) Snapshot() *Snapshot {
	if !h.asked && h.host != nil {
		h.snap, h.asked = h.host.Snapshot(), true
	}
	return h.snap
}

func blocked(cause string, p Profile, format string, args ...any) *Refusal {
	return &Refusal{
		Code: codes.FailedPrecondition, Reason: ReasonBlocked, Cause: cause, Profile: p.String(),
		Message: "Blocked: Cannot enforce AppArmor: " + fmt.Sprintf(format, args...),
	}
}

// checkHost checks that the host can confine p (the runtime's default
// profile for a container that is not privileged), in enforce mode if
// requireEnforce.
func checkHost(p Profile, privileged bool, host Host, pol *Policy, requireEnforce bool) *Refusal {
	if p.Type != Localhost && p.Type != RuntimeDefault {
		return checkRuntimeDefaultMode(p, privileged, host, pol, requireEnforce)
	}
	var snap *Snapshot
	if host != nil {
		snap = host.Snapshot()
	}
	switch {
	case snap == nil:
		return blocked("host-unreadable", p, "the host's AppArmor state is unknown")
	case snap.Err != nil:
		return blocked("host-unreadable", p, "cannot read the host's AppArmor state: %v", snap.Err)
	case !snap.Enabled:
		return blocked("not-enabled", p, "AppArmor is not enabled on the host")
	}
	if p.Type != Localhost {
		return checkRuntimeDefaultMode(p, privileged, snap, pol, requireEnforce)
	}
	mode, loaded := snap.Profiles[p.Name]
	if !loaded {
		return blocked("not-loaded", p, "profile %s is not loaded", quoted(p.Name))
	}
	if requireEnforce && mode != ModeEnforce {
		r := blocked("not-enforce", p, "profile %s is loaded in %s mode, but this node requires enforce mode", quoted(p.Name), mode)
		r.Rule = RuleRequireEnforce
		return r
	}
	return nil
}

// checkRuntimeDefaultMode applies RequireEnforce to the runtime's default
// profile, which a container gets for runtime/default or asking nothing
// (never when privileged): refused when the host lists it in another mode
// than enforce, or when the host cannot be read (its mode is then
// unknown). A default profile not loaded yet is the runtime's to load
// (containerd loads its own in enforce mode); on a host without AppArmor
// nothing is confined, and a container asking for nothing runs as it
// would without armorshim.
func checkRuntimeDefaultMode(p Profile, privileged bool, host Host, pol *Policy, requireEnforce bool) *Refusal {
	if !requireEnforce || pol.RuntimeDefault == "" || privileged || (p.Type != RuntimeDefault && p.Type != None) {
		return nil
	}
	var snap *Snapshot
	if host != nil {
		snap = host.Snapshot()
	}
	var r *Refusal
	switch {
	case snap == nil:
		r = blocked("host-unreadable", p, "the host's AppArmor state is unknown")
	case snap.Err != nil:
		r = blocked("host-unreadable", p, "cannot read the host's AppArmor state: %v", snap.Err)
	case !snap.Enabled:
		return nil
	default:
		mode, loaded := snap.Profiles[pol.RuntimeDefault]
		if !loaded || mode == ModeEnforce {
			return nil
		}
		r = blocked("not-enforce", p, "the runtime's default profile %s is loaded in %s mode, but this node requires enforce mode", quoted(pol.RuntimeDefault), mode)
	}
	r.Rule = RuleRequireEnforce
	return r
}

// apply sets both CRI fields to p and reports whether req changed.
func apply(req *runtimeapi.CreateContainerRequest, p Profile) bool {
	if p.Type == None {
		return false
	}
	want := &runtimeapi.SecurityProfile{LocalhostRef: p.Name}
	switch p.Type {
	case RuntimeDefault:
		want.ProfileType = runtimeapi.SecurityProfile_RuntimeDefault
	case Unconfined:
		want.ProfileType = runtimeapi.SecurityProfile_Unconfined
	case Localhost:
		want.ProfileType = runtimeapi.SecurityProfile_Localhost
	}
	sc := req.GetConfig().GetLinux().GetSecurityContext()
	if have := sc.GetApparmor(); have != nil && have.GetProfileType() == want.ProfileType &&
		have.GetLocalhostRef() == want.LocalhostRef && sc.GetApparmorProfile() == p.String() {
		return false
	}
	if req.Config == nil {
		req.Config = &runtimeapi.ContainerConfig{}
	}
	if req.Config.Linux == nil {
		req.Config.Linux = &runtimeapi.LinuxContainerConfig{}
	}
	if req.Config.Linux.SecurityContext == nil {
		req.Config.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{}
	}
	req.Config.Linux.SecurityContext.Apparmor = want
	req.Config.Linux.SecurityContext.ApparmorProfile = p.String()
	return true
}

// quoted returns s in Go quotes, bounded for messages and logs: a long or
// unprintable string is cut so that its quoted form stays under maxQuoted
// bytes, and its length is added.
func quoted(s string) string {
	if q := strconv.Quote(s); len(q) <= maxQuoted {
		return q
	}
	lo, hi := 0, len(s) // the longest prefix whose quoted form fits
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if len(strconv.Quote(s[:mid])) <= maxQuoted-5 {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return fmt.Sprintf("%s (%d bytes)", strconv.Quote(s[:lo]+"..."), len(s))
}
