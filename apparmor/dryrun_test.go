package apparmor_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/apparmor"
)

// enforced returns pol with every rule enforced.
func enforced(pol *apparmor.Policy) *apparmor.Policy {
	if pol == nil {
		return nil
	}
	e := *pol
	e.Modes = nil
	return &e
}

// checkDryRun compares what Decide reported of a dry run with the case,
// and its words with what the policy enforced decides on the same request.
func checkDryRun(t *testing.T, tc decideCase, orig *runtimeapi.CreateContainerRequest, got *apparmor.DryRun) {
	t.Helper()
	want := tc.wantDryRun
	if want == nil {
		if got != nil {
			t.Errorf("dry run %+v (refusal %+v), want none", got, got.Refusal)
		}
		return
	}
	if got == nil {
		t.Fatalf("no dry run, want rule %s in %s", want.Rule, want.Mode)
	}
	if got.Rule != want.Rule || got.Mode != want.Mode || got.Profile != want.Profile {
		t.Errorf("dry run rule %s, mode %s, profile %#v; want %s, %s, %#v", got.Rule, got.Mode, got.Profile, want.Rule, want.Mode, want.Profile)
	}
	// Enforced, the same request is refused with these very words, or run
	// with the profile the dry run names.
	_, err := apparmor.Decide(proto.Clone(orig).(*runtimeapi.CreateContainerRequest), tc.snap, enforced(tc.pol))
	switch r, _ := err.(*apparmor.Refusal); {
	case r == nil && got.Refusal != nil:
		t.Errorf("dry run says %q, but enforced the request is accepted", got.Refusal.Message)
	case r != nil && got.Refusal == nil:
		t.Errorf("dry run says %q, but enforced the request is refused: %q", got.Message(), r.Message)
	case r != nil && *r != *got.Refusal:
		t.Errorf("dry run refusal\n got %+v\nwant %+v (enforced)", *got.Refusal, *r)
	}
}

