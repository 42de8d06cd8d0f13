package host

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/armorshim/armorshim/apparmor"
)

var labelName = regexp.MustCompile(`^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$`)

func TestLabelName(t *testing.T) {
	long := strings.Repeat("x", 100)
	cases := []struct {
		profile string
		same    bool
	}{
		{"k8s-apparmor-example-deny-write", true},
		{"docker-default", true},
		{"cri-containerd.apparmor.d", true},
		{"/usr/bin/man", false},
		{"/usr/bin/foo//null-/bin/sh", false},
		{":ns:k8s-nginx", false},
		{"name with spaces", false},
		{"-leading", false},
		{long, false},
		{"x", true},
		{"é", false},
		{"", false},
	}
	seen := map[string]string{}
	for _, c := range cases {
		got := LabelName(c.profile)
		if !labelName.MatchString(got) {
			t.Errorf("LabelName(%q) = %q: not a valid label name", c.profile, got)
		}
		if (got == c.profile) != c.same {
			t.Errorf("LabelName(%q) = %q, want unchanged=%t", c.profile, got, c.same)
		}
		if other, dup := seen[got]; dup {
			t.Errorf("%q and %q share label %q", other, c.profile, got)
		}
		seen[got] = c.profile
	}
	// Names that map to the same characters still get distinct labels.
	if LabelName("a b") == LabelName("a:b") {
		t.Error(`"a b" and "a:b" share a label`)
	}
	if a, b := LabelName(long+"1"), LabelName(long+"2"); a == b || len(a) > 63 {
		t.Errorf("long names: %q %q", a, b)
	}
}

func TestFeatures(t *testing.T) {
	expires := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	snap := &apparmor.Snapshot{Enabled: true, Profiles: map[string]apparmor.Mode{
		"k8s-apparmor-example-deny-write": apparmor.ModeEnforce,
		"k8s-nginx":                       apparmor.ModeComplain,
		":ns:odd name":                    apparmor.ModeEnforce,
		"strange-mode":                    "",
	}}
	got := string(Features(snap, expires))
	want := []string{
		"# +expiry-time=2026-11-26T12:00:00Z",
		"apparmor.armorshim.io/enabled=true",
		"apparmor.armorshim.io/k8s-apparmor-example-deny-write=enforce",
		"apparmor.armorshim.io/k8s-nginx=complain",
		"apparmor.armorshim.io/" + LabelName(":ns:odd name") + "=enforce",
		"apparmor.armorshim.io/strange-mode=unknown",
	}
	for _, w := range want {
		if !strings.Contains(got, w+"\n") {
			t.Errorf("features lack %q:\n%s", w, got)
		}
	}
	lines := 0
	for _, l := range strings.Split(strings.TrimSpace(got), "\n") {
		if !strings.HasPrefix(l, "#") {
			lines++
		}
	}
	if lines != 5 {
		t.Errorf("%d label lines, want 5:\n%s", lines, got)
	}

	for _, off := range []*apparmor.Snapshot{{Enabled: false}, {Enabled: true, Err: errors.New("EACCES")}} {
		got := string(Features(off, expires))
		if !strings.Contains(got, "apparmor.armorshim.io/enabled=false\n") || strings.Count(got, "apparmor.armorshim.io/") != 1 {
			t.Errorf("AppArmor off: features =\n%s", got)
		}
	}
}

func TestWriteFeaturesAtomically(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "features.d")
	if err := WriteFeatures(dir, []byte("a=1\n")); err != nil {
		t.Fatal(err)
	}
	if err := WriteFeatures(dir, []byte("a=2\n")); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != FeatureFileName {
		t.Fatalf("features.d holds %v, want only %s", entries, FeatureFileName)
	}
	data, _ := os.ReadFile(filepath.Join(dir, FeatureFileName))
	if string(data) != "a=2\n" {
		t.Fatalf("content %q", data)
	}
	fi, _ := os.Stat(filepath.Join(dir, FeatureFileName))
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v", fi.Mode())
	}
}
