package apparmor_test

import (
	"errors"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/armorshim/armorshim/apparmor"
)

func TestDecidePolicy(t *testing.T) {
	disabled := &apparmor.Policy{Disabled: true}
	allowed := &apparmor.Policy{Allowed: []apparmor.Profile{runtimeDefault, localhost(denyWrite), localhost(allowWrite)}}
	const allowedSet = "[runtime/default, localhost/k8s-apparmor-example-deny-write, localhost/k8s-apparmor-example-allow-write]"
	enforce := &apparmor.Policy{RequireEnforce: true}
	// The runtime's default profile loaded in complain mode, in enforce
	// mode, and not loaded yet.
	rdComplain := &apparmor.Policy{RequireEnforce: true, RuntimeDefault: complainPrf}
	rdEnforce := &apparmor.Policy{RequireEnforce: true, RuntimeDefault: denyWrite}
	rdAbsent := &apparmor.Policy{RequireEnforce: true, RuntimeDefault: allowWrite}
	const rdComplainMsg = `Blocked: Cannot enforce AppArmor: the runtime's default profile "k8s-apparmor-example-complain" is loaded in complain mode, but this node requires enforce mode`

	tests := []decideCase{
		// Disabled: any explicit profile is Forbidden, before the host is asked.
		{
			name: "disabled: localhost", req: newRequest(field(typeLocalhost, denyWrite)), snap: loadedHost(), pol: disabled,
			wantCode: codes.PermissionDenied,
			wantMsg:  `Forbidden: AppArmor is disabled on this node; the container asks for profile "localhost/k8s-apparmor-example-deny-write"`,
		},
		{
			name: "disabled: annotation", req: newRequest(annotation("hello", "localhost/"+denyWrite)), snap: loadedHost(), pol: disabled,
			wantCode: codes.PermissionDenied,
			wantMsg:  `Forbidden: AppArmor is disabled on this node; the container asks for profile "localhost/k8s-apparmor-example-deny-write"`,
		},
		{
			name: "disabled: runtime/default", req: newRequest(deprecated("runtime/default")), snap: loadedHost(), pol: disabled,
			wantCode: codes.PermissionDenied,
			wantMsg:  `Forbidden: AppArmor is disabled on this node; the container asks for profile "runtime/default"`,
		},
		{
			name: "disabled: unconfined too", req: newRequest(field(typeUnconfined, "")), snap: loadedHost(), pol: disabled,
			wantCode: codes.PermissionDenied,
			wantMsg:  `Forbidden: AppArmor is disabled on this node; the container asks for profile "unconfined"`,
		},
		{
			name: "disabled: nothing requested passes", req: newRequest(), snap: brokenHost(), pol: disabled,
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone,
		},
		{
			name: "disabled: invalid is still InvalidArgument", req: newRequest(deprecated("foo")), snap: loadedHost(), pol: disabled,
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "foo"`,
		},
		{
			name: "disabled: a long name is quoted bounded",
			req:  newRequest(field(typeLocalhost, strings.Repeat("n", apparmor.MaxNameLength))), snap: loadedHost(), pol: disabled,
			wantCode: codes.PermissionDenied, wantMsgPrefix: `Forbidden: AppArmor is disabled on this node; the container asks for profile "localhost/nnn`,
		},

		// Default profile: applied only when nothing is requested, and checked.
		{
			name: "default runtime/default applied", req: newRequest(), snap: loadedHost(), pol: &apparmor.Policy{Default: runtimeDefault},
			wantProfile: runtimeDefault, wantSource: apparmor.SourceDefault, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "default runtime/default on a host with AppArmor off", req: newRequest(), snap: disabledHost(), pol: &apparmor.Policy{Default: runtimeDefault},
			wantCode: codes.FailedPrecondition, wantMsg: notEnabledMsg, wantHostCalls: 1,
		},
		{
			name: "default localhost applied", req: newRequest(noLinux()), snap: loadedHost(), pol: &apparmor.Policy{Default: localhost(denyWrite)},
			wantProfile: localhost(denyWrite), wantSource: apparmor.SourceDefault, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "default localhost not loaded", req: newRequest(), snap: loadedHost(), pol: &apparmor.Policy{Default: localhost(allowWrite)},
			wantCode: codes.FailedPrecondition, wantMsg: notLoadedMsg, wantHostCalls: 1,
		},
		{
			name: "default localhost on an unreadable host", req: newRequest(), snap: brokenHost(), pol: &apparmor.Policy{Default: localhost(denyWrite)},
			wantCode: codes.FailedPrecondition, wantMsg: unreadableMsg, wantHostCalls: 1,
		},
		{
			name: "default unconfined applied without a host check", req: newRequest(), snap: brokenHost(), pol: &apparmor.Policy{Default: unconfined},
			wantProfile: unconfined, wantSource: apparmor.SourceDefault, wantModified: true,
		},
		{
			name: "default does not override an explicit profile", req: newRequest(field(typeUnconfined, "")), snap: loadedHost(),
			pol:         &apparmor.Policy{Default: localhost(denyWrite)},
			wantProfile: unconfined, wantSource: apparmor.SourceField, wantModified: true,
		},
		{
			name: "default does not override the annotation", req: newRequest(annotation("hello", "localhost/"+nginx)), snap: loadedHost(),
			pol:         &apparmor.Policy{Default: runtimeDefault},
			wantProfile: localhost(nginx), wantSource: apparmor.SourceAnnotation, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "default applies to privileged containers too", req: newRequest(privileged()), snap: loadedHost(), pol: &apparmor.Policy{Default: localhost(denyWrite)},
			wantProfile: localhost(denyWrite), wantSource: apparmor.SourceDefault, wantModified: true, wantHostCalls: 1,
		},

		// Allowed list.
		{
			name: "allowed: a listed profile", req: newRequest(field(typeLocalhost, denyWrite)), snap: loadedHost(), pol: allowed,
			wantProfile: localhost(denyWrite), wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "allowed: a listed profile with the critest prefix", req: newRequest(field(typeLocalhost, "localhost/"+denyWrite)), snap: loadedHost(), pol: allowed,
			wantProfile: localhost(denyWrite), wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "allowed: a listed profile that is not loaded is Blocked", req: newRequest(field(typeLocalhost, allowWrite)), snap: loadedHost(), pol: allowed,
			wantCode: codes.FailedPrecondition, wantMsg: notLoadedMsg, wantHostCalls: 1,
		},
		{
			name: "allowed: a loaded profile outside the list", req: newRequest(field(typeLocalhost, nginx)), snap: loadedHost(), pol: allowed,
			wantCode: codes.PermissionDenied,
			wantMsg:  `Forbidden: AppArmor profile "localhost/k8s-nginx" is not allowed on this node; allowed profiles: ` + allowedSet,
		},
		{
			name: "allowed: unconfined outside the list", req: newRequest(deprecated("unconfined")), snap: loadedHost(), pol: allowed,
			wantCode: codes.PermissionDenied,
			wantMsg:  `Forbidden: AppArmor profile "unconfined" is not allowed on this node; allowed profiles: ` + allowedSet,
		},
		{
			name: "allowed: nothing requested and no default", req: newRequest(), snap: loadedHost(), pol: allowed,
			wantCode: codes.PermissionDenied,
			wantMsg:  `Forbidden: an AppArmor profile must be set on this node; allowed profiles: ` + allowedSet,
		},
		{
			name: "allowed: nothing requested, default in the list", req: newRequest(), snap: loadedHost(),
			pol:         &apparmor.Policy{Allowed: []apparmor.Profile{runtimeDefault}, Default: runtimeDefault},
			wantProfile: runtimeDefault, wantSource: apparmor.SourceDefault, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "allowed: empty list allows nothing", req: newRequest(field(typeRuntimeDefault, "")), snap: loadedHost(),
			pol:      &apparmor.Policy{Allowed: []apparmor.Profile{}},
			wantCode: codes.PermissionDenied,
			wantMsg:  `Forbidden: AppArmor profile "runtime/default" is not allowed on this node; allowed profiles: []`,
		},

		// RequireEnforce.
		{
			name: "require enforce: enforce-mode profile", req: newRequest(field(typeLocalhost, denyWrite)), snap: loadedHost(), pol: enforce,
			wantProfile: localhost(denyWrite), wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "require enforce: complain-mode profile is Blocked", req: newRequest(field(typeLocalhost, complainPrf)), snap: loadedHost(), pol: enforce,
			wantCode: codes.FailedPrecondition, wantHostCalls: 1,
			wantMsg: `Blocked: Cannot enforce AppArmor: profile "k8s-apparmor-example-complain" is loaded in complain mode, but this node requires enforce mode`,
		},
		{
			name: "require enforce: kill-mode profile is Blocked", req: newRequest(field(typeLocalhost, killPrf)), snap: loadedHost(), pol: enforce,
			wantCode: codes.FailedPrecondition, wantHostCalls: 1,
			wantMsg: `Blocked: Cannot enforce AppArmor: profile "k8s-apparmor-example-kill" is loaded in kill mode, but this node requires enforce mode`,
		},
		{
			name: "require enforce: not loaded comes first", req: newRequest(field(typeLocalhost, allowWrite)), snap: loadedHost(), pol: enforce,
			wantCode: codes.FailedPrecondition, wantMsg: notLoadedMsg, wantHostCalls: 1,
		},
		{
			name: "require enforce: runtime/default, its profile not known", req: newRequest(field(typeRuntimeDefault, "")), snap: loadedHost(), pol: enforce,
			wantProfile: runtimeDefault, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "require enforce: runtime/default in complain mode is Blocked", req: newRequest(field(typeRuntimeDefault, "")), snap: loadedHost(), pol: rdComplain,
			wantCode: codes.FailedPrecondition, wantHostCalls: 1, wantMsg: rdComplainMsg,
		},
		{
			name: "require enforce: nothing asked gets runtime/default, in complain mode", req: newRequest(), snap: loadedHost(), pol: rdComplain,
			wantCode: codes.FailedPrecondition, wantHostCalls: 1, wantMsg: rdComplainMsg,
		},
		{
			name: "require enforce: default runtime/default in complain mode", req: newRequest(), snap: loadedHost(),
			pol:      &apparmor.Policy{RequireEnforce: true, RuntimeDefault: complainPrf, Default: runtimeDefault},
			wantCode: codes.FailedPrecondition, wantHostCalls: 1, wantMsg: rdComplainMsg,
		},
		{
			name: "require enforce: runtime/default in enforce mode", req: newRequest(field(typeRuntimeDefault, "")), snap: loadedHost(), pol: rdEnforce,
			wantProfile: runtimeDefault, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "require enforce: runtime/default not loaded yet is the runtime's to load", req: newRequest(field(typeRuntimeDefault, "")), snap: loadedHost(), pol: rdAbsent,
			wantProfile: runtimeDefault, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "require enforce: privileged runtime/default gets no profile", req: newRequest(field(typeRuntimeDefault, ""), privileged()), snap: loadedHost(), pol: rdComplain,
			wantProfile: runtimeDefault, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "require enforce: nothing asked on a host without AppArmor", req: newRequest(), snap: disabledHost(), pol: rdComplain,
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 1,
		},
		{
			name: "require enforce: unconfined is not checked", req: newRequest(field(typeUnconfined, "")), snap: brokenHost(), pol: enforce,
			wantProfile: unconfined, wantSource: apparmor.SourceField, wantModified: true,
		},
		{
			name: "zero policy behaves like nil", req: newRequest(field(typeLocalhost, complainPrf)), snap: loadedHost(), pol: &apparmor.Policy{},
			wantProfile: localhost(complainPrf), wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { runDecide(t, tc) })
	}
}

