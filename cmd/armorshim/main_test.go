package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/host"
	"github.com/armorshim/armorshim/shim"
)

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte("apiVersion: armorshim.io/v1alpha1\nkind: ArmorshimConfiguration\n"+body), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestFlagsOverrideConfigFile(t *testing.T) {
	path := writeConfig(t, "runtimeEndpoint: unix:///file/containerd.sock\nlisten: unix:///file/armorshim.sock\npolicy:\n  defaultProfile: runtime/default\n")
	f := newServeFlags()
	if err := f.fs.Parse([]string{"--config", path, "--runtime-endpoint", "unix:///flag/containerd.sock", "-v", "2"}); err != nil {
		t.Fatal(err)
	}
	cfg, err := f.config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RuntimeEndpoint != "unix:///flag/containerd.sock" {
		t.Errorf("runtime endpoint %q: the flag must win", cfg.RuntimeEndpoint)
	}
	if cfg.Image() != "unix:///flag/containerd.sock" {
		t.Errorf("image endpoint %q: it follows the runtime endpoint", cfg.Image())
	}
	if cfg.Listen != "unix:///file/armorshim.sock" {
		t.Errorf("listen %q: an unset flag must not override the file", cfg.Listen)
	}
	if cfg.Policy.DefaultProfile != "runtime/default" {
		t.Errorf("policy from the file lost: %+v", cfg.Policy)
	}

	// A reload reads the file again and applies the same flags.
	if err := os.WriteFile(path, []byte("apiVersion: armorshim.io/v1alpha1\nkind: ArmorshimConfiguration\nruntimeEndpoint: unix:///changed.sock\npolicy:\n  enabled: false\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err = f.config()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RuntimeEndpoint != "unix:///flag/containerd.sock" || cfg.Policy.Enabled == nil || *cfg.Policy.Enabled {
		t.Errorf("reloaded config = %+v", cfg)
	}
}

func TestInvalidConfigNamesFileAndField(t *testing.T) {
	path := writeConfig(t, "policy:\n  defaultProfile: foo/bar\n")
	f := newServeFlags()
	if err := f.fs.Parse([]string{"--config", path}); err != nil {
		t.Fatal(err)
	}
	_, err := f.config()
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "policy.defaultProfile") || !strings.Contains(err.Error(), `"foo/bar"`) {
		t.Fatalf("err = %v", err)
	}
}

func TestCheckReport(t *testing.T) {
	snap := &apparmor.Snapshot{Enabled: true, Profiles: map[string]apparmor.Mode{
		"k8s-apparmor-example-deny-write": apparmor.ModeEnforce,
		"docker-default":                  apparmor.ModeEnforce,
	}}
	pol := &apparmor.Policy{
		Default: apparmor.Profile{Type: apparmor.RuntimeDefault},
		Allowed: []apparmor.Profile{{Type: apparmor.RuntimeDefault}, {Type: apparmor.Localhost, Name: "k8s-nginx"}},
	}

	r := buildReport(snap, pol, []string{"localhost/k8s-apparmor-example-deny-write"})
	r.finish()
	if r.OK || strings.Join(r.Missing, ",") != "k8s-nginx" {
		t.Fatalf("ok=%t missing=%q: the policy's k8s-nginx is not loaded", r.OK, r.Missing)
	}
	var text bytes.Buffer
	r.print(&text)
	for _, want := range []string{
		"AppArmor enabled\n",
		"Loaded profiles (2):\n  docker-default (enforce)\n  k8s-apparmor-example-deny-write (enforce)\n",
		`profile "k8s-apparmor-example-deny-write": loaded (enforce) [--profile]`,
		`profile "k8s-nginx": not loaded [policy]`,
		"Missing profiles: k8s-nginx",
		`defaultProfile="runtime/default"`,
		"Policy modes: allowedProfiles=enforce defaultProfile=enforce requireEnforce=enforce\n",
	} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back map[string]any
	json.Unmarshal(b, &back)
	if back["ok"] != false || back["apparmor"].(map[string]any)["enabled"] != true || len(back["profiles"].([]any)) != 2 {
		t.Errorf("json report = %s", b)
	}

	// Rules in warn or audit mode are shown as such.
	pol.Modes = map[apparmor.Rule]apparmor.RuleMode{apparmor.RuleAllowedProfiles: apparmor.Warn, apparmor.RuleRequireEnforce: apparmor.Warn | apparmor.Audit}
	r = buildReport(snap, pol, nil)
	text.Reset()
	r.print(&text)
	if want := "Policy modes: allowedProfiles=warn defaultProfile=enforce requireEnforce=[warn, audit] (warn, audit: reported, not enforced)\n"; !strings.Contains(text.String(), want) {
		t.Errorf("text report lacks %q:\n%s", want, text.String())
	}
	b, _ = json.Marshal(r.Policy)
	if want := `"modes":{"allowedProfiles":["warn"],"defaultProfile":["enforce"],"requireEnforce":["warn","audit"]}`; !strings.Contains(string(b), want) {
		t.Errorf("json policy = %s, want %s", b, want)
	}

	ok := buildReport(snap, &apparmor.Policy{}, []string{"k8s-apparmor-example-deny-write"})
	ok.finish()
	if !ok.OK || len(ok.Missing) != 0 {
		t.Errorf("all loaded: ok=%t missing=%q", ok.OK, ok.Missing)
	}

	off := buildReport(&apparmor.Snapshot{Detail: "the AppArmor module is disabled"}, &apparmor.Policy{}, nil)
	off.finish()
	text.Reset()
	off.print(&text)
	if off.OK || !strings.Contains(text.String(), "AppArmor is not enabled on the host: the AppArmor module is disabled") {
		t.Errorf("disabled host: ok=%t\n%s", off.OK, text.String())
	}
}

