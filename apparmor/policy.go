package apparmor

import (
	"fmt"
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
}

// Validate reports a policy that contradicts itself.
func (pol *Policy) Validate() error {
	if pol.Disabled && pol.Default.Type != None {
		return fmt.Errorf("defaultProfile %q is set but AppArmor is disabled (enabled: false)", pol.Default)
	}
	if pol.Allowed != nil && pol.Default.Type != None && !pol.allows(pol.Default) {
		return fmt.Errorf("defaultProfile %q is not in allowedProfiles [%s]", pol.Default, pol.allowedList())
	}
	return nil
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

// check applies the policy to the resolved profile p.
func (pol *Policy) check(p Profile) *Refusal {
	if pol.Disabled {
		if p.Type == None {
			return nil
		}
		return forbidden("disabled", p, "AppArmor is disabled on this node; the container asks for profile %s", quoted(p.String()))
	}
	if pol.Allowed == nil || pol.allows(p) {
		return nil
	}
	if p.Type == None {
		return forbidden("not-allowed", p, "an AppArmor profile must be set on this node; allowed profiles: [%s]", pol.allowedList())
	}
	return forbidden("not-allowed", p, "AppArmor profile %s is not allowed on this node; allowed profiles: [%s]", quoted(p.String()), pol.allowedList())
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