func TestDecideDryRun(t *testing.T) {
	deny, nginxP, complain := localhost(denyWrite), localhost(nginx), localhost(complainPrf)
	allowedList := []apparmor.Profile{runtimeDefault, deny, complain}
	const allowedSet = "[runtime/default, localhost/k8s-apparmor-example-deny-write, localhost/k8s-apparmor-example-complain]"
	modes := func(m apparmor.RuleMode, rules ...apparmor.Rule) map[apparmor.Rule]apparmor.RuleMode {
		out := map[apparmor.Rule]apparmor.RuleMode{}
		for _, r := range rules {
			out[r] = m
		}
		return out
	}
	all := apparmor.Rules
	allowedWarn := &apparmor.Policy{Allowed: allowedList, Modes: modes(apparmor.Warn, apparmor.RuleAllowedProfiles)}
	allowedAudit := &apparmor.Policy{Allowed: allowedList, Modes: modes(apparmor.Audit, apparmor.RuleAllowedProfiles)}
	enforceWarn := &apparmor.Policy{RequireEnforce: true, Modes: modes(apparmor.Warn, apparmor.RuleRequireEnforce)}
	enforceBoth := &apparmor.Policy{RequireEnforce: true, Modes: modes(apparmor.Warn|apparmor.Audit, apparmor.RuleRequireEnforce)}
	// The whole policy in warn: what the operator rolls out.
	wholeWarn := &apparmor.Policy{Allowed: allowedList, Default: runtimeDefault, RequireEnforce: true, Modes: modes(apparmor.Warn, all...)}
	wholeAudit := &apparmor.Policy{Allowed: allowedList, Default: runtimeDefault, RequireEnforce: true, Modes: modes(apparmor.Audit, all...)}
	notAllowedMsg := `Forbidden: AppArmor profile "localhost/k8s-nginx" is not allowed on this node; allowed profiles: ` + allowedSet
	const complainMsg = `Blocked: Cannot enforce AppArmor: profile "k8s-apparmor-example-complain" is loaded in complain mode, but this node requires enforce mode`

	tests := []struct {
		decideCase
		wantMsg string // DryRun.Message()
	}{
		// allowedProfiles.
		{decideCase: decideCase{
			name: "allowed warn: a profile outside the list is forwarded", req: newRequest(field(typeLocalhost, nginx)), snap: loadedHost(), pol: allowedWarn,
			wantProfile: nginxP, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
			wantDryRun: &apparmor.DryRun{Rule: apparmor.RuleAllowedProfiles, Mode: apparmor.Warn},
		}, wantMsg: notAllowedMsg},
		{decideCase: decideCase{
			name: "allowed warn: a listed profile has nothing to report", req: newRequest(field(typeLocalhost, denyWrite)), snap: loadedHost(), pol: allowedWarn,
			wantProfile: deny, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		}},
		{decideCase: decideCase{
			name: "allowed audit: nothing requested, no default", req: newRequest(), snap: loadedHost(), pol: allowedAudit,
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone,
			wantDryRun: &apparmor.DryRun{Rule: apparmor.RuleAllowedProfiles, Mode: apparmor.Audit},
		}, wantMsg: "Forbidden: an AppArmor profile must be set on this node; allowed profiles: " + allowedSet},
		{decideCase: decideCase{
			name: "allowed warn: a profile not loaded is still Blocked", req: newRequest(field(typeLocalhost, allowWrite)), snap: loadedHost(), pol: allowedWarn,
			wantCode: codes.FailedPrecondition, wantMsg: notLoadedMsg, wantHostCalls: 1,
		}},

		// requireEnforce.
		{decideCase: decideCase{
			name: "require enforce warn: a complain-mode profile is forwarded", req: newRequest(field(typeLocalhost, complainPrf)), snap: loadedHost(), pol: enforceWarn,
			wantProfile: complain, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
			wantDryRun: &apparmor.DryRun{Rule: apparmor.RuleRequireEnforce, Mode: apparmor.Warn},
		}, wantMsg: complainMsg},
		{decideCase: decideCase{
			name: "require enforce warn and audit: a profile not loaded is still Blocked", req: newRequest(field(typeLocalhost, allowWrite)), snap: loadedHost(), pol: enforceBoth,
			wantCode: codes.FailedPrecondition, wantMsg: notLoadedMsg, wantHostCalls: 1,
		}},
		{decideCase: decideCase{
			name: "require enforce warn and audit: one report of both modes", req: newRequest(field(typeLocalhost, complainPrf)), snap: loadedHost(), pol: enforceBoth,
			wantProfile: complain, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
			wantDryRun: &apparmor.DryRun{Rule: apparmor.RuleRequireEnforce, Mode: apparmor.Warn | apparmor.Audit},
		}, wantMsg: complainMsg},

		{decideCase: decideCase{
			name: "require enforce warn: the runtime's default profile in complain mode is forwarded", req: newRequest(field(typeRuntimeDefault, "")), snap: loadedHost(),
			pol:         &apparmor.Policy{RequireEnforce: true, RuntimeDefault: complainPrf, Modes: modes(apparmor.Warn, apparmor.RuleRequireEnforce)},
			wantProfile: runtimeDefault, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
			wantDryRun: &apparmor.DryRun{Rule: apparmor.RuleRequireEnforce, Mode: apparmor.Warn},
		}, wantMsg: `Blocked: Cannot enforce AppArmor: the runtime's default profile "k8s-apparmor-example-complain" is loaded in complain mode, but this node requires enforce mode`},

		{decideCase: decideCase{
			name: "require enforce: nothing asked on an unreadable host is Blocked (the default's mode is unknown)", req: newRequest(), snap: brokenHost(),
			pol:      &apparmor.Policy{RequireEnforce: true, RuntimeDefault: "cri-containerd.apparmor.d"},
			wantCode: codes.FailedPrecondition, wantMsg: unreadableMsg, wantHostCalls: 1,
		}},
		{decideCase: decideCase{
			name: "require enforce warn: nothing asked on an unreadable host is forwarded and reported", req: newRequest(), snap: brokenHost(),
			pol:         &apparmor.Policy{RequireEnforce: true, RuntimeDefault: "cri-containerd.apparmor.d", Modes: modes(apparmor.Warn, apparmor.RuleRequireEnforce)},
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 1,
			wantDryRun: &apparmor.DryRun{Rule: apparmor.RuleRequireEnforce, Mode: apparmor.Warn},
		}, wantMsg: unreadableMsg},
		{decideCase: decideCase{
			name: "require enforce: nothing asked on a host without AppArmor runs as without armorshim", req: newRequest(), snap: disabledHost(),
			pol:         &apparmor.Policy{RequireEnforce: true, RuntimeDefault: "cri-containerd.apparmor.d"},
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 1,
		}},

		// defaultProfile: not applied, and what it would have run is said.
		{decideCase: decideCase{
			name: "default warn: nothing requested is forwarded unchanged", req: newRequest(), snap: loadedHost(),
			pol:         &apparmor.Policy{Default: runtimeDefault, Modes: modes(apparmor.Warn, apparmor.RuleDefaultProfile)},
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 1,
			wantDryRun: &apparmor.DryRun{Rule: apparmor.RuleDefaultProfile, Mode: apparmor.Warn, Profile: runtimeDefault},
		}, wantMsg: `AppArmor profile "runtime/default" would be applied (defaultProfile): the container asks for none`},
		{decideCase: decideCase{
			name: "default audit: a default not loaded would be Blocked", req: newRequest(), snap: loadedHost(),
			pol:         &apparmor.Policy{Default: localhost(allowWrite), Modes: modes(apparmor.Audit, apparmor.RuleDefaultProfile)},
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 1,
			wantDryRun: &apparmor.DryRun{Rule: apparmor.RuleDefaultProfile, Mode: apparmor.Audit},
		}, wantMsg: notLoadedMsg},
		{decideCase: decideCase{
			name: "default warn: a default on a host without AppArmor would be Blocked", req: newRequest(), snap: disabledHost(),
			pol:         &apparmor.Policy{Default: runtimeDefault, Modes: modes(apparmor.Warn, apparmor.RuleDefaultProfile)},
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 1,
			wantDryRun: &apparmor.DryRun{Rule: apparmor.RuleDefaultProfile, Mode: apparmor.Warn},
		}, wantMsg: notEnabledMsg},
		{decideCase: decideCase{
			name: "default warn, require enforce enforced: the default's mode is the default's report", req: newRequest(), snap: loadedHost(),
			pol:         &apparmor.Policy{Default: complain, RequireEnforce: true, Modes: modes(apparmor.Warn, apparmor.RuleDefaultProfile)},
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 1,
			wantDryRun: &apparmor.DryRun{Rule: apparmor.RuleDefaultProfile, Mode: apparmor.Warn},
		}, wantMsg: complainMsg},
		{decideCase: decideCase{
			name: "default warn: an explicit profile has nothing to report", req: newRequest(field(typeLocalhost, denyWrite)), snap: loadedHost(),
			pol:         &apparmor.Policy{Default: runtimeDefault, Modes: modes(apparmor.Warn, apparmor.RuleDefaultProfile)},
			wantProfile: deny, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		}},
		{decideCase: decideCase{
			// as if defaultProfile did not exist
			name: "default warn, allowed enforced: nothing requested is refused", req: newRequest(), snap: loadedHost(),
			pol:      &apparmor.Policy{Allowed: allowedList, Default: runtimeDefault, Modes: modes(apparmor.Warn, apparmor.RuleDefaultProfile)},
			wantCode: codes.PermissionDenied, wantMsg: "Forbidden: an AppArmor profile must be set on this node; allowed profiles: " + allowedSet,
		}},

		// The whole policy in warn or audit reports what enforce would do,
		// no more: the default it would apply is allowed.
		{decideCase: decideCase{
			name: "whole policy warn: nothing requested would get the default", req: newRequest(), snap: loadedHost(), pol: wholeWarn,
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 1,
			wantDryRun: &apparmor.DryRun{Rule: apparmor.RuleDefaultProfile, Mode: apparmor.Warn, Profile: runtimeDefault},
		}, wantMsg: `AppArmor profile "runtime/default" would be applied (defaultProfile): the container asks for none`},
		{decideCase: decideCase{
			name: "whole policy warn: a profile outside the list", req: newRequest(annotation("hello", "localhost/"+nginx)), snap: loadedHost(), pol: wholeWarn,
			wantProfile: nginxP, wantSource: apparmor.SourceAnnotation, wantModified: true, wantHostCalls: 1,
			wantDryRun: &apparmor.DryRun{Rule: apparmor.RuleAllowedProfiles, Mode: apparmor.Warn},
		}, wantMsg: notAllowedMsg},
		{decideCase: decideCase{
			name: "whole policy audit: a listed profile in complain mode", req: newRequest(deprecated("localhost/" + complainPrf)), snap: loadedHost(), pol: wholeAudit,
			wantProfile: complain, wantSource: apparmor.SourceDeprecated, wantModified: true, wantHostCalls: 1,
			wantDryRun: &apparmor.DryRun{Rule: apparmor.RuleRequireEnforce, Mode: apparmor.Audit},
		}, wantMsg: complainMsg},
		{decideCase: decideCase{
			name: "whole policy warn: a listed profile in enforce mode has nothing to report", req: newRequest(field(typeLocalhost, denyWrite)), snap: loadedHost(), pol: wholeWarn,
			wantProfile: deny, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		}},

		// Always enforced, whatever the modes.
		{decideCase: decideCase{
			name: "whole policy warn: not loaded is Blocked", req: newRequest(field(typeLocalhost, allowWrite)), snap: loadedHost(), pol: wholeWarn,
			wantCode: codes.FailedPrecondition, wantMsg: notLoadedMsg, wantHostCalls: 1,
		}},
		{decideCase: decideCase{
			name: "whole policy audit: not loaded is Blocked", req: newRequest(annotation("hello", "localhost/"+allowWrite)), snap: loadedHost(), pol: wholeAudit,
			wantCode: codes.FailedPrecondition, wantMsg: notLoadedMsg, wantHostCalls: 1,
		}},
		{decideCase: decideCase{
			name: "whole policy warn: AppArmor off on the host is Blocked", req: newRequest(field(typeRuntimeDefault, "")), snap: disabledHost(), pol: wholeWarn,
			wantCode: codes.FailedPrecondition, wantMsg: notEnabledMsg, wantHostCalls: 1,
		}},
		{decideCase: decideCase{
			name: "whole policy audit: an unreadable host is Blocked", req: newRequest(field(typeLocalhost, denyWrite)), snap: brokenHost(), pol: wholeAudit,
			wantCode: codes.FailedPrecondition, wantMsg: unreadableMsg, wantHostCalls: 1,
		}},
		{decideCase: decideCase{
			name: "whole policy warn: invalid is still InvalidArgument", req: newRequest(deprecated("foo")), snap: loadedHost(), pol: wholeWarn,
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "foo"`,
		}},
		{decideCase: decideCase{
			name: "AppArmor disabled on the node stays Forbidden", req: newRequest(field(typeRuntimeDefault, "")), snap: loadedHost(),
			pol:      &apparmor.Policy{Disabled: true, Modes: modes(apparmor.Warn|apparmor.Audit, all...)},
			wantCode: codes.PermissionDenied, wantMsg: `Forbidden: AppArmor is disabled on this node; the container asks for profile "runtime/default"`,
		}},

		// Enforce written out is enforce.
		{decideCase: decideCase{
			name: "every rule enforce: refused as before", req: newRequest(field(typeLocalhost, nginx)), snap: loadedHost(),
			pol:      &apparmor.Policy{Allowed: allowedList, Modes: modes(apparmor.Enforce, all...)},
			wantCode: codes.PermissionDenied, wantMsg: notAllowedMsg, wantHostCalls: 0,
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runDecide(t, tc.decideCase)
			if tc.wantDryRun == nil {
				return
			}
			d, err := apparmor.Decide(proto.Clone(tc.req).(*runtimeapi.CreateContainerRequest), tc.snap, tc.pol)
			if err != nil || d.DryRun == nil {
				t.Fatalf("Decide: %+v, %v", d, err)
			}
			if got := d.DryRun.Message(); got != tc.wantMsg {
				t.Errorf("dry run message\n got %q\nwant %q", got, tc.wantMsg)
			}
			if r := d.DryRun.Refusal; r != nil && (r.Target != apparmor.Target{Namespace: "default", Pod: "hello-apparmor", Container: "hello"}) {
				t.Errorf("dry run refusal target %+v", r.Target)
			}
		})
	}
}

func TestParseRuleMode(t *testing.T) {
	for _, tc := range []struct {
		words []string
		want  apparmor.RuleMode
		str   string
	}{
		{[]string{"enforce"}, apparmor.Enforce, "enforce"},
		{[]string{"warn"}, apparmor.Warn, "warn"},
		{[]string{"audit"}, apparmor.Audit, "audit"},
		{[]string{"warn", "audit"}, apparmor.Warn | apparmor.Audit, "[warn, audit]"},
		{[]string{"audit", "warn"}, apparmor.Warn | apparmor.Audit, "[warn, audit]"},
	} {
		m, err := apparmor.ParseRuleMode(tc.words)
		if err != nil || m != tc.want || m.String() != tc.str {
			t.Errorf("%q: %v (%s), %v; want %v (%s)", tc.words, m, m, err, tc.want, tc.str)
		}
		if back, err := apparmor.ParseRuleMode(m.Words()); err != nil || back != m {
			t.Errorf("%q: its words %q read back as %v, %v", tc.words, m.Words(), back, err)
		}
	}
	for _, tc := range []struct {
		words []string
		want  string
	}{
		{nil, "no mode"},
		{[]string{"warm"}, `"warm" is not enforce, warn or audit`},
		{[]string{"Warn"}, `"Warn" is not enforce, warn or audit`},
		{[]string{"dryrun"}, `"dryrun" is not enforce, warn or audit`},
		{[]string{"warn", "warn"}, "warn is repeated"},
		{[]string{"enforce", "enforce"}, "enforce is repeated"},
		{[]string{"enforce", "audit"}, "enforce cannot be combined with warn or audit"},
		{[]string{"warn", "enforce"}, "enforce cannot be combined with warn or audit"},
	} {
		if _, err := apparmor.ParseRuleMode(tc.words); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error with %q", tc.words, err, tc.want)
		}
	}
}

func TestPolicyValidateModes(t *testing.T) {
	good := &apparmor.Policy{Modes: map[apparmor.Rule]apparmor.RuleMode{
		apparmor.RuleAllowedProfiles: apparmor.Warn, apparmor.RuleDefaultProfile: apparmor.Audit,
		apparmor.RuleRequireEnforce: apparmor.Warn | apparmor.Audit,
	}}
	if err := good.Validate(); err != nil {
		t.Errorf("valid modes: %v", err)
	}
	for name, m := range map[string]map[apparmor.Rule]apparmor.RuleMode{
		"unknown rule": {"enabled": apparmor.Warn},
		"unknown mode": {apparmor.RuleAllowedProfiles: 4},
	} {
		if err := (&apparmor.Policy{Modes: m}).Validate(); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// A container forwarded while requireEnforce only warns runs in whatever
// mode its profile is loaded in: attestation must not expect enforce.
func TestExpectRequireEnforceInDryRun(t *testing.T) {
	for m, wantMode := range map[apparmor.RuleMode]apparmor.Mode{
		apparmor.Enforce: apparmor.ModeEnforce, apparmor.Warn: "", apparmor.Audit: "", apparmor.Warn | apparmor.Audit: "",
	} {
		pol := &apparmor.Policy{RequireEnforce: true, RuntimeDefault: "cri-containerd.apparmor.d", Modes: map[apparmor.Rule]apparmor.RuleMode{apparmor.RuleRequireEnforce: m}}
		for _, p := range []apparmor.Profile{localhost(complainPrf), {Type: apparmor.RuntimeDefault}} {
			e, ok := apparmor.Expect(p, false, pol)
			if !ok || e.Mode != wantMode {
				t.Errorf("requireEnforce %s, %s: expect %+v, %v; want mode %q", m, p, e, ok, wantMode)
			}
		}
	}
}
