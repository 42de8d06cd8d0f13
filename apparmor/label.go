package apparmor

import "strings"

// A process's label is what the kernel prints in /proc/<pid>/attr/current
// (aa_label_snxprint): the profiles confining it, joined by "//&" when it
// runs with a stack, then one mode suffix for the whole label, " (enforce)",
// " (complain)", " (kill)", " (unconfined)", " (mixed)" when the members'
// modes differ, and so on. The namespace's unconfined profile alone is
// printed "unconfined", without a mode. A member in another policy
// namespace than the reader's is prefixed ":ns:"; members after it without
// a prefix are in that namespace too (the kernel sorts the members by
// namespace, the root's first, and prints the prefix only when the
// namespace changes). A child profile or hat is part of its parent's name:
// "k8s-web//nginx", and "k8s-web//worker" for the hat "^worker" (the caret
// is policy syntax, never part of a name the kernel prints; a label
// "k8s-web^worker" is a top-level profile of that name).

// Mode names the kernel prints besides enforce and complain.
const (
	ModeKill       Mode = "kill"
	ModeUnconfined Mode = "unconfined"
	// ModeMixed: the members of a stack run in different modes.
	ModeMixed Mode = "mixed"
	// modeNone is what kernels without upstream commit dd2569fbb053 (5.8,
	// backported to stable) print when every member of a label is a
	// profile in unconfined mode (label_modename skipped them).
	modeNone Mode = "-"
)

// Label is a process label, split.
type Label struct {
	Members []Member
	// Mode is the label's mode suffix, "" when it has none.
	Mode Mode
}

// Member is one profile of a label.
type Member struct {
	// NS is the policy namespace, "" for the reader's (the root namespace
	// for armorshim).
	NS string
	// Name is the profile's full name, children and hats included.
	Name string
}

func (m Member) String() string {
	if m.NS == "" {
		return m.Name
	}
	return ":" + m.NS + ":" + m.Name
}

// unconfinedName is the name of each namespace's unconfined profile.
const unconfinedName = "unconfined"

// ParseLabel splits a process label, e.g. "k8s-web//&cri-containerd.apparmor.d
// (enforce)" or "unconfined".
func ParseLabel(label string) Label {
	var l Label
	name := label
	if i := strings.LastIndex(label, " ("); i >= 0 && strings.HasSuffix(label, ")") {
		if m := label[i+2 : len(label)-1]; m != "" && !strings.ContainsAny(m, " ()") {
			name, l.Mode = label[:i], Mode(m)
		}
	}
	ns := ""
	for {
		part, rest, more := strings.Cut(name, "//&")
		m := parseMember(part, ns)
		ns = m.NS
		l.Members = append(l.Members, m)
		if !more {
			return l
		}
		name = rest
	}
}

// parseMember reads one member, ":ns:name", ":ns://name" or "name" (in
// namespace ns).
func parseMember(s, ns string) Member {
	if rest, ok := strings.CutPrefix(s, ":"); ok {
		if n, name, ok := strings.Cut(rest, ":"); ok {
			return Member{NS: n, Name: strings.TrimPrefix(name, "//")}
		}
	}
	return Member{NS: ns, Name: s}
}

// Within reports whether m is profile p or one of its children or hats, in
// the same namespace: "k8s-web//nginx" is within "k8s-web", "k8s-webx" and
// "other//k8s-web" are not.
func (m Member) Within(p Member) bool {
	return m.NS == p.NS && (m.Name == p.Name || strings.HasPrefix(m.Name, p.Name+"//"))
}

// modeOf returns the mode member m of l runs in: the label's mode when it
// is one mode, else (mixed, "-") the mode modes lists for m's profile; ""
// if that is unknown.
func (l Label) modeOf(m Member, modes map[string]Mode) Mode {
	switch l.Mode {
	case ModeMixed, modeNone, "":
		if mode, ok := modes[m.String()]; ok {
			return mode
		}
		if m.NS != "" {
			if mode, ok := modes[":"+m.NS+"://"+m.Name]; ok {
				return mode
			}
		}
		if l.Mode == modeNone {
			return ModeUnconfined
		}
		return ""
	}
	return l.Mode
}

// Unconfined reports whether l leaves the process unconfined: every member
// is its namespace's unconfined profile ("unconfined") or a profile in
// unconfined mode ("buildah (unconfined)", which the kernel attaches by
// path to an unconfined process that executes /usr/bin/buildah, and which
// confines nothing). modes (the loaded profiles' modes) tells the mode of a
// member the label's suffix does not, as in a mixed stack.
func (l Label) Unconfined(modes map[string]Mode) bool {
	if len(l.Members) == 0 {
		return false
	}
	for _, m := range l.Members {
		if m.Name != unconfinedName && l.modeOf(m, modes) != ModeUnconfined {
			return false
		}
	}
	return true
}

// LabelName is a process label without its mode suffix.
func LabelName(label string) string {
	if l := ParseLabel(label); l.Mode != "" {
		return label[:len(label)-len(l.Mode)-3]
	}
	return label
}
