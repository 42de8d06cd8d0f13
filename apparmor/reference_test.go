package apparmor_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/armorshim/armorshim/apparmor"
)

// Profile names from the Kubernetes AppArmor tutorial.
const (
	denyWrite   = "k8s-apparmor-example-deny-write"
	allowWrite  = "k8s-apparmor-example-allow-write" // never loaded in these tests
	testDeny    = "apparmor-test-deny-write"
	testAudit   = "apparmor-test-audit-write"
	dockerDflt  = "docker-default"
	nginx       = "k8s-nginx"
	childName   = "/usr/bin/foo//null-/bin/sh"
	nsName      = ":ns:k8s-nginx"
	spacedName  = "k8s nginx with spaces"
	complainPrf = "k8s-apparmor-example-complain"
	killPrf     = "k8s-apparmor-example-kill"
)

func localhost(name string) apparmor.Profile {
	return apparmor.Profile{Type: apparmor.Localhost, Name: name}
}

var (
	runtimeDefault = apparmor.Profile{Type: apparmor.RuntimeDefault}
	unconfined     = apparmor.Profile{Type: apparmor.Unconfined}
)

func TestProfileString(t *testing.T) {
	tests := []struct {
		p    apparmor.Profile
		want string
	}{
		{apparmor.Profile{}, ""},
		{runtimeDefault, "runtime/default"},
		{unconfined, "unconfined"},
		{localhost(denyWrite), "localhost/k8s-apparmor-example-deny-write"},
		{localhost(childName), "localhost//usr/bin/foo//null-/bin/sh"},
		{localhost(nsName), "localhost/:ns:k8s-nginx"},
		// An unknown type has no reference form.
		{apparmor.Profile{Type: apparmor.Type(42), Name: "x"}, ""},
	}
	for _, tt := range tests {
		if got := tt.p.String(); got != tt.want {
			t.Errorf("%#v.String() = %q, want %q", tt.p, got, tt.want)
		}
	}
}

func TestParseReference(t *testing.T) {
	maxName := strings.Repeat("a", apparmor.MaxNameLength)
	tests := []struct {
		ref  string
		want apparmor.Profile
	}{
		{"runtime/default", runtimeDefault},
		{"unconfined", unconfined},
		{"localhost/" + denyWrite, localhost(denyWrite)},
		{"localhost/" + allowWrite, localhost(allowWrite)},
		{"localhost/" + testDeny, localhost(testDeny)},
		{"localhost/" + dockerDflt, localhost(dockerDflt)},
		{"localhost/" + nginx, localhost(nginx)},
		// "/", "//" (children, hats) and ":ns:" are legal in names.
		{"localhost/" + childName, localhost(childName)},
		{"localhost/" + nsName, localhost(nsName)},
		{"localhost/foo/bar", localhost("foo/bar")},
		// Inner spaces are legal; only padding is not.
		{"localhost/" + spacedName, localhost(spacedName)},
		// The prefix is stripped once: the rest is the name.
		{"localhost/localhost/x", localhost("localhost/x")},
		{"localhost/" + maxName, localhost(maxName)},
	}
	for _, tt := range tests {
		got, err := apparmor.ParseReference(tt.ref)
		if err != nil {
			t.Errorf("ParseReference(%.40q) error: %v", tt.ref, err)
			continue
		}
		if got != tt.want {
			t.Errorf("ParseReference(%.40q) = %#v, want %#v", tt.ref, got, tt.want)
		}
		if got.String() != tt.ref {
			t.Errorf("ParseReference(%.40q).String() = %.40q, want the input back", tt.ref, got.String())
		}
	}
}

func TestParseReferenceInvalid(t *testing.T) {
	tooLong := "localhost/" + strings.Repeat("a", apparmor.MaxNameLength+1)
	tests := []struct {
		name string
		ref  string
		// wantMsg is the exact message; "" means only the common prefix is checked.
		wantMsg string
	}{
		{"empty", "", `invalid AppArmor profile name: ""`},
		{"bare name", "foo", `invalid AppArmor profile name: "foo"`},
		{"other prefix", "foo/bar", `invalid AppArmor profile name: "foo/bar"`},
		{"docker profile without prefix", dockerDflt, `invalid AppArmor profile name: "docker-default"`},
		{"capitalised runtime default", "Runtime/Default", `invalid AppArmor profile name: "Runtime/Default"`},
		{"capitalised localhost", "Localhost/" + denyWrite, `invalid AppArmor profile name: "Localhost/k8s-apparmor-example-deny-write"`},
		{"docker/default", "docker/default", `invalid AppArmor profile name: "docker/default"`},
		{"runtime/ only", "runtime/", `invalid AppArmor profile name: "runtime/"`},
		{"padded runtime/default", "runtime/default ", `invalid AppArmor profile name: "runtime/default "`},
		{"padded unconfined", " unconfined", `invalid AppArmor profile name: " unconfined"`},
		{"localhost without slash", "localhost", `invalid AppArmor profile name: "localhost"`},
		{"localhost with empty name", "localhost/", `invalid AppArmor profile name: "localhost/": the localhost profile name must not be empty`},
		{"leading space", "localhost/ " + denyWrite, `invalid AppArmor profile name: "localhost/ k8s-apparmor-example-deny-write": the profile name must not be padded with whitespace`},
		{"trailing space", "localhost/" + denyWrite + " ", `invalid AppArmor profile name: "localhost/k8s-apparmor-example-deny-write ": the profile name must not be padded with whitespace`},
		{"trailing newline", "localhost/" + denyWrite + "\n", `invalid AppArmor profile name: "localhost/k8s-apparmor-example-deny-write\n": the profile name must not be padded with whitespace`},
		{"leading tab", "localhost/\t" + denyWrite, `invalid AppArmor profile name: "localhost/\tk8s-apparmor-example-deny-write": the profile name must not be padded with whitespace`},
		{"only spaces", "localhost/   ", ""},
		{"4096-byte name", tooLong, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := apparmor.ParseReference(tt.ref)
			if err == nil {
				t.Fatalf("ParseReference(%.40q) = %#v, want an error", tt.ref, p)
			}
			var inv *apparmor.InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("error %v is a %T, want *apparmor.InvalidError", err, err)
			}
			if inv.Ref != tt.ref {
				t.Errorf("InvalidError.Ref = %.40q, want %.40q", inv.Ref, tt.ref)
			}
			if p != (apparmor.Profile{}) {
				t.Errorf("profile on error = %#v, want the zero value", p)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, `invalid AppArmor profile name: "`) {
				t.Errorf("message %q lacks the prefix", msg)
			}
			if tt.wantMsg != "" && msg != tt.wantMsg {
				t.Errorf("message\n got %q\nwant %q", msg, tt.wantMsg)
			}
		})
	}
}