// With auditd running, denials reach only its log: check says whether
// armorshim can read it, instead of reporting none.
func TestCheckReportDenials(t *testing.T) {
	procfs := t.TempDir()
	os.MkdirAll(filepath.Join(procfs, "712"), 0o755)
	os.WriteFile(filepath.Join(procfs, "712", "comm"), []byte("auditd\n"), 0o644)
	kmsg := filepath.Join(t.TempDir(), "kmsg")
	os.WriteFile(kmsg, nil, 0o644)
	audit := filepath.Join(t.TempDir(), "audit.log")
	report := func(procfs string, d shim.DenialsConfig) string {
		r := buildReport(&apparmor.Snapshot{Enabled: true}, &apparmor.Policy{}, nil)
		r.addDenials(host.NewReader(t.TempDir(), procfs), d)
		var text bytes.Buffer
		r.print(&text)
		return text.String()
	}
	for _, c := range []struct {
		name   string
		procfs string
		d      shim.DenialsConfig
		want   string
	}{
		{"auditd, its log missing", procfs, shim.DenialsConfig{KernelLog: kmsg, AuditLog: audit}, "Denials: NOT VISIBLE: auditd (pid 712) receives the kernel's audit records and its log cannot be read"},
		{"auditd, no audit log configured", procfs, shim.DenialsConfig{KernelLog: kmsg}, "Denials: NOT VISIBLE: auditd (pid 712) receives the kernel's audit records and denials.auditLog is empty"},
		{"no auditd", t.TempDir(), shim.DenialsConfig{KernelLog: kmsg, AuditLog: audit}, "Denials: visible in " + kmsg},
		{"off", t.TempDir(), shim.DenialsConfig{}, "Denials: NOT VISIBLE: attribution is off"},
	} {
		if got := report(c.procfs, c.d); !strings.Contains(got, c.want) {
			t.Errorf("%s: report lacks %q:\n%s", c.name, c.want, got)
		}
	}
	os.WriteFile(audit, nil, 0o600)
	if got, want := report(procfs, shim.DenialsConfig{KernelLog: kmsg, AuditLog: audit}), "Denials: visible in "+audit; !strings.Contains(got, want) {
		t.Errorf("auditd, its log readable: report lacks %q:\n%s", want, got)
	}
}

