// Package packaging_test builds armorshim's Debian package with deb.sh, as
// `make deb` does, and checks what it holds and what installing, removing
// and purging it do (dpkg --root, no systemd).
package packaging_test

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
)

// goCmd is the go command: $GO (make passes its own), else go on PATH.
func goCmd() string {
	if g := os.Getenv("GO"); g != "" {
		return g
	}
	return "go"
}

// need returns the path of a Debian tool; missing, it fails in CI and skips
// elsewhere.
func need(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is missing: .ci/run installs %s", tool, pkg)
		}
		t.Skipf("%s not installed (apt-get install %s)", tool, pkg)
	}
	return p
}

func run(t *testing.T, dir string, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return string(out)
}

var (
	debOnce sync.Once
	debPath string
	debErr  error
	tmpRoot string
)

// deb builds the package once for the package's tests: a static armorshim,
// then deb.sh build.
func deb(t *testing.T) string {
	t.Helper()
	need(t, "dpkg-deb", "dpkg")
	debOnce.Do(func() {
		tmpRoot, debErr = os.MkdirTemp("", "armorshim-deb")
		if debErr != nil {
			return
		}
		bin := filepath.Join(tmpRoot, "armorshim")
		build := exec.Command(goCmd(), "build", "-trimpath", "-ldflags", "-s -w -X main.version=packaging-test",
			"-o", bin, "../cmd/armorshim")
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			debErr = fmt.Errorf("building armorshim: %v\n%s", err, out)
			return
		}
		cmd := exec.Command("sh", "deb.sh", "build", filepath.Join(tmpRoot, "dist"))
		cmd.Env = append(os.Environ(), "ARMORSHIM_BIN="+bin, "GO="+goCmd())
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			debErr = fmt.Errorf("deb.sh build: %v\n%s", err, stderr.Bytes())
			return
		}
		debPath = strings.TrimSpace(string(out))
	})
	if debErr != nil {
		t.Fatal(debErr)
	}
	return debPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if tmpRoot != "" {
		os.RemoveAll(tmpRoot)
	}
	os.Exit(code)
}

// The package's files (directories aside) and their modes: nothing more,
// nothing less. Nothing under /etc/systemd or /etc/kubernetes: installing
// the package does not switch the kubelet.
var wantFiles = map[string]string{
	"/etc/armorshim/config.yaml":                                         "-rw-r--r--",
	"/usr/bin/armorshim":                                                 "-rwxr-xr-x",
	"/usr/lib/systemd/system/armorshim.service":                          "-rw-r--r--",
	"/usr/lib/systemd/system/armorshim.socket":                           "-rw-r--r--",
	"/usr/share/armorshim/armorshim.service.d/10-socket-activation.conf": "-rw-r--r--",
	"/usr/share/armorshim/kubelet-dropins.sh":                            "-rwxr-xr-x",
	"/usr/share/armorshim/kubelet.conf.d/90-armorshim.conf":              "-rw-r--r--",
	"/usr/share/armorshim/kubelet.service.d/90-armorshim.conf":           "-rw-r--r--",
	"/usr/share/doc/armorshim/changelog.Debian.gz":                       "-rw-r--r--",
	"/usr/share/doc/armorshim/copyright":                                 "-rw-r--r--",
	"/usr/share/lintian/overrides/armorshim":                             "-rw-r--r--",
	"/usr/share/man/man8/armorshim.8.gz":                                 "-rw-r--r--",
}

// The repository's file each packaged file must equal, byte for byte or but
// for ExecStart's /usr/local/bin -> /usr/bin.
var fromRepo = map[string]string{
	"/etc/armorshim/config.yaml":                                         "../systemd/config.yaml",
	"/usr/lib/systemd/system/armorshim.service":                          "../systemd/armorshim.service",
	"/usr/lib/systemd/system/armorshim.socket":                           "../systemd/armorshim.socket",
	"/usr/share/armorshim/armorshim.service.d/10-socket-activation.conf": "../systemd/armorshim.service.d/10-socket-activation.conf",
	"/usr/share/armorshim/kubelet-dropins.sh":                            "../systemd/kubelet-dropins.sh",
	"/usr/share/armorshim/kubelet.conf.d/90-armorshim.conf":              "../systemd/kubelet.conf.d/90-armorshim.conf",
	"/usr/share/armorshim/kubelet.service.d/90-armorshim.conf":           "../systemd/kubelet.service.d/90-armorshim.conf",
	"/usr/share/doc/armorshim/copyright":                                 "copyright",
	"/usr/share/lintian/overrides/armorshim":                             "lintian-overrides",
}

