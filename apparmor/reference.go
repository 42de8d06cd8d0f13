package apparmor

import (
	"fmt"
	"strings"
)

// Reference forms, as in the Kubernetes API and the beta annotation.
const (
	RuntimeDefaultRef = "runtime/default"
	UnconfinedRef     = "unconfined"
	LocalhostPrefix   = "localhost/"

	// AnnotationPrefix is the beta pod annotation naming a container's profile.
	AnnotationPrefix = "container.apparmor.security.beta.kubernetes.io/"

	// MaxNameLength is the Kubernetes API limit on a localhost profile name.
	MaxNameLength = 4095
)

// Type is the kind of profile a reference names.
type Type int

const (
	// None: nothing was requested; the runtime applies its own default.
	None Type = iota
	RuntimeDefault
	Unconfined
	Localhost
)

func (t Type) String() string {
	switch t {
	case RuntimeDefault:
		return "runtime-default"
	case Unconfined:
		return "unconfined"
	case Localhost:
		return "localhost"
	}
	return "none"
}

// Profile is a parsed, validated profile reference. The zero value is None.
type Profile struct {
	Type Type
	// Name is the bare profile name of a Localhost profile, as it appears in
	// securityfs (it may hold "//" children and a ":ns:" prefix).
	Name string
}

// String returns the reference form: runtime/default, unconfined,
// localhost/<name>, or "" for None.
func (p Profile) String() string {
	switch p.Type {
	case RuntimeDefault:
		return RuntimeDefaultRef
	case Unconfined:
		return UnconfinedRef
	case Localhost:
		return LocalhostPrefix + p.Name
	}
	return ""
}

// InvalidError reports a reference that is not one of the accepted forms.
type InvalidError struct {
	Ref    string
	Reason string
}

func (e *InvalidError) Error() string {
	ref := quoted(e.Ref)
	if e.Reason == "" {
		return "invalid AppArmor profile name: " + ref
	}
	return "invalid AppArmor profile name: " + ref + ": " + e.Reason
}

// maxQuoted bounds how much of a reference goes into messages and logs.
const maxQuoted = 256

// ParseReference parses runtime/default, unconfined or localhost/<name>.
// Anything else, and any localhost name that ValidateName rejects, is an
// *InvalidError.
func ParseReference(ref string) (Profile, error) {
	switch {
	case ref == RuntimeDefaultRef:
		return Profile{Type: RuntimeDefault}, nil
	case ref == UnconfinedRef:
		return Profile{Type: Unconfined}, nil
	case strings.HasPrefix(ref, LocalhostPrefix):
		name := ref[len(LocalhostPrefix):]
		if reason := ValidateName(name); reason != "" {
			return Profile{}, &InvalidError{Ref: ref, Reason: reason}
		}
		return Profile{Type: Localhost, Name: name}, nil
	}
	return Profile{}, &InvalidError{Ref: ref}
}

// ValidateName returns why name cannot be a localhost profile name, or "".
// The rules are the Kubernetes API's.
func ValidateName(name string) string {
	switch {
	case name == "":
		return "the localhost profile name must not be empty"
	case strings.TrimSpace(name) != name:
		return "the profile name must not be padded with whitespace"
	case len(name) > MaxNameLength:
		return fmt.Sprintf("the profile name must be at most %d bytes", MaxNameLength)
	}
	return ""
}
