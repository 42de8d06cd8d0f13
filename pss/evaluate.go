package pss

import (
	"fmt"
	"sort"

	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// Mode is a Pod Security Admission mode.
type Mode string

const (
	Enforce Mode = "enforce"
	Audit   Mode = "audit"
	Warn    Mode = "warn"
)

// Exemption reasons, as Pod Security Admission names them.
const (
	ExemptNamespace    = "namespace"
	ExemptRuntimeClass = "runtimeClass"
)

// Evaluator applies the configured policy with the upstream checks. It is
// immutable and safe for concurrent use.
type Evaluator struct {
	cfg      Config
	policies map[string]api.Policy
	checks   policy.Evaluator
	exemptNS map[string]bool
	exemptRC map[string]bool
}

// NewEvaluator checks c and builds its evaluator.
func NewEvaluator(c Config) (*Evaluator, error) {
	if c.KubeletRootDir == "" {
		c.KubeletRootDir = DefaultKubeletRootDir
	}
	if c.Defaults == (api.Policy{}) {
		c.Defaults = PrivilegedPolicy()
	}
	pols, err := namespacePolicies(c.Namespaces, c.Defaults)
	if err != nil {
		return nil, err
	}
	checks, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		return nil, err
	}
	e := &Evaluator{cfg: c, policies: pols, checks: checks, exemptNS: set(c.ExemptNamespaces), exemptRC: set(c.ExemptRuntimeClasses)}
	return e, nil
}

func set(l []string) map[string]bool {
	m := make(map[string]bool, len(l))
	for _, s := range l {
		m[s] = true
	}
	return m
}

// Config returns the configuration in force.
func (e *Evaluator) Config() *Config { return &e.cfg }

// Exemption says why a pod passes without evaluation ("" if it does not):
// its namespace or its runtime handler is exempt.
func (e *Evaluator) Exemption(namespace, runtimeHandler string) string {
	switch {
	case namespace != "" && e.exemptNS[namespace]:
		return ExemptNamespace
	case runtimeHandler != "" && e.exemptRC[runtimeHandler]:
		return ExemptRuntimeClass
	}
	return ""
}

// ExemptsRuntimeClasses says whether any runtime class is exempt, that is
// whether a container's runtime handler must be known.
func (e *Evaluator) ExemptsRuntimeClasses() bool { return len(e.exemptRC) > 0 }

// Policy returns a namespace's policy: its labels over the defaults.
func (e *Evaluator) Policy(namespace string) api.Policy {
	if p, ok := e.policies[namespace]; ok {
		return p
	}
	return e.cfg.Defaults
}

// Needs says whether any mode of the namespace's policy is above
// privileged, that is whether its pods need evaluating at all.
func (e *Evaluator) Needs(namespace string) bool {
	p := e.Policy(namespace)
	return !p.FullyPrivileged()
}

// Verdict is one mode's evaluation.
type Verdict struct {
	Mode   Mode
	Level  api.LevelVersion
	Result policy.AggregateCheckResult
}

// Allowed says whether the pod passed this mode's level.
func (v Verdict) Allowed() bool { return v.Result.Allowed }

// Message words a violation as Pod Security Admission does: enforce
// `violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)`,
// audit and warn `would violate PodSecurity "restricted:latest": ...`.
func (v Verdict) Message() string {
	if v.Result.Allowed {
		return ""
	}
	format := "would violate PodSecurity %q: %s"
	if v.Mode == Enforce {
		format = "violates PodSecurity %q: %s"
	}
	return fmt.Sprintf(format, v.Level.String(), v.Result.ForbiddenDetail())
}

// Decision is the evaluation of one pod (or pod and container) under its
// namespace's policy.
type Decision struct {
	Pod    *Pod
	Policy api.Policy
	// Verdicts are enforce, audit and (when enforce allowed the pod) warn,
	// as Pod Security Admission evaluates them.
	Verdicts []Verdict
}