func TestContents(t *testing.T) {
	d := deb(t)
	files := map[string]string{}
	dirs := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(run(t, "", nil, "dpkg-deb", "--contents", d)))
	for sc.Scan() {
		// -rw-r--r-- root/root 3365 2026-12-05 02:28 ./etc/armorshim/config.yaml
		f := strings.Fields(sc.Text())
		if len(f) < 6 {
			t.Fatalf("dpkg-deb --contents: unexpected line %q", sc.Text())
		}
		mode, owner, path := f[0], f[1], strings.TrimPrefix(strings.TrimSuffix(f[5], "/"), ".")
		if owner != "root/root" && owner != "0/0" {
			t.Errorf("%s is owned by %s, want root", path, owner)
		}
		switch mode[0] {
		case 'd':
			dirs[path] = mode
		case '-':
			files[path] = mode
		default:
			t.Errorf("%s: unexpected file type %s", path, mode)
		}
	}
	var missing, extra []string
	for p, mode := range wantFiles {
		got, ok := files[p]
		switch {
		case !ok:
			missing = append(missing, p)
		case got != mode:
			t.Errorf("%s has mode %s, want %s", p, got, mode)
		}
	}
	for p := range files {
		if _, ok := wantFiles[p]; !ok {
			extra = append(extra, p)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 {
		t.Errorf("missing from the package: %s", strings.Join(missing, ", "))
	}
	if len(extra) > 0 {
		t.Errorf("in the package but not expected: %s", strings.Join(extra, ", "))
	}
	if dirs["/etc/armorshim/profiles.d"] != "drwxr-xr-x" {
		t.Errorf("/etc/armorshim/profiles.d: %q, want a directory drwxr-xr-x", dirs["/etc/armorshim/profiles.d"])
	}
}

// debArch is the Debian architecture of the GOARCH the test's armorshim is
// built for.
func debArch(t *testing.T) string {
	t.Helper()
	a, ok := map[string]string{"amd64": "amd64", "arm64": "arm64", "386": "i386", "arm": "armhf",
		"riscv64": "riscv64", "ppc64le": "ppc64el", "s390x": "s390x"}[runtime.GOARCH]
	if !ok {
		t.Skipf("no Debian architecture for GOARCH %s", runtime.GOARCH)
	}
	return a
}

// debVersion is deb.sh's Debian version of a `git describe`.
func debVersion(t *testing.T, describe, count string) string {
	t.Helper()
	return strings.TrimSpace(run(t, "", nil, "sh", "deb.sh", "version", describe, count))
}

func TestControl(t *testing.T) {
	d := deb(t)
	describe := strings.TrimSpace(run(t, "..", nil, "git", "describe", "--tags", "--always", "--dirty"))
	count := strings.TrimSpace(run(t, "..", nil, "git", "rev-list", "--count", "HEAD"))
	version := debVersion(t, describe, count) + "-1"
	if want := "armorshim_" + version + "_" + debArch(t) + ".deb"; filepath.Base(d) != want {
		t.Errorf("package file %s, want %s", filepath.Base(d), want)
	}
	field := func(name string) string {
		return strings.TrimSpace(run(t, "", nil, "dpkg-deb", "--field", d, name))
	}
	for name, want := range map[string]string{
		"Package":      "armorshim",
		"Version":      version,
		"Architecture": debArch(t),
		"Section":      "admin",
		"Priority":     "optional",
		"Recommends":   "apparmor",
		// static binary, Essential packages only in the scripts, awk
		// always there (base-files pre-depends on it)
		"Depends":     "",
		"Pre-Depends": "",
	} {
		if got := field(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if m := field("Maintainer"); !regexp.MustCompile(`^[^<>]+ <[^<>@]+@[^<>@]+>$`).MatchString(m) {
		t.Errorf("Maintainer %q is not Name <address>", m)
	}

	ctrl := t.TempDir()
	run(t, "", nil, "dpkg-deb", "--control", d, ctrl)
	entries, err := os.ReadDir(ctrl)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if got, want := strings.Join(names, " "), "conffiles control md5sums postinst postrm prerm"; got != want {
		t.Errorf("control archive holds %s, want %s", got, want)
	}
	if conf, err := os.ReadFile(filepath.Join(ctrl, "conffiles")); err != nil || string(conf) != "/etc/armorshim/config.yaml\n" {
		t.Errorf("conffiles = %q (%v), want /etc/armorshim/config.yaml alone", conf, err)
	}
	for _, s := range []string{"postinst", "prerm", "postrm"} {
		p := filepath.Join(ctrl, s)
		if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o755 {
			t.Errorf("%s: %v, want mode 0755", s, fi.Mode())
		}
		want, err := os.ReadFile(s)
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := os.ReadFile(p); !bytes.Equal(got, want) {
			t.Errorf("%s in the package differs from packaging/%s", s, s)
		}
		run(t, "", nil, "sh", "-n", p)
	}
}

// extract unpacks the package's files into a new directory.
func extract(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	run(t, "", nil, "dpkg-deb", "--extract", deb(t), dir)
	return dir
}

// TestFilesFromRepository: the packaged units are the repository's but for
// the binary's path; everything else is shipped as it is in the repository.
func TestFilesFromRepository(t *testing.T) {
	root := extract(t)
	for pkgPath, repoPath := range fromRepo {
		got, err := os.ReadFile(filepath.Join(root, pkgPath))
		if err != nil {
			t.Errorf("%s: %v", pkgPath, err)
			continue
		}
		want, err := os.ReadFile(repoPath)
		if err != nil {
			t.Fatal(err)
		}
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		if len(gl) != len(wl) {
			t.Errorf("%s has %d lines, %s %d", pkgPath, len(gl), repoPath, len(wl))
			continue
		}
		for i := range wl {
			w := wl[i]
			if strings.HasPrefix(w, "ExecStart=/usr/local/bin/armorshim ") {
				w = "ExecStart=/usr/bin/armorshim " + strings.TrimPrefix(w, "ExecStart=/usr/local/bin/armorshim ")
			}
			if gl[i] != w {
				t.Errorf("%s line %d:\n got %q\nwant %q (from %s)", pkgPath, i+1, gl[i], w, repoPath)
			}
		}
	}
	// Every ExecStart runs the packaged binary.
	for _, unit := range []string{"/usr/lib/systemd/system/armorshim.service", "/usr/share/armorshim/armorshim.service.d/10-socket-activation.conf"} {
		data, err := os.ReadFile(filepath.Join(root, unit))
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "ExecStart=/") {
				n++
				if !strings.HasPrefix(l, "ExecStart=/usr/bin/armorshim serve ") {
					t.Errorf("%s: %q does not run /usr/bin/armorshim serve", unit, l)
				}
			}
		}
		if n != 1 {
			t.Errorf("%s: %d ExecStart= lines with a command, want 1", unit, n)
		}
	}
}

// TestBinary: the packaged armorshim is static (the package depends on no
// libc) and runs.
func TestBinary(t *testing.T) {
	bin := filepath.Join(extract(t), "usr/bin/armorshim")
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if want, ok := map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}[runtime.GOARCH]; ok && f.Machine != want {
		t.Errorf("%s is for %v, want %v (the Architecture field says %s)", bin, f.Machine, want, debArch(t))
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s is dynamically linked (program header %v)", bin, p.Type)
		}
	}
	if out := run(t, "", nil, bin, "--version"); !strings.Contains(out, "packaging-test") {
		t.Errorf("armorshim --version: %q, want the version it was built with", out)
	}
}

