package apparmor

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// Learning: a pod that asks for it (LearnAnnotation) on a node that allows
// it runs each container under a profile of its own in complain mode,
// which allows everything and makes the kernel log every access it would
// have denied ("ALLOWED" records). GenerateProfile turns those accesses
// into an enforceable profile.

// LearnAnnotation, on a pod, asks to learn a profile named by its value
// from the pod's containers.
const LearnAnnotation = "armorshim.io/learn"

// LearningPrefix starts the name of every learning profile armorshim
// loads; no other profile may use it.
const LearningPrefix = "armorshim-learn."

// maxLearnNameLen bounds a learned profile's name (the name of the profile
// generated, and part of each learning profile's).
const maxLearnNameLen = 100

var learnName = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$`)

// ValidLearnName says why name cannot name a learned profile, "" if it can:
// lower-case letters, digits, '.', '_' and '-', starting and ending with a
// letter or digit, at most 100 characters, not the learning prefix.
func ValidLearnName(name string) string {
	switch {
	case name == "":
		return "the name is empty"
	case len(name) > maxLearnNameLen:
		return fmt.Sprintf("the name is longer than %d characters", maxLearnNameLen)
	case !learnName.MatchString(name):
		return "the name may hold only lower-case letters, digits, '.', '_' and '-', and must start and end with a letter or digit"
	case strings.HasPrefix(name+".", LearningPrefix):
		return "the name is reserved for armorshim's learning profiles"
	}
	return ""
}

// LearningProfileName names the learning profile of one container:
// armorshim-learn.<name>.<pod uid>.<container>.<attempt>. The kubelet's
// pod UID and container name make it unique on the node.
func LearningProfileName(name, podUID, container string, attempt uint32) string {
	clean := func(s string) string {
		return strings.Map(func(r rune) rune {
			if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' {
				return r
			}
			if r >= 'A' && r <= 'Z' {
				return r + 'a' - 'A'
			}
			return '_'
		}, s)
	}
	return fmt.Sprintf("%s%s.%s.%s.%d", LearningPrefix, name, clean(podUID), clean(container), attempt)
}

// LearnedName returns the learned profile's name of a learning profile's
// label (its root, for the child profiles the kernel makes while
// learning), and false for labels of other profiles.
func LearnedName(label string) (string, bool) {
	rest, ok := strings.CutPrefix(LabelRoot(label), LearningPrefix)
	if !ok {
		return "", false
	}
	// The name may hold dots: the last three fields are the pod UID, the
	// container and the attempt.
	parts := strings.Split(rest, ".")
	if len(parts) < 4 {
		return "", false
	}
	name := strings.Join(parts[:len(parts)-3], ".")
	return name, name != ""
}

// SelfPeer stands, in what was learned, for the learning profile itself
// as a signal's or ptrace's peer or an exec's target.
const SelfPeer = "@self"

// LabelRoot is a label's first profile: without its mode suffix, children
// (//...) and stacked members.
func LabelRoot(label string) string {
	root, _, _ := strings.Cut(LabelName(label), "//")
	return root
}

// Learning is a container that runs under a learning profile.
type Learning struct {
	Name    string  // the profile to learn (the annotation's value)
	Profile Profile // its learning profile, localhost/armorshim-learn...
}

// DecideLearning decides a CreateContainer request of a pod that asks to
// learn a profile (LearnAnnotation on its sandbox config): refused, unless
// the node's policy lists the pod's namespace and the name is valid;
// allowed, the request is rewritten to run the container under its own
// learning profile, which the caller must load in complain mode before
// forwarding it. The policy's other rules do not apply to it: the node
// allows learning there. ok is false when the pod does not ask to learn.
func DecideLearning(req *runtimeapi.CreateContainerRequest, pol *Policy) (l Learning, dec Decision, ok bool, err error) {
	name, asked := req.GetSandboxConfig().GetAnnotations()[LearnAnnotation]
	if !asked {
		return Learning{}, Decision{}, false, nil
	}
	t := TargetOf(req)
	refuse := func(cause, format string, args ...any) (Learning, Decision, bool, error) {
		r := forbidden(cause, Profile{}, format, args...)
		r.Target = t
		return Learning{}, Decision{}, true, r
	}
	if pol != nil && pol.Disabled {
		return refuse("disabled", "AppArmor is disabled on this node; the pod asks to learn profile %q", name)
	}
	if pol == nil || !slices.Contains(pol.LearnNamespaces, t.Namespace) {
		return refuse("learning-not-allowed", "%s: learning a profile is not allowed in namespace %q on this node", LearnAnnotation, t.Namespace)
	}
	if why := ValidLearnName(name); why != "" {
		return refuse("learning-invalid-name", "%s: %q cannot name a profile: %s", LearnAnnotation, name, why)
	}
	meta := req.GetSandboxConfig().GetMetadata()
	if meta.GetUid() == "" || t.Container == "" {
		return refuse("learning-no-identity", "%s: the pod's UID and the container's name are needed to learn", LearnAnnotation)
	}
	l = Learning{Name: name, Profile: Profile{Type: Localhost,
		Name: LearningProfileName(name, meta.GetUid(), t.Container, req.GetConfig().GetMetadata().GetAttempt())}}
	dec = Decision{Profile: l.Profile, Source: SourceLearning}
	dec.Modified = apply(req, l.Profile)
	return l, dec, true, nil
}

// LearningProfile is the text of a learning profile: complain mode and no
// rules, so every access is allowed and logged; the flags of containerd's
// default profile, which containers need (paths outside the container's
// mount namespace, deleted files).
//
// Its one rule, an audited inherit-exec of any file, keeps what the
// workload runs in the profile (complain mode would move each program
// into a child profile of its own, whose network, signal and ptrace
// accesses the kernel neither checks nor logs) and logs each program run
// (AUDIT records), so that the generated profile lets it run.
func LearningProfile(profile string) string {
	return "abi <abi/3.0>,\n\nprofile " + profile + " flags=(complain,attach_disconnected,mediate_deleted) {\n  audit /** ix,\n}\n"
}

// Access is one access a learning profile allowed, as the kernel's
// ALLOWED record describes it.
type Access struct {
	Class     string `json:"class,omitempty"`     // file, cap, net, signal, ptrace, mount, unix
	Operation string `json:"operation,omitempty"` // open, mkdir, exec, capable, create, connect, signal ...
	Name      string `json:"name,omitempty"`      // the file, or the mount point
	Mask      string `json:"mask,omitempty"`      // requested_mask
	Capname   string `json:"capname,omitempty"`
	Family    string `json:"family,omitempty"`
	SockType  string `json:"sockType,omitempty"`
	Signal    string `json:"signal,omitempty"`
	Peer      string `json:"peer,omitempty"`
	FsType    string `json:"fstype,omitempty"`
	SrcName   string `json:"srcname,omitempty"`
	Flags     string `json:"flags,omitempty"`  // a mount's, as the kernel logs them: "rw, remount"
	Target    string `json:"target,omitempty"` // a link's target
}

// LearnedFrom says where a generated profile's accesses come from.
type LearnedFrom struct {
	Pods        []string // namespace/pod (container)
	First, Last time.Time
	Records     int // distinct accesses kept
	Dropped     int // accesses not kept (past the bound)
}

// GenerateProfile writes an AppArmor profile named name allowing the
// accesses learned (and nothing else: AppArmor denies what a profile does
// not allow). Files are grouped under Debian's abstractions/base; per-pid
// /proc paths become @{pid}, and a directory where the workload made three
// or more files sharing a prefix gets one rule for that prefix.
func GenerateProfile(name string, accesses []Access, from LearnedFrom) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: generated by armorshim from what its workload did while learning.\n", name)
	fmt.Fprintf(&b, "# Learned from: %s\n", strings.Join(from.Pods, ", "))
	if !from.First.IsZero() {
		fmt.Fprintf(&b, "# Between %s and %s (%s), %d distinct accesses",
			from.First.UTC().Format(time.RFC3339), from.Last.UTC().Format(time.RFC3339), from.Last.Sub(from.First).Round(time.Second), from.Records)
		if from.Dropped > 0 {
			fmt.Fprintf(&b, " (%d more not kept: past the bound)", from.Dropped)
		}
		b.WriteString(".\n")
	}
	b.WriteString("# AppArmor denies what is not allowed below: review it before enforcing, and\n" +
		"# learn again if the workload does more than it did while learning.\n\n")
	b.WriteString("abi <abi/3.0>,\n\ninclude <tunables/global>\n\n")
	fmt.Fprintf(&b, "profile %s flags=(attach_disconnected,mediate_deleted) {\n", name)
	b.WriteString("  include <abstractions/base>\n")

	var caps, nets, signals, ptraces, mounts, unixes []string
	files := map[string]string{} // path pattern -> permissions
	created := map[string]bool{} // patterns of files the workload created
	made := map[string]bool{}    // directories it made (mkdir)
	for _, a := range accesses {
		switch a.Class {
		case "cap":
			if a.Capname != "" {
				caps = append(caps, "  capability "+a.Capname+",")
			}
		case "net": // unix sockets too, where the kernel has no unix rules (Debian's)
			if a.Family != "" {
				r := "  network " + a.Family
				if a.SockType != "" {
					r += " " + a.SockType
				}
				nets = append(nets, r+",")
			}
		case "signal":
			r := "  signal"
			if m := maskList(a.Mask); m != "" {
				r += " (" + m + ")"
			}
			if a.Signal != "" {
				r += " set=(" + a.Signal + ")"
			}
			signals = append(signals, r+peerOf(a.Peer, name)+",")
		case "ptrace":
			r := "  ptrace"
			if m := maskList(a.Mask); m != "" {
				r += " (" + m + ")"
			}
			ptraces = append(ptraces, r+peerOf(a.Peer, name)+",")
		case "mount":
			// Every path the record names must have a pattern, or the rule
			// would lose that condition (a bare "mount," allows any mount).
			name, src := procPattern(a.Name), procPattern(a.SrcName)
			if a.Name != "" && name == "" || a.SrcName != "" && src == "" || !strings.HasPrefix(a.Name, "/") {
				continue
			}
			name, src = quotePath(name), quotePath(src)
			switch a.Operation {
			case "umount":
				mounts = append(mounts, "  umount "+name+",")
			case "pivotroot": // name: the new root, srcname: where the old goes
				r := "  pivot_root"
				if strings.HasPrefix(a.SrcName, "/") {
					r += " oldroot=" + src
				}
				mounts = append(mounts, r+" "+name+",")
			default: // mount, and remounts, binds, moves and propagation changes (flags)
				r := "  mount"
				if opts := mountOptions(a.Flags); opts != "" {
					r += " options=(" + opts + ")"
				}
				if fs := escapePattern(a.FsType); fs != "" && procPattern(a.FsType) != "" {
					r += " fstype=" + quotePath(fs)
				}
				if src != "" {
					r += " " + src
				}
				mounts = append(mounts, r+" -> "+name+",")
			}
		case "unix":
			unixes = append(unixes, unixRule(a))
		default: // file (and records without a class: file operations)
			if a.Name == "" || !strings.HasPrefix(a.Name, "/") {
				continue
			}
			perms := filePerms(a)
			p := procPattern(a.Name)
			if perms == "" || p == "" {
				continue
			}
			files[p] = mergePerms(files[p], perms)
			if strings.Contains(a.Mask, "c") {
				created[p] = true
				if a.Operation == "mkdir" {
					made[strings.TrimSuffix(p, "/")+"/"] = true
				}
			}
			if a.Operation == "link" && strings.HasPrefix(a.Target, "/") {
				if t := procPattern(a.Target); t != "" {
					files[t] = mergePerms(files[t], "l")
				}
			}
		}
	}
	section := func(title string, rules []string) {
		rules = uniqueSorted(rules)
		if len(rules) == 0 {
			return
		}
		b.WriteString("\n  # " + title + "\n")
		for _, r := range rules {
			b.WriteString(r + "\n")
		}
	}
	section("capabilities", caps)
	section("network", nets)
	section("unix sockets", unixes)
	section("signals", signals)
	section("ptrace", ptraces)
	section("mounts", mounts)
	var fileRules []string
	for p, perms := range collapseFiles(files, created, made) {
		fileRules = append(fileRules, "  "+quotePath(p)+" "+perms+",")
	}
	section("files", fileRules)
	b.WriteString("}\n")
	return b.String()
}

// filePerms maps a file record's requested mask to a rule's permissions:
// r read, w write (create, delete, write, rename and attribute changes:
// AppArmor asks w for them), a append, k lock, l link, m mmap for
// execution, and ix for exec (the helper runs under the same profile).
func filePerms(a Access) string {
	var p strings.Builder
	for _, c := range a.Mask {
		switch c {
		case 'r':
			p.WriteByte('r')
		case 'w', 'c', 'd':
			p.WriteByte('w')
		case 'a':
			p.WriteByte('a')
		case 'k':
			p.WriteByte('k')
		case 'l':
			p.WriteByte('l')
		case 'm':
			p.WriteByte('m')
		case 'x':
			p.WriteString("ix")
		}
	}
	if a.Operation == "exec" && !strings.Contains(p.String(), "ix") {
		p.WriteString("ix")
	}
	return mergePerms("", p.String())
}

// permOrder is the order AppArmor's tools write file permissions in.
var permOrder = []string{"r", "w", "a", "l", "k", "m", "ix"}

// mergePerms joins two permission strings, each permission once, w
// making a redundant.
func mergePerms(a, b string) string {
	have := map[string]bool{}
	for _, s := range []string{a, b} {
		for i := 0; i < len(s); i++ {
			if s[i] == 'i' && i+1 < len(s) && s[i+1] == 'x' {
				have["ix"] = true
				i++
				continue
			}
			have[string(s[i])] = true
		}
	}
	if have["w"] {
		delete(have, "a")
	}
	var out strings.Builder
	for _, p := range permOrder {
		if have[p] {
			out.WriteString(p)
		}
	}
	return out.String()
}

// procPattern writes a path as a rule's pattern: AppArmor's special
// characters escaped, and /proc paths with its variables: @{PROC}, and
// @{pid} and @{tid} for process and thread ids. A path with control
// characters has no pattern ("").
func procPattern(p string) string {
	if strings.IndexFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		return ""
	}
	rest, ok := strings.CutPrefix(p, "/proc/")
	if !ok {
		return escapePattern(p)
	}
	segs := strings.Split(rest, "/")
	for i := range segs {
		segs[i] = escapePattern(segs[i])
	}
	if isDigits(segs[0]) {
		segs[0] = "@{pid}"
		if len(segs) > 2 && segs[1] == "task" && isDigits(segs[2]) {
			segs[2] = "@{tid}"
		}
	}
	return "@{PROC}/" + strings.Join(segs, "/")
}

// escapePattern escapes what AppArmor's parser reads as a pattern or
// variable in a file name (* ? [ ] { } ^ @ !), byte by byte; the backslash
// and the quote are written as octal escapes, which read the same quoted
// or not (a quoted name ending in "\\" would swallow its closing quote).
func escapePattern(s string) string {
	if !strings.ContainsAny(s, `*?[]{}^@!\"`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			b.WriteString(`\134`)
		case '"':
			b.WriteString(`\042`)
		case '*', '?', '[', ']', '{', '}', '^', '@', '!':
			b.WriteByte('\\')
			b.WriteByte(c)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// mountFlags are the mount flags AppArmor logs that a rule's options=