// TestCheckCommand runs check against fake sysfs trees: exit codes follow
// the host state and the wanted profiles.
func TestCheckCommand(t *testing.T) {
	sys := t.TempDir()
	mk := func(path, data string) {
		p := filepath.Join(sys, path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg := writeConfig(t, "profiles:\n  directory: \"\"\n")
	if code := check([]string{"--sysfs", sys, "--config", cfg}); code != 1 {
		t.Errorf("no AppArmor: exit %d, want 1", code)
	}
	mk("module/apparmor/parameters/enabled", "Y\n")
	mk("kernel/security/apparmor/profiles", "k8s-apparmor-example-deny-write (enforce)\n")
	if code := check([]string{"--sysfs", sys, "--config", cfg, "--profile", "k8s-apparmor-example-deny-write"}); code != 0 {
		t.Errorf("loaded: exit %d, want 0", code)
	}
	if code := check([]string{"--sysfs", sys, "--config", cfg, "--profile", "k8s-apparmor-example-allow-write"}); code != 1 {
		t.Errorf("not loaded: exit %d, want 1", code)
	}
	if code := check([]string{"--output", "yaml"}); code != 2 {
		t.Errorf("bad --output: exit %d, want 2", code)
	}
}

// TestLoadCommand runs `armorshim load DIR` with a fake apparmor_parser on
// PATH: each file is loaded once, a failure exits 1 with the parser's words.
func TestLoadCommand(t *testing.T) {
	trustOwnFiles(t)
	bin := t.TempDir()
	script := "#!/bin/sh\nfor a in \"$@\"; do f=\"$a\"; done\nif grep -q broken \"$f\"; then echo \"AppArmor parser error for $f: syntax error\" >&2; exit 1; fi\n"
	if err := os.WriteFile(filepath.Join(bin, "apparmor_parser"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	sys := t.TempDir()
	os.MkdirAll(filepath.Join(sys, "module/apparmor/parameters"), 0o755)
	os.WriteFile(filepath.Join(sys, "module/apparmor/parameters/enabled"), []byte("Y\n"), 0o644)
	os.MkdirAll(filepath.Join(sys, "kernel/security/apparmor"), 0o755)
	os.WriteFile(filepath.Join(sys, "kernel/security/apparmor/profiles"), nil, 0o644)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "deny-write"), []byte("profile k8s-apparmor-example-deny-write {}\n"), 0o644)
	if code := load([]string{"--sysfs", sys, dir}); code != 0 {
		t.Errorf("good directory: exit %d", code)
	}
	os.WriteFile(filepath.Join(dir, "zz-broken"), []byte("broken\n"), 0o644)
	if code := load([]string{"--sysfs", sys, dir}); code != 1 {
		t.Errorf("broken file: exit %d, want 1", code)
	}
	if code := load([]string{"--sysfs", t.TempDir(), dir}); code != 1 {
		t.Errorf("AppArmor off: exit %d, want 1", code)
	}
	if code := load(nil); code != 2 {
		t.Errorf("no directory: exit %d, want 2", code)
	}
}

// TestMain runs the command itself when a test execs the test binary with
// ARMORSHIM_RUN_MAIN set, so tests see what a user sees.
func TestMain(m *testing.M) {
	if os.Getenv("ARMORSHIM_RUN_MAIN") != "" {
		os.Args = append([]string{"armorshim"}, strings.Fields(os.Getenv("ARMORSHIM_RUN_MAIN"))...)
		main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runMain(t *testing.T, args string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "ARMORSHIM_RUN_MAIN="+args)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// --help and --version work before any command, and the help names every
// command and serve's own flags without drowning them in klog's.
func TestHelpAndVersion(t *testing.T) {
	for _, args := range []string{"--help", "-h", "help"} {
		out, err := runMain(t, args)
		if err != nil {
			t.Fatalf("%s: %v\n%s", args, err, out)
		}
		for _, want := range []string{"serve", "check", "load DIR", "pss check", "--version", "-runtime-endpoint", "-config", defaultConfigPath} {
			if !strings.Contains(out, want) {
				t.Errorf("%s: output does not mention %q:\n%s", args, want, out)
			}
		}
		if strings.Contains(out, "-alsologtostderr") {
			t.Errorf("%s: klog's flags listed among serve's:\n%s", args, out)
		}
	}
	for _, args := range []string{"--version", "version"} {
		out, err := runMain(t, args)
		if err != nil || !strings.HasPrefix(out, "armorshim ") {
			t.Errorf("%s: %v %q", args, err, out)
		}
	}
}

// serve reads the default configuration file as check and pss check do;
// without it the defaults apply, and --config= reads no file at all.
func TestServeReadsDefaultConfig(t *testing.T) {
	saved := defaultConfigPath
	t.Cleanup(func() { defaultConfigPath = saved })
	defaultConfigPath = writeConfig(t, "runtimeEndpoint: unix:///file/containerd.sock\n")

	parse := func(args ...string) *shim.Config {
		t.Helper()
		f := newServeFlags()
		if err := f.fs.Parse(args); err != nil {
			t.Fatal(err)
		}
		cfg, err := f.config()
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	if got := parse().RuntimeEndpoint; got != "unix:///file/containerd.sock" {
		t.Errorf("serve without --config: runtime endpoint %q, want the default file's", got)
	}
	if got := parse("--config="); got.RuntimeEndpoint != shim.DefaultConfig().RuntimeEndpoint {
		t.Errorf("--config=: runtime endpoint %q, want the built-in default", got.RuntimeEndpoint)
	}
	defaultConfigPath = filepath.Join(t.TempDir(), "absent.yaml")
	if got := parse().RuntimeEndpoint; got != shim.DefaultConfig().RuntimeEndpoint {
		t.Errorf("no default file: runtime endpoint %q, want the built-in default", got)
	}
}

// trustOwnFiles makes the files the test writes trusted: they are owned by
// the test's uid, not necessarily root.
func trustOwnFiles(t *testing.T) {
	old := trustedUID
	trustedUID = uint32(os.Getuid())
	t.Cleanup(func() { trustedUID = old })
}

// fakeParserOnPath puts an apparmor_parser on PATH that answers --names from
// "profile NAME" lines and fails on files holding "broken".
func fakeParserOnPath(t *testing.T) {
	t.Helper()
	bin := t.TempDir()
	script := `#!/bin/sh
for a in "$@"; do f="$a"; done
case "$1" in --names) sed -n 's/^profile \([^ ]*\).*/\1/p' "$f"; exit 0 ;; esac
if grep -q broken "$f"; then echo "AppArmor parser error for $f: syntax error" >&2; exit 1; fi
`
	if err := os.WriteFile(filepath.Join(bin, "apparmor_parser"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
}

// An untrusted file of the profile directory is shown refused with why, and
// check fails; `load` refuses it too.
func TestCheckAndLoadRefuseUntrustedFiles(t *testing.T) {
	trustOwnFiles(t)
	fakeParserOnPath(t)
	sys := t.TempDir()
	for path, data := range map[string]string{
		"module/apparmor/parameters/enabled": "Y\n",
		"kernel/security/apparmor/profiles":  "k8s-apparmor-example-deny-write (enforce)\n",
	} {
		os.MkdirAll(filepath.Join(sys, filepath.Dir(path)), 0o755)
		os.WriteFile(filepath.Join(sys, path), []byte(data), 0o644)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "deny-write"), []byte("profile k8s-apparmor-example-deny-write {}\n"), 0o644)
	cfg := writeConfig(t, "profiles:\n  directory: "+dir+"\n  statusFile: "+filepath.Join(t.TempDir(), "none.json")+"\n")
	if code := check([]string{"--sysfs", sys, "--config", cfg}); code != 0 {
		t.Fatalf("trusted directory: exit %d, want 0", code)
	}

	evil := filepath.Join(dir, "evil")
	os.WriteFile(evil, []byte("profile cri-containerd.apparmor.d flags=(unconfined) {}\n"), 0o644)
	os.Chmod(evil, 0o666)
	r := buildReport(&apparmor.Snapshot{Enabled: true, Profiles: map[string]apparmor.Mode{"k8s-apparmor-example-deny-write": "enforce"}}, &apparmor.Policy{}, nil)
	r.addDirectory(&host.Loader{Dir: dir, Parser: "apparmor_parser", TrustedUID: trustedUID})
	r.finish()
	if r.OK {
		t.Error("a refused file: ok=true")
	}
	d := r.ProfileDirectory
	if d == nil || len(d.Files) != 2 || d.Files[1].File != "evil" || d.Files[1].Refused != "writable by others" || len(d.Files[1].Profiles) != 0 {
		t.Fatalf("directory report = %+v", d)
	}
	var text bytes.Buffer
	r.print(&text)
	if !strings.Contains(text.String(), "  evil: refused: writable by others\n") {
		t.Errorf("text report:\n%s", text.String())
	}
	if code := check([]string{"--sysfs", sys, "--config", cfg}); code != 1 {
		t.Errorf("refused file: exit %d, want 1", code)
	}
	if code := load([]string{"--sysfs", sys, dir}); code != 1 {
		t.Errorf("load with a refused file: exit %d, want 1", code)
	}
}

// check shows the serving armorshim's last load error of a file, from its
// status file, and fails.
func TestCheckShowsLoadErrors(t *testing.T) {
	trustOwnFiles(t)
	fakeParserOnPath(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "deny-write"), []byte("profile k8s-apparmor-example-deny-write {}\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "nginx"), []byte("profile k8s-nginx {}\n"), 0o644)
	snap := &apparmor.Snapshot{Enabled: true, Profiles: map[string]apparmor.Mode{
		"k8s-apparmor-example-deny-write": "enforce", "k8s-nginx": "enforce"}}
	report := func(status string) *checkReport {
		r := buildReport(snap, &apparmor.Policy{}, nil)
		r.addDirectory(&host.Loader{Dir: dir, Parser: "apparmor_parser", TrustedUID: trustedUID})
		r.addLoadStatus(status)
		r.finish()
		return r
	}

	missing := filepath.Join(t.TempDir(), "profiles.json")
	r := report(missing)
	if !r.OK || !strings.Contains(r.ProfileDirectory.StatusError, "armorshim serve has not run") {
		t.Fatalf("no status file: ok=%t %+v", r.OK, r.ProfileDirectory)
	}

	since := time.Date(2025, 1, 1, 10, 0, 0, 0, time.UTC)
	retry := since.Add(4 * time.Second)
	const msg = `apparmor_parser: Unable to replace "k8s-nginx".  Cannot allocate memory`
	body, _ := json.Marshal(host.LoaderStatus{Directory: dir, Since: since, Files: []host.ProfileFile{
		{Name: "deny-write", Loaded: true},
		// An older version of k8s-nginx is loaded: only the status tells.
		{Name: "nginx", Error: msg, Failures: 3, Retry: retry},
	}})
	os.WriteFile(missing, body, 0o644)
	r = report(missing)
	if r.OK {
		t.Error("a failed load: ok=true")
	}
	d := r.ProfileDirectory
	if len(d.Files) != 2 || d.Files[0].Load != "loaded" || d.Files[1].Load != "failed" || d.Files[1].Error != msg ||
		d.Files[1].Failures != 3 || !d.Files[1].Retry.Equal(retry) || !d.StatusSince.Equal(since) {
		t.Fatalf("directory report = %+v", d)
	}
	var text bytes.Buffer
	r.print(&text)
	if want := "  nginx: k8s-nginx: load failed 3 time(s), next try " + retry.Local().Format(time.DateTime) + ": " + msg + "\n"; !strings.Contains(text.String(), want) {
		t.Errorf("text report lacks %q:\n%s", want, text.String())
	}
	b, _ := json.Marshal(r)
	if !strings.Contains(string(b), `"load":"failed","error":"apparmor_parser: Unable to replace \"k8s-nginx\".  Cannot allocate memory","failures":3`) {
		t.Errorf("json report: %s", b)
	}

	// A status of another directory is not used.
	body, _ = json.Marshal(host.LoaderStatus{Directory: "/elsewhere", Files: []host.ProfileFile{{Name: "nginx", Error: msg, Failures: 1}}})
	os.WriteFile(missing, body, 0o644)
	if r := report(missing); !r.OK || r.ProfileDirectory.Files[1].Load != "" || !strings.Contains(r.ProfileDirectory.StatusError, "/elsewhere") {
		t.Errorf("status of another directory: ok=%t %+v", r.OK, r.ProfileDirectory)
	}
}