// TestManPageListsEveryCommand: armorshim(8) names each command --help lists.
func TestManPageListsEveryCommand(t *testing.T) {
	root := extract(t)
	help := run(t, "", nil, filepath.Join(root, "usr/bin/armorshim"), "--help")
	page := string(run(t, "", nil, "gzip", "-dc", filepath.Join(root, "usr/share/man/man8/armorshim.8.gz")))
	src, err := os.ReadFile("armorshim.8")
	if err != nil {
		t.Fatal(err)
	}
	if page != string(src) {
		t.Error("the packaged man page differs from packaging/armorshim.8")
	}
	_, commands, ok := strings.Cut(help, "Commands:\n")
	if !ok {
		t.Fatalf("no Commands: in armorshim --help:\n%s", help)
	}
	commands, _, _ = strings.Cut(commands, "\n\n")
	n := 0
	for _, line := range strings.Split(commands, "\n") {
		// "  serve          serve CRI ..."; continuation lines are indented further
		if !strings.HasPrefix(line, "  ") || strings.HasPrefix(line, "   ") {
			continue
		}
		name := strings.Fields(line)[0]
		if f := strings.Fields(line); len(f) > 1 && f[0] == "pss" {
			name = "pss check"
		}
		n++
		if !regexp.MustCompile(`(?m)^\.BI? ` + regexp.QuoteMeta(name) + `( |$)`).MatchString(page) {
			t.Errorf("armorshim.8 has no .B %s entry, which armorshim --help lists", name)
		}
	}
	if n < 5 {
		t.Errorf("found %d commands in armorshim --help, want at least 5:\n%s", n, commands)
	}
}

