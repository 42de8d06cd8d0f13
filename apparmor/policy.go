package apparmor

import (
	"fmt"
	"slices"
	"strings"

	"google.golang.org/grpc/codes"
)

// Policy is the node's AppArmor policy. The zero value allows every valid
// request and adds no default.
type Policy struct {
	// Disabled switches AppArmor off on this node (the AppArmor tutorial's feature gate
	// set to false): a container asking for any profile is Forbidden.
	Disabled bool
	// Default is applied when a container asks for nothing (the
	// PodSecurityPolicy defaultProfileName).
	Default Profile
	// Allowed, when non-nil, lists the only profiles a container may run
	// with (the PodSecurityPolicy allowedProfileNames).
	Allowed []Profile
	// RequireEnforce refuses localhost profiles not loaded in enforce mode,
	// and the runtime's default profile when it is loaded in another mode;
	// attestation then requires enforce mode of the running process too.
	RequireEnforce bool
	// RuntimeDefault is the profile the runtime applies for runtime/default
	// and to containers asking nothing, unless privileged (containerd:
	// cri-containerd.apparmor.d); "" if not known.
	RuntimeDefault string
	// Modes says how each rule applies; a rule it does not name is
	// enforced. The checks of the host (a profile not loaded, AppArmor off
	// on the host) and Disabled are always enforced.
	Modes map[Rule]RuleMode
	// LearnNamespaces are the namespaces whose pods may ask to learn a
	// profile (LearnAnnotation); none when empty.
	LearnNamespaces []string
}

// Rule names a policy rule whose mode can be set, as the configuration
// names it.
type Rule string

const (
	RuleAllowedProfiles Rule = "allowedProfiles"
	RuleDefaultProfile  Rule = "defaultProfile"
	RuleRequireEnforce  Rule = "requireEnforce"
)

// Rules are the rules whose mode can be set.
var Rules = []Rule{RuleAllowedProfiles, RuleDefaultProfile, RuleRequireEnforce}

// RuleMode is how a rule applies, as Pod Security's modes: enforced (the
// zero value), or a dry run that warns (log and metric), audits (audit log
// and metric), or both. A request is decided as if a rule in dry run did
// not exist, and what enforcing it would have done is reported.
type RuleMode uint8

const (
	Enforce RuleMode = 0
	Warn    RuleMode = 1 << 0
	Audit   RuleMode = 1 << 1
)

// Enforced reports whether the rule refuses (or, for defaultProfile,
// applies) rather than only reports.
func (m RuleMode) Enforced() bool { return m == Enforce }

// Words returns the mode as the configuration writes it: enforce, warn,
// audit, or warn and audit.
func (m RuleMode) Words() []string {
	if m == Enforce {
		return []string{"enforce"}
	}
	var w []string
	if m&Warn != 0 {
		w = append(w, "warn")
	}
	if m&Audit != 0 {
		w = append(w, "audit")
	}
	return w
}

// String is the mode as YAML would write it: a word, or a flow list.
func (m RuleMode) String() string {
	if w := m.Words(); len(w) > 1 {
		return "[" + strings.Join(w, ", ") + "]"
	} else if len(w) == 1 {
		return w[0]
	}
	return fmt.Sprintf("RuleMode(%d)", uint8(m))
}

// ParseRuleMode reads a mode from its words: enforce, warn or audit, or
// warn and audit together.
func ParseRuleMode(words []string) (RuleMode, error) {
	if len(words) == 0 {
		return 0, fmt.Errorf("no mode: write enforce, warn, audit or [warn, audit]")
	}
	var m RuleMode
	enforce := false
	for _, w := range words {
		var bit RuleMode
		switch w {
		case "enforce":
			if enforce {
				return 0, fmt.Errorf("enforce is repeated")
			}
			enforce = true
			continue
		case "warn":
			bit = Warn
		case "audit":
			bit = Audit
		default:
			return 0, fmt.Errorf("%q is not enforce, warn or audit", w)
		}
		if m&bit != 0 {
			return 0, fmt.Errorf("%s is repeated", w)
		}
		m |= bit
	}
	if enforce && m != Enforce {
		return 0, fmt.Errorf("enforce cannot be combined with warn or audit")
	}
	return m, nil
}

