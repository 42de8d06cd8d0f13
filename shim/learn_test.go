package shim

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/host"
)

func TestLearningConfig(t *testing.T) {
	for _, c := range []struct {
		name   string
		mutate func(*Config)
		err    string
	}{
		{"off by default", func(*Config) {}, ""},
		{"on", func(c *Config) { c.Learning.Namespaces = []string{"dev"}; c.Denials.KernelLog = "/dev/kmsg" }, ""},
		{"without the kernel log", func(c *Config) { c.Learning.Namespaces = []string{"dev"}; c.Denials = DenialsConfig{} }, "set denials.kernelLog or denials.auditLog"},
		{"inside the profile directory", func(c *Config) {
			c.Learning.Namespaces = []string{"dev"}
			c.Denials.KernelLog = "/dev/kmsg"
			c.Learning.Directory = "/etc/armorshim/profiles.d/learned"
		}, "is inside profiles.directory"},
		{"relative", func(c *Config) {
			c.Learning.Namespaces = []string{"dev"}
			c.Denials.KernelLog = "/dev/kmsg"
			c.Learning.Directory = "learned"
		}, "is not an absolute path"},
	} {
		cfg := DefaultConfig()
		c.mutate(cfg)
		pol, err := cfg.Validate()
		switch {
		case c.err == "" && err != nil:
			t.Errorf("%s: %v", c.name, err)
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s: %v, want %q", c.name, err, c.err)
		case err == nil && strings.Join(pol.LearnNamespaces, ",") != strings.Join(cfg.Learning.Namespaces, ","):
			t.Errorf("%s: policy learns in %v", c.name, pol.LearnNamespaces)
		}
	}
}

// GenerateProfile writes what was learned as a profile into the learning
// directory once the parser accepts it, and writes nothing it refuses.
func TestGenerateProfile(t *testing.T) {
	dir := t.TempDir()
	store := &host.LearningStore{Dir: dir, MaxAccesses: 10}
	if err := os.MkdirAll(filepath.Join(dir, "web"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "web", "sessions.jsonl"), []byte(`{"profile":"armorshim-learn.web.u.app.0","namespace":"dev","pod":"web-1","container":"app","started":"2026-12-05T10:00:00Z"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Record("armorshim-learn.web.u.app.0", apparmor.Access{Class: "file", Operation: "open", Name: "/etc/app.conf", Mask: "r"}, time.Date(2026, 12, 5, 10, 5, 0, 0, time.UTC)); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.Learning.Directory = dir
	cfg.Profiles.Parser = "/bin/true"
	g, err := GenerateProfile(context.Background(), cfg, "web")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "web", "web"))
	if g.Path != filepath.Join(dir, "web", "web") || string(b) != g.Text || !strings.Contains(g.Text, "  /etc/app.conf r,\n") ||
		!strings.Contains(g.Text, "# Learned from: dev/web-1 (container app)") {
		t.Errorf("generated %s:\n%s", g.Path, b)
	}
	cfg.Profiles.Parser = "/bin/false"
	os.Remove(g.Path)
	if _, err := GenerateProfile(context.Background(), cfg, "web"); err == nil || !strings.Contains(err.Error(), "apparmor_parser refuses") {
		t.Errorf("refused by the parser: %v", err)
	}
	if _, err := os.Stat(g.Path); err == nil {
		t.Error("a profile the parser refused was written")
	}
	if _, err := GenerateProfile(context.Background(), cfg, "other"); err == nil || !strings.Contains(err.Error(), "no pod has learned it") {
		t.Errorf("nothing learned: %v", err)
	}
}