// TestDebVersion: deb.sh's versions are valid and sort as the commits do.
func TestDebVersion(t *testing.T) {
	dpkg := need(t, "dpkg", "dpkg")
	for _, c := range []struct{ describe, count, want string }{
		{"2950639", "147", "0.0~git147.2950639"},
		{"2950639-dirty", "147", "0.0~git147.2950639+dirty"},
		{"v1.2.3", "200", "1.2.3"},
		{"v1.2.3-4-gabcdef0", "204", "1.2.3+4.gabcdef0"},
		{"v1.2.3-4-gabcdef0-dirty", "204", "1.2.3+4.gabcdef0+dirty"},
		{"v1.3.0-rc.1", "210", "1.3.0~rc.1"},
		{"v1.3.0-rc.1-2-g1234567", "212", "1.3.0~rc.1+2.g1234567"},
		{"dev", "0", "0.0~dev"},
	} {
		if got := debVersion(t, c.describe, c.count); got != c.want {
			t.Errorf("version %s (%s commits) = %q, want %q", c.describe, c.count, got, c.want)
		}
	}
	order := []string{"0.0~dev", "0.0~git147.2950639", "0.0~git147.2950639+dirty", "0.0~git148.0123abc",
		"1.2.3", "1.2.3+4.gabcdef0", "1.2.3+4.gabcdef0+dirty", "1.2.3+5.g0000000", "1.3.0~rc.1", "1.3.0~rc.1+2.g1234567", "1.3.0"}
	for i := 1; i < len(order); i++ {
		a, b := order[i-1]+"-1", order[i]+"-1"
		if out, err := exec.Command(dpkg, "--compare-versions", a, "lt", b).CombinedOutput(); err != nil || len(out) > 0 {
			t.Errorf("dpkg --compare-versions %s lt %s: %v %s", a, b, err, out)
		}
	}
}