// Mode returns how rule r applies.
func (pol *Policy) Mode(r Rule) RuleMode { return pol.Modes[r] }

// DryRuns reports whether any rule is in warn or audit mode.
func (pol *Policy) DryRuns() bool {
	for _, m := range pol.Modes {
		if !m.Enforced() {
			return true
		}
	}
	return false
}

// RequiresEnforceMode reports whether localhost profiles must be loaded in
// enforce mode: requireEnforce is set and enforced.
func (pol *Policy) RequiresEnforceMode() bool {
	return pol.RequireEnforce && pol.Mode(RuleRequireEnforce).Enforced()
}

// Validate reports a policy that contradicts itself.
func (pol *Policy) Validate() error {
	if pol.Disabled && pol.Default.Type != None {
		return fmt.Errorf("defaultProfile: %q is set but AppArmor is disabled (enabled: false)", pol.Default)
	}
	if pol.Allowed != nil && pol.Default.Type != None && !pol.allows(pol.Default) {
		return fmt.Errorf("defaultProfile: %q is not in allowedProfiles [%s]", pol.Default, pol.allowedList())
	}
	for r, m := range pol.Modes {
		if !slices.Contains(Rules, r) {
			return fmt.Errorf("mode of %q: not a rule whose mode can be set (%s)", r, ruleList())
		}
		if m&^(Warn|Audit) != 0 {
			return fmt.Errorf("%s: %s is not enforce, warn or audit", r, m)
		}
	}
	return nil
}

func ruleList() string {
	names := make([]string, len(Rules))
	for i, r := range Rules {
		names[i] = string(r)
	}
	return strings.Join(names, ", ")
}

func (pol *Policy) allows(p Profile) bool {
	for _, a := range pol.Allowed {
		if a == p {
			return true
		}
	}
	return false
}

func (pol *Policy) allowedList() string {
	refs := make([]string, len(pol.Allowed))
	for i, a := range pol.Allowed {
		refs[i] = a.String()
	}
	return strings.Join(refs, ", ")
}

func forbidden(cause string, p Profile, format string, args ...any) *Refusal {
	return &Refusal{
		Code: codes.PermissionDenied, Reason: ReasonForbidden, Cause: cause, Profile: p.String(),
		Message: "Forbidden: " + fmt.Sprintf(format, args...),
	}
}

// check applies the policy to the resolved profile p; allowedProfiles only
// if allowed is set.
func (pol *Policy) check(p Profile, allowed bool) *Refusal {
	if p.Type == Localhost && strings.HasPrefix(p.Name, LearningPrefix) {
		return forbidden("reserved", p, "AppArmor profile %s is reserved: armorshim runs containers that learn a profile under profiles named %s*", quoted(p.String()), LearningPrefix)
	}
	if pol.Disabled {
		if p.Type == None {
			return nil
		}
		return forbidden("disabled", p, "AppArmor is disabled on this node; the container asks for profile %s", quoted(p.String()))
	}
	if !allowed || pol.Allowed == nil || pol.allows(p) {
		return nil
	}
	var r *Refusal
	if p.Type == None {
		r = forbidden("not-allowed", p, "an AppArmor profile must be set on this node; allowed profiles: [%s]", pol.allowedList())
	} else {
		r = forbidden("not-allowed", p, "AppArmor profile %s is not allowed on this node; allowed profiles: [%s]", quoted(p.String()), pol.allowedList())
	}
	r.Rule = RuleAllowedProfiles
	return r
}

// ParseProfileList parses a list of references given as list items and/or
// comma-separated strings, like the PodSecurityPolicy annotation. There are no
// escapes: "%2C" in a name is not a separator. Spaces around an item are
// ignored; an empty item is an error.
func ParseProfileList(items []string) ([]Profile, error) {
	out := []Profile{}
	for _, item := range items {
		for _, ref := range strings.Split(item, ",") {
			p, err := ParseReference(strings.TrimSpace(ref))
			if err != nil {
				return nil, err
			}
			out = append(out, p)
		}
	}
	return out, nil
}