func TestInvalidErrorBoundsLongReferences(t *testing.T) {
	ref := "localhost/" + strings.Repeat("a", apparmor.MaxNameLength+1) // 4106 bytes
	_, err := apparmor.ParseReference(ref)
	if err == nil {
		t.Fatal("a 4096-byte name was accepted")
	}
	msg := err.Error()
	if len(msg) > 512 {
		t.Errorf("message is %d bytes long; it must quote a bounded part of the reference", len(msg))
	}
	for _, want := range []string{`invalid AppArmor profile name: "localhost/aaa`, `..." (4106 bytes): `, "at most 4095 bytes"} {
		if !strings.Contains(msg, want) {
			t.Errorf("message %q does not contain %q", msg, want)
		}
	}
}

func TestValidateName(t *testing.T) {
	tests := []struct {
		name    string
		wantErr string // substring of the reason; "" means valid
	}{
		{denyWrite, ""},
		{childName, ""},
		{nsName, ""},
		{spacedName, ""},
		{"foo/bar", ""},
		{strings.Repeat("x", apparmor.MaxNameLength), ""},
		{"", "must not be empty"},
		{" ", "padded with whitespace"},
		{" " + denyWrite, "padded with whitespace"},
		{denyWrite + "\t", "padded with whitespace"},
		{denyWrite + "\u00a0", "padded with whitespace"}, // Unicode space too
		{strings.Repeat("x", apparmor.MaxNameLength+1), "at most 4095 bytes"},
		// The limit is in bytes, not runes: 2048 two-byte runes = 4096 bytes.
		{strings.Repeat("é", 2048), "at most 4095 bytes"},
	}
	for _, tt := range tests {
		got := apparmor.ValidateName(tt.name)
		switch {
		case tt.wantErr == "" && got != "":
			t.Errorf("ValidateName(%.40q) = %q, want valid", tt.name, got)
		case tt.wantErr != "" && !strings.Contains(got, tt.wantErr):
			t.Errorf("ValidateName(%.40q) = %q, want a reason containing %q", tt.name, got, tt.wantErr)
		}
	}
}

func FuzzParseReference(f *testing.F) {
	for _, seed := range []string{
		"", "runtime/default", "unconfined", "localhost/", "localhost/" + denyWrite,
		"localhost/" + childName, "localhost/" + nsName, "localhost/ x", "localhost/x\n",
		"foo/bar", "localhost/" + spacedName, "localhost/\u00a0", "localhost/\xff\xfe",
		"localhost/" + strings.Repeat("a", apparmor.MaxNameLength),
		"localhost/" + strings.Repeat("a", apparmor.MaxNameLength+1),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, ref string) {
		p, err := apparmor.ParseReference(ref)
		if err != nil {
			var inv *apparmor.InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("error %v is a %T, want *apparmor.InvalidError", err, err)
			}
			if inv.Ref != ref {
				t.Fatalf("InvalidError.Ref = %q, want %q", inv.Ref, ref)
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "invalid AppArmor profile name: ") || len(msg) > 1024 {
				t.Fatalf("bad message %q", msg)
			}
			return
		}
		if p.Type == apparmor.None {
			t.Fatalf("ParseReference(%q) accepted with type None", ref)
		}
		if got := p.String(); got != ref {
			t.Fatalf("ParseReference(%q).String() = %q, want the input back", ref, got)
		}
		if p.Type == apparmor.Localhost {
			if reason := apparmor.ValidateName(p.Name); reason != "" {
				t.Fatalf("accepted localhost name %q fails ValidateName: %s", p.Name, reason)
			}
		} else if p.Name != "" {
			t.Fatalf("%v profile has a name %q", p.Type, p.Name)
		}
		again, err := apparmor.ParseReference(p.String())
		if err != nil || again != p {
			t.Fatalf("re-parse of %q = %#v, %v; want %#v", p.String(), again, err, p)
		}
	})
}