// TestLintian: errors and warnings fail; the overrides each carry a reason.
func TestLintian(t *testing.T) {
	d := deb(t)
	need(t, "lintian", "lintian")
	out, err := exec.Command("sh", "deb.sh", "lintian", d).CombinedOutput()
	if err != nil {
		t.Errorf("deb.sh lintian: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "lintian: no errors, no warnings") {
		t.Errorf("deb.sh lintian did not check the package:\n%s", out)
	}
	t.Logf("%s", out)
}

// TestLintianFailsABrokenPackage: deb.sh lintian fails on a package lintian
// finds a warning in (the package without its copyright file), so that
// TestLintian can fail.
func TestLintianFailsABrokenPackage(t *testing.T) {
	d := deb(t)
	need(t, "lintian", "lintian")
	tree := filepath.Join(t.TempDir(), "tree")
	run(t, "", nil, "dpkg-deb", "--raw-extract", d, tree)
	if err := os.Remove(filepath.Join(tree, "usr/share/doc/armorshim/copyright")); err != nil {
		t.Fatal(err)
	}
	md5sums := filepath.Join(tree, "DEBIAN/md5sums")
	sums, err := os.ReadFile(md5sums)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, l := range strings.SplitAfter(string(sums), "\n") {
		if !strings.HasSuffix(strings.TrimSpace(l), "usr/share/doc/armorshim/copyright") {
			kept = append(kept, l)
		}
	}
	if err := os.WriteFile(md5sums, []byte(strings.Join(kept, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	broken := filepath.Join(t.TempDir(), filepath.Base(d))
	run(t, "", nil, "dpkg-deb", "-Zgzip", "--root-owner-group", "--build", tree, broken)
	out, err := exec.Command("sh", "deb.sh", "lintian", broken).CombinedOutput()
	if err == nil {
		t.Errorf("deb.sh lintian passed a package without a copyright file:\n%s", out)
	}
	if !strings.Contains(string(out), "W: armorshim: no-copyright-file") && !strings.Contains(string(out), "E: armorshim: no-copyright-file") {
		t.Errorf("lintian did not report no-copyright-file:\n%s", out)
	}
}

// scriptCommands are the commands of a maintainer script that act on
// systemd, the kubelet or the files a purge deletes, in the order they
// appear, with ${DPKG_ROOT:-} and "$root" dropped.
var scriptCommand = regexp.MustCompile(`^\s*(?:if\s+)?((?:systemctl|deb-systemd-invoke|deb-systemd-helper|rm|DESTDIR=\S+ sh)\s.*?)(?:\s*>/dev/null)?(?:\s*\|\|\s*true)?(?:;\s*then)?\s*$`)

func scriptCommands(t *testing.T, script string) []string {
	t.Helper()
	data, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	var cmds []string
	heredoc := ""
	for i, l := range strings.Split(string(data), "\n") {
		switch {
		case heredoc != "":
			if l == heredoc {
				heredoc = ""
			}
			continue
		case strings.HasPrefix(strings.TrimSpace(l), "#"):
			continue
		}
		if _, word, ok := strings.Cut(l, "<<'"); ok {
			heredoc, _, _ = strings.Cut(word, "'")
		}
		if m := scriptCommand.FindStringSubmatch(l); m != nil {
			c := strings.NewReplacer(`"${DPKG_ROOT:-}`, `"`, `"$root`, `"`, `DESTDIR=$root `, "").Replace(m[1])
			cmds = append(cmds, c)
		} else if actsOnSystemd.MatchString(l) {
			t.Errorf("%s line %d: a command this test does not recognise: %q", script, i+1, l)
		}
	}
	if heredoc != "" {
		t.Errorf("%s: here-document %s does not end", script, heredoc)
	}
	return cmds
}

// actsOnSystemd matches a line that may act on systemd or the kubelet.
var actsOnSystemd = regexp.MustCompile(`systemctl|deb-systemd|kubelet-dropins|\brm\b`)

// TestMaintainerScriptCommands: what the scripts do to systemd and the
// kubelet, in order (dpkg --root cannot run them with systemd; the VM
// suite does). postinst reloads systemd and restarts a running armorshim
// on upgrade: it enables and starts nothing and leaves the kubelet alone.
// prerm puts the kubelet back on containerd before it stops armorshim.
func TestMaintainerScriptCommands(t *testing.T) {
	for script, want := range map[string][]string{
		"postinst": {
			"deb-systemd-helper update-state armorshim.service armorshim.socket",
			"systemctl --system daemon-reload",
			"deb-systemd-invoke try-restart armorshim.service",
		},
		"prerm": {
			`sh "/usr/share/armorshim/kubelet-dropins.sh" uninstall`,
			"systemctl --system daemon-reload",
			"deb-systemd-invoke try-restart kubelet.service",
			"deb-systemd-invoke stop armorshim.socket armorshim.service",
			"deb-systemd-helper disable armorshim.service armorshim.socket",
		},
		"postrm": {
			"deb-systemd-helper purge armorshim.service armorshim.socket",
			`rm -rf "/etc/armorshim" "/run/armorshim" "/var/log/armorshim"`,
			`rm -f "/etc/kubernetes/node-feature-discovery/features.d/armorshim-apparmor"`,
			"systemctl --system daemon-reload",
		},
	} {
		got := scriptCommands(t, script)
		if strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("%s runs, in order:\n  %s\nwant:\n  %s", script, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
		}
	}
}
