package shim

import (
	"context"
	"os"
	"os/exec"
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
		{"on", func(c *Config) { c.Learning.Namespaces = []string{"dev"}; c.Denials.AuditNetlink = true }, ""},
		{"without the audit multicast group", func(c *Config) { c.Learning.Namespaces = []string{"dev"} }, "set denials.auditNetlink: true"},
		{"inside the profile directory", func(c *Config) {
			c.Learning.Namespaces = []string{"dev"}
			c.Denials.AuditNetlink = true
			c.Learning.Directory = "/etc/armorshim/profiles.d/learned"
		}, "hold one another"},
		{"holding the profile directory", func(c *Config) { c.Learning.Directory = "/etc/armorshim" }, "hold one another"},
		{"no bound, learning off", func(c *Config) { c.Learning.MaxActive = 0 }, "must be at least 1"},
		{"relative", func(c *Config) {
			c.Learning.Namespaces = []string{"dev"}
			c.Denials.AuditNetlink = true
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
	if err := os.WriteFile(filepath.Join(dir, "web", "armorshim-learn.web.u.app.0.learning"), nil, 0o600); err != nil {
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

// Every kind of rule the generator writes, and the learning profile, are
// accepted by Debian 12's apparmor_parser (3.0), which CI installs.
func TestGeneratedProfilesParse(t *testing.T) {
	parser, err := exec.LookPath("apparmor_parser")
	if err != nil {
		t.Fatal("apparmor_parser is needed (Debian: apt-get install apparmor): ", err)
	}
	dir := t.TempDir()
	store := &host.LearningStore{Dir: dir, MaxAccesses: 100}
	const profile = "armorshim-learn.web.u.app.0"
	if err := os.MkdirAll(filepath.Join(dir, "web"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "web", "sessions.jsonl"), []byte(`{"profile":"`+profile+`","namespace":"dev","pod":"web-1","container":"app","started":"2026-12-05T10:00:00Z"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	learning := filepath.Join(dir, "web", profile+".learning")
	if err := os.WriteFile(learning, []byte(apparmor.LearningProfile(profile)), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(parser, "--skip-kernel-load", "--skip-cache", "--", learning).CombinedOutput(); err != nil {
		t.Fatalf("the learning profile: %v: %s", err, out)
	}
	for _, a := range []apparmor.Access{
		{Class: "file", Operation: "open", Name: "/etc/app/app.conf", Mask: "r"},
		{Class: "file", Operation: "file_mmap", Name: "/lib/libc.so.6", Mask: "rm"},
		{Class: "file", Operation: "mkdir", Name: "/work/", Mask: "c"},
		{Class: "file", Operation: "exec", Name: "/bin/date", Mask: "x"},
		{Class: "file", Operation: "open", Name: "/proc/12/task/13/status", Mask: "r"},
		{Class: "file", Operation: "open", Name: "/app/pages/[id].js", Mask: "r"},
		{Class: "file", Operation: "open", Name: "/app/my file, #1", Mask: "r"},
		{Class: "file", Operation: "open", Name: `/app/q"uote\`, Mask: "r"},
		{Class: "file", Operation: "open", Name: "/app/{a}@{b}^*?", Mask: "r"},
		{Class: "file", Operation: "link", Name: "/work/l", Target: "/work/t", Mask: "l"},
		{Class: "file", Operation: "open", Name: "/tmp/tmp.aaa1", Mask: "wc"},
		{Class: "file", Operation: "open", Name: "/tmp/tmp.aaa2", Mask: "wc"},
		{Class: "file", Operation: "open", Name: "/tmp/tmp.aaa3", Mask: "wc"},
		{Class: "file", Operation: "open", Name: "/var/log/app.log", Mask: "ak"},
		{Class: "cap", Capname: "net_bind_service"},
		{Class: "net", Family: "inet", SockType: "stream"},
		{Class: "net", Family: "unix", SockType: "dgram"},
		{Class: "signal", Mask: "send", Signal: "term", Peer: profile},
		{Class: "signal", Mask: "receive", Signal: "kill", Peer: "unconfined"},
		{Class: "ptrace", Mask: "read", Peer: "unconfined"},
		{Class: "mount", Operation: "mount", FsType: "tmpfs", SrcName: "tmpfs", Name: "/mnt/"},
		{Class: "mount", Operation: "umount", Name: "/mnt/"},
		{Class: "mount", Operation: "remount", Name: "/mnt/"},
		{Class: "mount", Operation: "pivotroot", Name: "/new/"},
		{Class: "unix", Mask: "create", SockType: "stream"},
	} {
		if _, err := store.Record(profile, a, time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	cfg := DefaultConfig()
	cfg.Learning.Directory = dir
	cfg.Profiles.Parser = parser
	g, err := GenerateProfile(context.Background(), cfg, "web")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(g.Text, ",\n"); n < 20 {
		t.Errorf("only %d rules:\n%s", n, g.Text)
	}
}