// Mode returns the verdict of a mode, if it was evaluated.
func (d *Decision) Mode(m Mode) (Verdict, bool) {
	for _, v := range d.Verdicts {
		if v.Mode == m {
			return v, true
		}
	}
	return Verdict{}, false
}

// Denied returns the enforce verdict if it refuses the pod.
func (d *Decision) Denied() (Verdict, bool) {
	v, ok := d.Mode(Enforce)
	return v, ok && !v.Allowed()
}

// Evaluate runs the upstream checks for the pod's namespace policy. Like
// Pod Security Admission it evaluates each level-version once and skips
// warn when enforce refuses.
func (e *Evaluator) Evaluate(p *Pod) *Decision {
	d := &Decision{Pod: p, Policy: e.Policy(p.Meta.Namespace)}
	cache := map[api.LevelVersion]policy.AggregateCheckResult{}
	eval := func(m Mode, lv api.LevelVersion) {
		r, ok := cache[lv]
		if !ok {
			r = e.Check(lv, p)
			cache[lv] = r
		}
		d.Verdicts = append(d.Verdicts, Verdict{Mode: m, Level: lv, Result: r})
	}
	eval(Enforce, d.Policy.Enforce)
	eval(Audit, d.Policy.Audit)
	if v, _ := d.Mode(Enforce); v.Allowed() {
		eval(Warn, d.Policy.Warn)
	}
	return d
}

// Check evaluates a pod at one level and version.
func (e *Evaluator) Check(lv api.LevelVersion, p *Pod) policy.AggregateCheckResult {
	return policy.AggregateCheckResults(e.checks.EvaluatePod(lv, &p.Meta, &p.Spec))
}

// NamespaceWarnings words the pods of one namespace that violate lv as the
// API server does when a namespace's enforce label changes
// (`kubectl label --dry-run=server`): a header, then one line per distinct
// set of reasons, named by the lexically first pod and how many others
// share it, sorted. Pods with an exempt runtime class are skipped. No
// violation: no lines.
func (e *Evaluator) NamespaceWarnings(namespace string, lv api.LevelVersion, pods []*Pod) []string {
	type group struct {
		first string
		count int
	}
	groups := map[string]*group{}
	for _, p := range pods {
		if rc := p.Spec.RuntimeClassName; rc != nil && e.exemptRC[*rc] {
			continue
		}
		r := e.Check(lv, p)
		if r.Allowed {
			continue
		}
		reason := r.ForbiddenReason()
		g := groups[reason]
		if g == nil {
			g = &group{first: p.Meta.Name}
			groups[reason] = g
		} else if p.Meta.Name < g.first {
			g.first = p.Meta.Name
		}
		g.count++
	}
	if len(groups) == 0 {
		return nil
	}
	var lines []string
	for reason, g := range groups {
		switch g.count {
		case 1:
			lines = append(lines, fmt.Sprintf("%s: %s", g.first, reason))
		case 2:
			lines = append(lines, fmt.Sprintf("%s (and 1 other pod): %s", g.first, reason))
		default:
			lines = append(lines, fmt.Sprintf("%s (and %d other pods): %s", g.first, g.count-1, reason))
		}
	}
	sort.Strings(lines)
	head := fmt.Sprintf("existing pods in namespace %q violate the new PodSecurity enforce level %q", namespace, lv.String())
	return append([]string{head}, lines...)
}

// The upstream reasons that the image's user can change.
var userReasons = map[string]bool{"runAsNonRoot != true": true, "runAsUser=0": true}

// DependsOnUser says whether knowing the image's user could change the
// decision: enforce refuses for runAsNonRoot or runAsUser, or enforce
// allows and another mode finds one of them. A request refused for other
// reasons is refused without asking the runtime.
func (d *Decision) DependsOnUser() bool {
	has := func(v Verdict) bool {
		for _, r := range v.Result.ForbiddenReasons {
			if userReasons[r] {
				return true
			}
		}
		return false
	}
	if v, denied := d.Denied(); denied {
		return has(v)
	}
	for _, v := range d.Verdicts {
		if has(v) {
			return true
		}
	}
	return false
}
