package apparmor_test

import (
	"reflect"
	"strings"
	"testing"

	"github.com/armorshim/armorshim/apparmor"
)

const rd = "cri-containerd.apparmor.d"

func TestExpectAndCheck(t *testing.T) {
	deny := apparmor.Profile{Type: apparmor.Localhost, Name: "k8s-apparmor-example-deny-write"}
	withRD := &apparmor.Policy{RuntimeDefault: rd}
	enforce := &apparmor.Policy{RequireEnforce: true, RuntimeDefault: rd}
	for _, c := range []struct {
		name       string
		p          apparmor.Profile
		privileged bool
		pol        *apparmor.Policy
		label      string
		mismatch   string // substring of the mismatch, "" for a match
	}{
		{"localhost enforced", deny, false, withRD, "k8s-apparmor-example-deny-write (enforce)", ""},
		{"localhost in complain, any mode", deny, false, withRD, "k8s-apparmor-example-deny-write (complain)", ""},
		{"localhost in complain, enforce required", deny, false, enforce, "k8s-apparmor-example-deny-write (complain)", "requires enforce mode"},
		{"localhost but unconfined", deny, false, withRD, "unconfined", "expected k8s-apparmor-example-deny-write, the container runs unconfined"},
		{"localhost but another profile", deny, false, withRD, "k8s-apparmor-example-allow-write (enforce)", "runs k8s-apparmor-example-allow-write (enforce)"},
		{"localhost on privileged still applies", deny, true, withRD, "k8s-apparmor-example-deny-write (enforce)", ""},
		{"runtime default", apparmor.Profile{Type: apparmor.RuntimeDefault}, false, withRD, rd + " (enforce)", ""},
		{"nothing asked gets the runtime default", apparmor.Profile{}, false, withRD, rd + " (enforce)", ""},
		{"runtime default swapped", apparmor.Profile{Type: apparmor.RuntimeDefault}, false, withRD, "unconfined", "expected " + rd},
		{"runtime default in complain, enforce required", apparmor.Profile{Type: apparmor.RuntimeDefault}, false, enforce, rd + " (complain)", "expected " + rd + " (enforce), the container runs " + rd + " (complain): this node requires enforce mode"},
		{"nothing asked, enforce required", apparmor.Profile{}, false, enforce, rd + " (complain)", "requires enforce mode"},
		{"runtime default enforced, enforce required", apparmor.Profile{Type: apparmor.RuntimeDefault}, false, enforce, rd + " (enforce)", ""},
		{"privileged runtime default is unconfined", apparmor.Profile{Type: apparmor.RuntimeDefault}, true, enforce, "unconfined", ""},
		{"unconfined", apparmor.Profile{Type: apparmor.Unconfined}, false, withRD, "unconfined", ""},
		{"unconfined but confined more", apparmor.Profile{Type: apparmor.Unconfined}, false, withRD, rd + " (enforce)", ""},
		{"profile name with spaces and parens", apparmor.Profile{Type: apparmor.Localhost, Name: "a (b) c"}, false, enforce, "a (b) c (enforce)", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, ok := apparmor.Expect(c.p, c.privileged, c.pol)
			if !ok {
				t.Fatal("nothing expected")
			}
			got := e.Check(c.label, nil)
			if (c.mismatch == "") != (got == "") || !strings.Contains(got, c.mismatch) {
				t.Errorf("Check(%q) against %s = %q, want %q", c.label, e, got, c.mismatch)
			}
		})
	}
	for _, pol := range []*apparmor.Policy{nil, {RequireEnforce: true}} {
		if _, ok := apparmor.Expect(apparmor.Profile{}, false, pol); ok {
			t.Errorf("an unknown runtime default gave an expectation (policy %+v)", pol)
		}
	}
}