// takes as they are.
var mountFlags = map[string]bool{
	"ro": true, "rw": true, "nosuid": true, "suid": true, "nodev": true, "dev": true, "noexec": true, "exec": true,
	"sync": true, "async": true, "remount": true, "mand": true, "nomand": true, "dirsync": true, "noatime": true,
	"atime": true, "nodiratime": true, "diratime": true, "bind": true, "rbind": true, "move": true, "verbose": true,
	"silent": true, "loud": true, "acl": true, "noacl": true, "unbindable": true, "runbindable": true, "private": true,
	"rprivate": true, "slave": true, "rslave": true, "shared": true, "rshared": true, "relatime": true, "norelatime": true,
	"iversion": true, "noiversion": true, "strictatime": true, "nostrictatime": true, "lazytime": true, "nolazytime": true,
	"make-unbindable": true, "make-runbindable": true, "make-private": true, "make-rprivate": true, "make-slave": true,
	"make-rslave": true, "make-shared": true, "make-rshared": true,
}

// mountOptions turns a record's flags ("rw, remount") into a rule's
// options, those AppArmor knows, in order.
func mountOptions(flags string) string {
	var out []string
	for _, f := range strings.FieldsFunc(flags, func(r rune) bool { return r == ',' || r == ' ' }) {
		if mountFlags[f] {
			out = append(out, f)
		}
	}
	return strings.Join(out, ",")
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// collapseFiles gives one rule to three or more files of one directory
// that share a name prefix of at least three characters and the same
// permissions, where the workload created them all (temporary files,
// numbered files) and the directory is a temporary one or one it made:
// elsewhere a prefix could take in files it never touched (/etc/sha1,
// /etc/sha2 and /etc/sha3 are no pattern for /etc/sha*: /etc/shadow).
// Other paths keep a rule each.
func collapseFiles(files map[string]string, created, made map[string]bool) map[string]string {
	type group struct {
		dir, perms string
		names      []string
	}
	groups := map[[2]string]*group{}
	for p, perms := range files {
		i := strings.LastIndexByte(p, '/')
		if i < 0 || i == len(p)-1 || !created[p] || strings.ContainsAny(p[i+1:], `*?[{@\`) {
			continue // a pattern, a name with escapes, or not the workload's
		}
		dir := p[:i+1]
		if !made[dir] && !slices.ContainsFunc(tempDirs, func(t string) bool { return strings.HasPrefix(dir, t) }) {
			continue
		}
		k := [2]string{dir, perms}
		g := groups[k]
		if g == nil {
			g = &group{dir: dir, perms: perms}
			groups[k] = g
		}
		g.names = append(g.names, p[i+1:])
	}
	out := map[string]string{}
	for p, perms := range files {
		out[p] = perms
	}
	for _, g := range groups {
		if len(g.names) < 3 {
			continue
		}
		prefix := commonPrefix(g.names)
		if len(prefix) < 3 {
			continue
		}
		for _, n := range g.names {
			delete(out, g.dir+n)
		}
		out[g.dir+prefix+"*"] = mergePerms(out[g.dir+prefix+"*"], g.perms)
	}
	return out
}

// tempDirs are where workloads make temporary files.
var tempDirs = []string{"/tmp/", "/var/tmp/", "/dev/shm/", "/run/"}

func commonPrefix(names []string) string {
	p := names[0]
	for _, n := range names[1:] {
		for !strings.HasPrefix(n, p) {
			p = p[:len(p)-1]
		}
	}
	return p
}

// maskList turns a requested mask ("send", "receive send", "read trace")
// into a rule's list.
func maskList(m string) string {
	return strings.Join(strings.Fields(m), ", ")
}

// peerOf is a rule's peer clause: the learning profile itself becomes the
// generated one.
func peerOf(peer, name string) string {
	if peer == "" {
		return ""
	}
	if peer == SelfPeer {
		return " peer=" + name
	}
	if other, ok := LearnedName(peer); ok { // another pod learning: what it learns
		return " peer=" + other
	}
	return " peer=" + quotePath(LabelName(peer))
}

func unixRule(a Access) string {
	r := "  unix"
	if m := maskList(a.Mask); m != "" {
		r += " (" + m + ")"
	}
	if a.SockType != "" {
		r += " type=" + a.SockType
	}
	return r + ","
}

// quotePath quotes a pattern that holds characters AppArmor's parser
// would not take bare (its quotes are escaped already: escapePattern).
func quotePath(p string) string {
	if strings.ContainsAny(p, " \t#,!\\") {
		return `"` + p + `"`
	}
	return p
}

func uniqueSorted(rules []string) []string {
	sort.Strings(rules)
	out := rules[:0]
	for i, r := range rules {
		if i == 0 || r != rules[i-1] {
			out = append(out, r)
		}
	}
	return out
}
