package host_test

import (
	"maps"
	"strings"
	"testing"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/host"
)

type profiles = map[string]apparmor.Mode

// seedProfiles is the securityfs listing from the Kubernetes AppArmor tutorial.
const seedProfiles = "apparmor-test-deny-write (enforce)\n" +
	"apparmor-test-audit-write (enforce)\n" +
	"docker-default (enforce)\n" +
	"k8s-nginx (enforce)\n"

func TestParseProfiles(t *testing.T) {
	seedWant := profiles{
		"apparmor-test-deny-write":  "enforce",
		"apparmor-test-audit-write": "enforce",
		"docker-default":            "enforce",
		"k8s-nginx":                 "enforce",
	}
	tests := []struct {
		name string
		data string
		want profiles
	}{
		{"empty", "", profiles{}},
		{"only newlines", "\n\n\n", profiles{}},
		{"seed listing", seedProfiles, seedWant},
		{"no trailing newline", strings.TrimSuffix(seedProfiles, "\n"), seedWant},
		{"empty lines anywhere", "\n\napparmor-test-deny-write (enforce)\n\n\ndocker-default (enforce)\n\n", profiles{
			"apparmor-test-deny-write": "enforce", "docker-default": "enforce",
		}},
		{"all modes", "a (enforce)\nb (complain)\nc (kill)\nd (unconfined)\ne (user)\n", profiles{
			"a": "enforce", "b": "complain", "c": "kill", "d": "unconfined", "e": "user",
		}},
		{"name with spaces", "k8s nginx with spaces (enforce)\n", profiles{"k8s nginx with spaces": "enforce"}},
		{"child profiles and hats", "/usr/bin/foo (enforce)\n/usr/bin/foo//null-/bin/sh (complain)\n/usr/bin/foo//HAT (enforce)\n", profiles{
			"/usr/bin/foo": "enforce", "/usr/bin/foo//null-/bin/sh": "complain", "/usr/bin/foo//HAT": "enforce",
		}},
		{"namespaced profiles", ":ns:name (enforce)\n:ns://usr/bin/x (kill)\n:ns:k8s-nginx//child (complain)\n", profiles{
			":ns:name": "enforce", ":ns://usr/bin/x": "kill", ":ns:k8s-nginx//child": "complain",
		}},
		{"name containing \" (\"", "weird (x) name (enforce)\nunbalanced (paren (complain)\n", profiles{
			"weird (x) name": "enforce", "unbalanced (paren": "complain",
		}},
		{"name with parentheses but no space before them", "snap.foo(bar) (enforce)\n", profiles{"snap.foo(bar)": "enforce"}},
		{"missing mode", "docker-default\nk8s-nginx (enforce)\n", profiles{"docker-default": "", "k8s-nginx": "enforce"}},
		{"unterminated mode", "docker-default (enforce\n", profiles{"docker-default (enforce": ""}},
		{"empty mode", "docker-default ()\n", profiles{"docker-default": ""}},
		{"duplicate name: the last line wins", "k8s-nginx (complain)\nk8s-nginx (enforce)\n", profiles{"k8s-nginx": "enforce"}},
		{"name that is only a mode", " (enforce)\n", profiles{"": "enforce"}},
		{"utf-8 name", "프로파일 (enforce)\n", profiles{"프로파일": "enforce"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := host.ParseProfiles(tt.data)
			if got == nil {
				t.Fatal("ParseProfiles returned a nil map")
			}
			if !maps.Equal(got, tt.want) {
				t.Errorf("ParseProfiles(%q)\n got %q\nwant %q", tt.data, got, tt.want)
			}
		})
	}
}

// render writes a profile set back in securityfs's format.
func render(p profiles) string {
	var b strings.Builder
	for name, mode := range p {
		b.WriteString(name + " (" + string(mode) + ")\n")
	}
	return b.String()
}

func FuzzParseProfiles(f *testing.F) {
	for _, seed := range []string{
		"", "\n", seedProfiles, strings.TrimSuffix(seedProfiles, "\n"),
		"/usr/bin/foo//null-/bin/sh (complain)\n", ":ns:name (enforce)", "weird (x) name (enforce)",
		"docker-default", "docker-default ()", " ()", "a (b (c)", "x (y) z)\n\n(kill)",
		"k8s nginx with spaces (user)\r\n", "\x00 (\xff)",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data string) {
		got := host.ParseProfiles(data)
		for _, line := range strings.Split(data, "\n") {
			if line == "" {
				continue
			}
			// Every non-empty line yields a key: the line itself or the
			// part before its mode.
			name := line
			if i := strings.LastIndex(line, " ("); i >= 0 && strings.HasSuffix(line, ")") {
				name = line[:i]
			}
			if _, ok := got[name]; !ok {
				t.Fatalf("line %q yields no key %q in %q", line, name, got)
			}
		}
		for name, mode := range got {
			if strings.Contains(name, "\n") || strings.Contains(string(mode), "\n") {
				t.Fatalf("entry %q (%q) holds a newline", name, mode)
			}
			if strings.Contains(string(mode), " (") {
				t.Fatalf("mode %q of %q holds \" (\": the mode must come from the last \" (\"", mode, name)
			}
		}
		if len(got) > strings.Count(data, "\n")+1 {
			t.Fatalf("%d entries from %d lines", len(got), strings.Count(data, "\n")+1)
		}
		// Re-rendering every entry as "name (mode)" gives the same set.
		if again := host.ParseProfiles(render(got)); !maps.Equal(again, got) {
			t.Fatalf("round trip of %q\n got %q\nwant %q", data, again, got)
		}
	})
}