func TestParseLabel(t *testing.T) {
	m := func(ns, name string) apparmor.Member { return apparmor.Member{NS: ns, Name: name} }
	for _, c := range []struct {
		label string
		want  apparmor.Label
	}{
		{"unconfined", apparmor.Label{Members: []apparmor.Member{m("", "unconfined")}}},
		{"k8s-web (enforce)", apparmor.Label{Members: []apparmor.Member{m("", "k8s-web")}, Mode: apparmor.ModeEnforce}},
		{"k8s-web//nginx (complain)", apparmor.Label{Members: []apparmor.Member{m("", "k8s-web//nginx")}, Mode: apparmor.ModeComplain}},
		{"k8s-web//worker (kill)", apparmor.Label{Members: []apparmor.Member{m("", "k8s-web//worker")}, Mode: apparmor.ModeKill}},
		{"k8s-web//&cri-containerd.apparmor.d (mixed)", apparmor.Label{Members: []apparmor.Member{m("", "k8s-web"), m("", rd)}, Mode: apparmor.ModeMixed}},
		{"buildah (unconfined)", apparmor.Label{Members: []apparmor.Member{m("", "buildah")}, Mode: apparmor.ModeUnconfined}},
		{":lxd:k8s-web (enforce)", apparmor.Label{Members: []apparmor.Member{m("lxd", "k8s-web")}, Mode: apparmor.ModeEnforce}},
		{":lxd://k8s-web (enforce)", apparmor.Label{Members: []apparmor.Member{m("lxd", "k8s-web")}, Mode: apparmor.ModeEnforce}},
		// Members after a namespaced one are in its namespace.
		{"a//&:lxd:b//&c (enforce)", apparmor.Label{Members: []apparmor.Member{m("", "a"), m("lxd", "b"), m("lxd", "c")}, Mode: apparmor.ModeEnforce}},
		{"/usr/bin/foo (enforce)", apparmor.Label{Members: []apparmor.Member{m("", "/usr/bin/foo")}, Mode: apparmor.ModeEnforce}},
		// A name with blanks and parentheses keeps them; only the last
		// parenthesised word is the mode.
		{"a (b) c (enforce)", apparmor.Label{Members: []apparmor.Member{m("", "a (b) c")}, Mode: apparmor.ModeEnforce}},
		{"a (b c)", apparmor.Label{Members: []apparmor.Member{m("", "a (b c)")}}},
	} {
		if got := apparmor.ParseLabel(c.label); !reflect.DeepEqual(got, c.want) {
			t.Errorf("ParseLabel(%q) = %+v, want %+v", c.label, got, c.want)
		}
	}
}