func TestPolicyValidate(t *testing.T) {
	tests := []struct {
		name    string
		pol     apparmor.Policy
		wantErr string // exact; "" means valid
	}{
		{"zero", apparmor.Policy{}, ""},
		{"disabled alone", apparmor.Policy{Disabled: true}, ""},
		{"default alone", apparmor.Policy{Default: localhost(denyWrite)}, ""},
		{"default in allowed", apparmor.Policy{Default: runtimeDefault, Allowed: []apparmor.Profile{localhost(denyWrite), runtimeDefault}}, ""},
		{"allowed without default", apparmor.Policy{Allowed: []apparmor.Profile{localhost(denyWrite)}}, ""},
		{"require enforce", apparmor.Policy{RequireEnforce: true, Default: localhost(denyWrite)}, ""},
		{
			"disabled with a default", apparmor.Policy{Disabled: true, Default: runtimeDefault},
			`defaultProfile: "runtime/default" is set but AppArmor is disabled (enabled: false)`,
		},
		{
			"default outside allowed", apparmor.Policy{Default: localhost(nginx), Allowed: []apparmor.Profile{runtimeDefault, localhost(denyWrite)}},
			`defaultProfile: "localhost/k8s-nginx" is not in allowedProfiles [runtime/default, localhost/k8s-apparmor-example-deny-write]`,
		},
		{
			"default with an empty allowed list", apparmor.Policy{Default: unconfined, Allowed: []apparmor.Profile{}},
			`defaultProfile: "unconfined" is not in allowedProfiles []`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.pol.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
				t.Errorf("Validate() = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestParseProfileList(t *testing.T) {
	tests := []struct {
		name    string
		items   []string
		want    []apparmor.Profile
		wantErr string // substring; "" means no error
	}{
		{"nil", nil, []apparmor.Profile{}, ""},
		{"one", []string{"runtime/default"}, []apparmor.Profile{runtimeDefault}, ""},
		{
			"comma string (PodSecurityPolicy annotation)", []string{"runtime/default,localhost/" + denyWrite},
			[]apparmor.Profile{runtimeDefault, localhost(denyWrite)}, "",
		},
		{
			"list items and comma strings mixed, in order", []string{"localhost/" + nginx, "unconfined,localhost/" + testDeny, "runtime/default"},
			[]apparmor.Profile{localhost(nginx), unconfined, localhost(testDeny), runtimeDefault}, "",
		},
		{
			"spaces around items are ignored", []string{" runtime/default ,  localhost/" + dockerDflt + "\t", "\tunconfined "},
			[]apparmor.Profile{runtimeDefault, localhost(dockerDflt), unconfined}, "",
		},
		{"inner spaces are part of the name", []string{"localhost/" + spacedName}, []apparmor.Profile{localhost(spacedName)}, ""},
		{"%2C is not a separator", []string{"localhost/a%2Cb"}, []apparmor.Profile{localhost("a%2Cb")}, ""},
		{"children and namespaces", []string{"localhost/" + childName + ",localhost/" + nsName}, []apparmor.Profile{localhost(childName), localhost(nsName)}, ""},
		{"duplicates are kept", []string{"runtime/default,runtime/default"}, []apparmor.Profile{runtimeDefault, runtimeDefault}, ""},
		{"empty list item", []string{""}, nil, `invalid AppArmor profile name: ""`},
		{"blank list item", []string{"   "}, nil, `invalid AppArmor profile name: ""`},
		{"trailing comma", []string{"runtime/default,"}, nil, `invalid AppArmor profile name: ""`},
		{"leading comma", []string{",runtime/default"}, nil, `invalid AppArmor profile name: ""`},
		{"double comma", []string{"runtime/default,,unconfined"}, nil, `invalid AppArmor profile name: ""`},
		{"comma and spaces only", []string{" , "}, nil, `invalid AppArmor profile name: ""`},
		{"an invalid item", []string{"runtime/default", "foo/bar"}, nil, `invalid AppArmor profile name: "foo/bar"`},
		{"a bare name", []string{dockerDflt}, nil, `invalid AppArmor profile name: "docker-default"`},
		{"empty localhost name", []string{"localhost/ , runtime/default"}, nil, "must not be empty"},
		{"padded name after the prefix", []string{"localhost/ " + denyWrite}, nil, "padded with whitespace"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := apparmor.ParseProfileList(tt.items)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("ParseProfileList(%q) = %v, want an error", tt.items, got)
				}
				var inv *apparmor.InvalidError
				if !errors.As(err, &inv) {
					t.Errorf("error is a %T, want *apparmor.InvalidError", err)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("error %q does not contain %q", err, tt.wantErr)
				}
				if got != nil {
					t.Errorf("result on error = %v, want nil", got)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseProfileList(%q): %v", tt.items, err)
			}
			if got == nil || len(got) != len(tt.want) {
				t.Fatalf("ParseProfileList(%q) = %#v, want %#v", tt.items, got, tt.want)
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("item %d = %#v, want %#v", i, got[i], tt.want[i])
				}
			}
		})
	}
}
