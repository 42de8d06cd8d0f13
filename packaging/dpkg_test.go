package packaging_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInstallRemovePurge installs the package into an empty root with
// dpkg --root (the maintainer scripts run outside a chroot with DPKG_ROOT
// set, so they touch no systemd), plays an operator who enabled armorshim
// and switched the kubelet, then upgrades, removes and purges.
func TestInstallRemovePurge(t *testing.T) {
	d := deb(t)
	need(t, "dpkg", "dpkg")
	need(t, "deb-systemd-helper", "init-system-helpers")
	root := t.TempDir()
	for _, dir := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates"} {
		if err := os.MkdirAll(filepath.Join(root, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "var/lib/dpkg/status"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
	dpkg := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("dpkg", append([]string{"--root=" + root, "--force-script-chrootless", "--force-not-root"}, args...)...)
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("dpkg %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	at := func(p string) string { return filepath.Join(root, p) }
	exists := func(p string) bool {
		_, err := os.Lstat(at(p))
		return err == nil
	}
	expect := func(when string, present bool, paths ...string) {
		t.Helper()
		for _, p := range paths {
			if exists(p) != present {
				if present {
					t.Errorf("%s: %s is missing", when, p)
				} else {
					t.Errorf("%s: %s is there", when, p)
				}
			}
		}
	}
	const (
		unitDropIn   = "/etc/systemd/system/kubelet.service.d/90-armorshim.conf"
		configDropIn = "/etc/kubernetes/kubelet.conf.d/90-armorshim.conf"
		record       = "/etc/armorshim/installed-dropins"
		profile      = "/etc/armorshim/profiles.d/local-profile"
	)
	enableLinks := []string{
		"/etc/systemd/system/multi-user.target.wants/armorshim.service",
		"/etc/systemd/system/kubelet.service.wants/armorshim.service",
	}

	// Install: files in place, the kubelet left alone, the way to switch it told.
	out := dpkg("--install", d)
	var files []string
	for p := range wantFiles {
		files = append(files, p)
	}
	expect("after install", true, files...)
	expect("after install", true, "/etc/armorshim/profiles.d")
	expect("after install (the kubelet must not be switched)", false, unitDropIn, configDropIn, record)
	expect("after install (armorshim must not be enabled)", false, enableLinks...)
	if !strings.Contains(out, "sh /usr/share/armorshim/kubelet-dropins.sh install") {
		t.Errorf("postinst does not say how to switch the kubelet:\n%s", out)
	}

	// The operator edits the configuration, adds a profile, enables
	// armorshim (the links systemctl enable makes) and switches the kubelet.
	config, err := os.ReadFile(at("/etc/armorshim/config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	config = append(config, "# changed on this node\n"...)
	if err := os.WriteFile(at("/etc/armorshim/config.yaml"), config, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(at(profile), []byte("profile local-profile {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, l := range enableLinks {
		if err := os.MkdirAll(filepath.Dir(at(l)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/usr/lib/systemd/system/armorshim.service", at(l)); err != nil {
			t.Fatal(err)
		}
	}
	run(t, "", []string{"DESTDIR=" + root}, "sh", at("/usr/share/armorshim/kubelet-dropins.sh"), "install")
	expect("after kubelet-dropins.sh install", true, unitDropIn, configDropIn, record)

	// Upgrade (the same version again): the kubelet stays switched,
	// armorshim enabled, the changed configuration kept.
	dpkg("--install", d)
	expect("after upgrade", true, unitDropIn, configDropIn, record, profile)
	expect("after upgrade", true, enableLinks...)
	if got, _ := os.ReadFile(at("/etc/armorshim/config.yaml")); string(got) != string(config) {
		t.Error("after upgrade: the changed /etc/armorshim/config.yaml was replaced")
	}

	// Remove: the kubelet back on containerd, armorshim disabled and gone,
	// the configuration and profiles kept.
	out = dpkg("--remove", "armorshim")
	if !strings.Contains(out, "putting the kubelet back on containerd") {
		t.Errorf("prerm did not say it restores the kubelet:\n%s", out)
	}
	expect("after remove (the kubelet must be back on containerd)", false, unitDropIn, configDropIn, record)
	expect("after remove (armorshim must be disabled)", false, enableLinks...)
	expect("after remove", false, "/usr/bin/armorshim", "/usr/lib/systemd/system/armorshim.service",
		"/usr/lib/systemd/system/armorshim.socket", "/usr/share/armorshim")
	expect("after remove (configuration is kept)", true, "/etc/armorshim/config.yaml", profile)
	if got, _ := os.ReadFile(at("/etc/armorshim/config.yaml")); string(got) != string(config) {
		t.Error("after remove: /etc/armorshim/config.yaml changed")
	}

	// Purge: the configuration goes too, with what armorshim left at run
	// time: its runtime directory, its logs, its node labels file.
	left := []string{"/run/armorshim/armorshim.sock", "/var/log/armorshim/pod-security.log",
		"/etc/kubernetes/node-feature-discovery/features.d/armorshim-apparmor",
		"/etc/armorshim/config.yaml.dpkg-dist"}
	for _, p := range left {
		if err := os.MkdirAll(filepath.Dir(at(p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(at(p), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dpkg("--purge", "armorshim")
	expect("after purge", false, "/etc/armorshim", "/run/armorshim", "/var/log/armorshim",
		"/etc/kubernetes/node-feature-discovery/features.d/armorshim-apparmor",
		"/var/lib/systemd/deb-systemd-helper-enabled/armorshim.service.dsh-also")
	expect("after purge (not armorshim's)", true, "/etc/kubernetes/node-feature-discovery/features.d")
	query := exec.Command("dpkg-query", "--admindir="+at("/var/lib/dpkg"), "--show", "--showformat=${db:Status-Abbrev}", "armorshim")
	if status, err := query.CombinedOutput(); err == nil && !strings.HasPrefix(string(status), "un") {
		t.Errorf("after purge: dpkg status %q, want not installed", status)
	}
}
