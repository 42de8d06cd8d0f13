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
// runtimeDefault names the runtime's default profile (containerd:
// cri-containerd.apparmor.d); privileged containers get no default profile.
// It reports false when there is nothing to expect (no runtime default
// known).
func Expect(p Profile, privileged bool, runtimeDefault string, pol *Policy) (Expectation, bool) {
	switch p.Type {
	case Localhost:
		e := Expectation{Profile: p.Name}
		if pol != nil && pol.RequiresEnforceMode() {
			e.Mode = ModeEnforce
		}
		return e, true
	case Unconfined:
		return Expectation{Profile: UnconfinedRef}, true
	}
	// runtime/default, or nothing asked: the runtime's default.
	if privileged {
		return Expectation{Profile: UnconfinedRef}, true
	}
	if runtimeDefault == "" {
		return Expectation{}, false
	}
	return Expectation{Profile: runtimeDefault}, true
}

// ParseLabel splits a process label, "name (mode)" or "unconfined".
func ParseLabel(label string) (name string, mode Mode) {
	if i := strings.LastIndex(label, " ("); i >= 0 && strings.HasSuffix(label, ")") {
		return label[:i], Mode(label[i+2 : len(label)-1])
	}
	return label, ""
}

// Check compares a process label with the expectation and says how they
// differ, or "" when the label satisfies it.
func (e Expectation) Check(label string) string {
	name, mode := ParseLabel(label)
	switch {
	case name != e.Profile:
		return fmt.Sprintf("expected %s, the container runs %s", e, label)
	case e.Mode != "" && mode != e.Mode:
		return fmt.Sprintf("expected %s, the container runs %s: this node requires %s mode", e, label, e.Mode)
	}
	return ""
}
