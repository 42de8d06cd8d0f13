package apparmor

import (
	"fmt"
	"strings"
)

// Expectation is the confinement a container's first process must run
// under once started.
type Expectation struct {
	Profile string // the profile's name, or "unconfined"
	Mode    Mode   // the required mode; "" accepts any
}

func (e Expectation) String() string {
	if e.Mode == "" || e.Profile == UnconfinedRef {
		return e.Profile
	}
	return fmt.Sprintf("%s (%s)", e.Profile, e.Mode)
}

// Expect returns what a container created with profile p must run under.
// The runtime's default profile (pol.RuntimeDefault; containerd:
// cri-containerd.apparmor.d) applies to runtime/default and to a container
// asking nothing, but privileged containers get no default profile. With
// pol.RequireEnforce enforced (not in warn or audit mode) the profile,
// localhost or the runtime's default, must run in enforce mode. It reports false when there is nothing to expect
// (the runtime's default profile is not known).
func Expect(p Profile, privileged bool, pol *Policy) (Expectation, bool) {
	if pol == nil {
		pol = &Policy{}
	}
	var e Expectation
	switch {
	case p.Type == Localhost && strings.HasPrefix(p.Name, LearningPrefix):
		return Expectation{Profile: p.Name}, true // complain mode, whatever the policy
	case p.Type == Localhost:
		e.Profile = p.Name
	case p.Type == Unconfined || privileged:
		return Expectation{Profile: UnconfinedRef}, true
	case pol.RuntimeDefault == "":
		// runtime/default, or nothing asked: the runtime's default.
		return Expectation{}, false
	default:
		e.Profile = pol.RuntimeDefault
	}
	if pol.RequiresEnforceMode() {
		e.Mode = ModeEnforce
	}
	return e, true
}

// Check compares a process label with the expectation and says how they
// differ, or "" when the label satisfies it. modes are the loaded
// profiles' modes (Snapshot.Profiles, may be nil): they tell the mode of a
// stack member where the label's mode suffix does not ("mixed").
//
// The rules are the kernel's. "unconfined" is satisfied by any label: a
// container decided unconfined (asked so, or privileged) that a host
// profile attached by path confines (tcpdump's on Ubuntu) is confined more,
// never less, than decided, and stopping it would only break it (see
// MoreConfined). A profile is satisfied by a
// label one of whose members is that profile or one of its children or
// hats (in the same namespace): a process moves into a child profile or
// hat only where its profile allows it (px/cx rules, change_hat), and
// every other member of a stack only confines it further. With a required
// mode, that member must run in it.
func (e Expectation) Check(label string, modes map[string]Mode) string {
	l := ParseLabel(label)
	if e.Profile == UnconfinedRef {
		return ""
	}
	want := parseMember(e.Profile, "")
	found := false
	for _, m := range l.Members {
		if !m.Within(want) {
			continue
		}
		if e.Mode == "" || l.modeOf(m, modes) == e.Mode {
			return ""
		}
		found = true
	}
	if found {
		return fmt.Sprintf("expected %s, the container runs %s: this node requires %s mode", e, label, e.Mode)
	}
	return fmt.Sprintf("expected %s, the container runs %s", e, label)
}

// MoreConfined reports whether a label that satisfies e confines more than
// e decided: e is "unconfined" and the label confines something (see
// Label.Unconfined).
func (e Expectation) MoreConfined(label string, modes map[string]Mode) bool {
	return e.Profile == UnconfinedRef && !ParseLabel(label).Unconfined(modes)
}