// A process runs under a child profile or hat of its profile, or with a
// stack: judged by the members of the label and the profiles they descend
// from, as the kernel confines it.
func TestCheckChildrenHatsAndStacks(t *testing.T) {
	web := apparmor.Expectation{Profile: "k8s-web"}
	webEnforce := apparmor.Expectation{Profile: "k8s-web", Mode: apparmor.ModeEnforce}
	modes := map[string]apparmor.Mode{
		"k8s-web": apparmor.ModeEnforce, "k8s-web//nginx": apparmor.ModeEnforce, "k8s-web//lax": apparmor.ModeComplain,
		rd: apparmor.ModeComplain, ":lxd:k8s-web": apparmor.ModeEnforce,
	}
	for _, c := range []struct {
		name  string
		e     apparmor.Expectation
		label string
		ok    bool
	}{
		{"the profile", web, "k8s-web (enforce)", true},
		{"child profile", web, "k8s-web//nginx (enforce)", true},
		{"hat (^worker in the policy)", web, "k8s-web//worker (enforce)", true},
		{"grandchild", web, "k8s-web//nginx//sh (enforce)", true},
		{"stack, expected first", web, "k8s-web//&" + rd + " (enforce)", true},
		{"stack, expected last", web, rd + "//&k8s-web (enforce)", true},
		{"stack of a child", web, rd + "//&k8s-web//nginx (enforce)", true},
		{"child, enforce required", webEnforce, "k8s-web//nginx (enforce)", true},
		{"stack, enforce required", webEnforce, "k8s-web//&" + rd + " (enforce)", true},
		{"mixed stack, the expected member enforced", webEnforce, "k8s-web//&" + rd + " (mixed)", true},
		{"mixed stack, a complain child", webEnforce, "k8s-web//lax//&" + rd + " (mixed)", false},
		{"mixed stack, member mode unknown", webEnforce, "k8s-web//other//&" + rd + " (mixed)", false},
		{"child in complain, enforce required", webEnforce, "k8s-web//lax (complain)", false},
		{"stack in complain, enforce required", webEnforce, "k8s-web//&" + rd + " (complain)", false},

		{"a longer name", web, "k8s-webx (enforce)", false},
		// The kernel names a hat parent//hat; this is another profile.
		{"a name in the policy's hat notation", web, "k8s-web^worker (enforce)", false},
		{"a name sharing the prefix", web, "k8s-web-other//x (enforce)", false},
		{"the name as a child of another", web, "other//k8s-web (enforce)", false},
		{"the name as a stack member's child", web, rd + "//&other//k8s-web (enforce)", false},
		{"the parent of the expected child", apparmor.Expectation{Profile: "k8s-web//nginx"}, "k8s-web (enforce)", false},
		{"the expected child", apparmor.Expectation{Profile: "k8s-web//nginx"}, "k8s-web//nginx (enforce)", true},
		{"a sibling of the expected child", apparmor.Expectation{Profile: "k8s-web//nginx"}, "k8s-web//nginx2 (enforce)", false},
		{"same name in another namespace", web, ":lxd:k8s-web (enforce)", false},
		{"same name in another namespace, in a stack", web, rd + "//&:lxd:k8s-web (enforce)", false},
		{"namespaced expectation", apparmor.Expectation{Profile: ":lxd:k8s-web"}, ":lxd://k8s-web//nginx (enforce)", true},
		{"namespaced expectation, root profile", apparmor.Expectation{Profile: ":lxd:k8s-web"}, "k8s-web (enforce)", false},
		{"member inheriting the namespace", web, ":lxd:a//&k8s-web (enforce)", false},
		{"empty label", web, "", false},
	} {
		got := c.e.Check(c.label, modes)
		if (got == "") != c.ok {
			t.Errorf("%s: Check(%q) against %s = %q, want satisfied %v", c.name, c.label, c.e, got, c.ok)
		}
	}
}

// "unconfined" is satisfied by any label; one that confines something (a
// host profile attached by path to what a privileged container runs, not
// in unconfined mode) confines more than decided, and is said to.
func TestCheckUnconfined(t *testing.T) {
	e, ok := apparmor.Expect(apparmor.Profile{Type: apparmor.RuntimeDefault}, true, &apparmor.Policy{RuntimeDefault: rd, RequireEnforce: true})
	if !ok || e.Profile != apparmor.UnconfinedRef {
		t.Fatalf("privileged runtime/default: %v %v", e, ok)
	}
	modes := map[string]apparmor.Mode{"buildah": apparmor.ModeUnconfined, "runc": apparmor.ModeUnconfined, "tcpdump": apparmor.ModeEnforce}
	for _, c := range []struct {
		label string
		ok    bool
	}{
		{"unconfined", true},
		{"buildah (unconfined)", true},
		{"buildah//&runc (unconfined)", true},
		{"buildah (-)", true}, // kernels without dd2569fbb053: only unconfined-mode members
		{":lxd:unconfined", true},
		{"buildah//&:lxd:unconfined (unconfined)", true},
		{"buildah//&runc (mixed)", true}, // modes from the loaded profiles
		{"buildah//&tcpdump (mixed)", false},
		{"buildah//&other (mixed)", false}, // other's mode unknown
		{"tcpdump (enforce)", false},
		{"tcpdump (complain)", false},
		{"buildah//&" + rd + " (enforce)", false},
		{":lxd:unconfined//&k8s-web (enforce)", false},
		{"", false},
	} {
		// unconfined is never a mismatch; confined more is said
		if got := e.Check(c.label, modes); got != "" {
			t.Errorf("Check(%q) against unconfined = %q, want satisfied", c.label, got)
		}
		if got := e.MoreConfined(c.label, modes); got != !c.ok {
			t.Errorf("MoreConfined(%q) = %v, want %v", c.label, got, !c.ok)
		}
	}
}
