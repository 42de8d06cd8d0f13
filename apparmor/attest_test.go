package apparmor_test

import (
	"strings"
	"testing"

	"github.com/armorshim/armorshim/apparmor"
)

func TestExpectAndCheck(t *testing.T) {
	const rd = "cri-containerd.apparmor.d"
	deny := apparmor.Profile{Type: apparmor.Localhost, Name: "k8s-apparmor-example-deny-write"}
	enforce := &apparmor.Policy{RequireEnforce: true}
	for _, c := range []struct {
		name       string
		p          apparmor.Profile
		privileged bool
		pol        *apparmor.Policy
		label      string
		mismatch   string // substring of the mismatch, "" for a match
	}{
		{"localhost enforced", deny, false, nil, "k8s-apparmor-example-deny-write (enforce)", ""},
		{"localhost in complain, any mode", deny, false, nil, "k8s-apparmor-example-deny-write (complain)", ""},
		{"localhost in complain, enforce required", deny, false, enforce, "k8s-apparmor-example-deny-write (complain)", "requires enforce mode"},
		{"localhost but unconfined", deny, false, nil, "unconfined", "expected k8s-apparmor-example-deny-write, the container runs unconfined"},
		{"localhost but another profile", deny, false, nil, "k8s-apparmor-example-allow-write (enforce)", "runs k8s-apparmor-example-allow-write (enforce)"},
		{"localhost on privileged still applies", deny, true, nil, "k8s-apparmor-example-deny-write (enforce)", ""},
		{"runtime default", apparmor.Profile{Type: apparmor.RuntimeDefault}, false, nil, rd + " (enforce)", ""},
		{"nothing asked gets the runtime default", apparmor.Profile{}, false, nil, rd + " (enforce)", ""},
		{"runtime default swapped", apparmor.Profile{Type: apparmor.RuntimeDefault}, false, nil, "unconfined", "expected " + rd},
		{"privileged runtime default is unconfined", apparmor.Profile{Type: apparmor.RuntimeDefault}, true, nil, "unconfined", ""},
		{"unconfined", apparmor.Profile{Type: apparmor.Unconfined}, false, nil, "unconfined", ""},
		{"unconfined but confined", apparmor.Profile{Type: apparmor.Unconfined}, false, nil, rd + " (enforce)", "expected unconfined"},
		{"profile name with spaces and parens", apparmor.Profile{Type: apparmor.Localhost, Name: "a (b) c"}, false, enforce, "a (b) c (enforce)", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			e, ok := apparmor.Expect(c.p, c.privileged, rd, c.pol)
			if !ok {
				t.Fatal("nothing expected")
			}
			got := e.Check(c.label)
			if (c.mismatch == "") != (got == "") || !strings.Contains(got, c.mismatch) {
				t.Errorf("Check(%q) against %s = %q, want %q", c.label, e, got, c.mismatch)
			}
		})
	}
	if _, ok := apparmor.Expect(apparmor.Profile{}, false, "", nil); ok {
		t.Error("an unknown runtime default gave an expectation")
	}
}
