package main

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// kubeadmUnit is the kubelet unit as kubeadm's packages lay it out.
const kubeadmUnit = `# /usr/lib/systemd/system/kubelet.service
[Service]
ExecStart=/usr/bin/kubelet

# /usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf
[Service]
Environment="KUBELET_KUBECONFIG_ARGS=--bootstrap-kubeconfig=/etc/kubernetes/bootstrap-kubelet.conf --kubeconfig=/etc/kubernetes/kubelet.conf"
Environment="KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml"
ExecStart=
ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS $KUBELET_EXTRA_ARGS
`

// fakeSystemctl writes a systemctl that records its calls in dir/calls,
// prints kubeadm's kubelet unit for `cat kubelet.service`, and fails
// `start armorshim.service` when dir/fail-start exists.
func fakeSystemctl(t *testing.T, dir string) string {
	t.Helper()
	unit := filepath.Join(dir, "kubelet.unit")
	if err := os.WriteFile(unit, []byte(kubeadmUnit), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `#!/bin/sh
echo "$*" >>` + dir + `/calls
case "$*" in
"cat kubelet.service") cat ` + unit + ` ;;
"start armorshim.service") [ ! -e ` + dir + `/fail-start ] || { echo "Job for armorshim.service failed" >&2; exit 1; } ;;
"restart armorshim.service") [ ! -e ` + dir + `/fail-restart ] || { rm ` + dir + `/fail-restart; echo "Job for armorshim.service failed" >&2; exit 1; } ;;
"show -p NRestarts --value kubelet.service")
	# a kubelet that exits at once: systemd restarts it over and over
	if [ -e ` + dir + `/flap ]; then echo x >>` + dir + `/flap; wc -l <` + dir + `/flap; else echo 0; fi ;;
esac
exit 0
`
	p := filepath.Join(dir, "systemctl")
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func calls(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "calls"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "calls"))
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// payloadDir makes a payload as the image holds it, with the repository's
// unit and drop-ins and a stand-in binary saying binary.
func payloadDir(t *testing.T, binary string) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string][]byte{"bin/armorshim": []byte(binary), "armorshim-installer": []byte("installer")}
	for _, f := range []string{"armorshim.service", "config.yaml", "kubelet-dropins.sh", "kubelet.conf.d/90-armorshim.conf", "kubelet.service.d/90-armorshim.conf"} {
		b, err := os.ReadFile(filepath.Join("../../systemd", f))
		if err != nil {
			t.Fatal(err)
		}
		files["systemd/"+f] = b
	}
	for name, data := range files {
		if err := writeAtomic(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func index(t *testing.T, cs []string, call string) int {
	t.Helper()
	i := slices.Index(cs, call)
	if i < 0 {
		t.Fatalf("no %q in the systemctl calls %q", call, cs)
	}
	return i
}

func TestInstallUpgradeUninstall(t *testing.T) {
	root, tools := t.TempDir(), t.TempDir()
	var out bytes.Buffer
	h := &hostEnv{root: root, systemctl: fakeSystemctl(t, tools), out: &out, wait: time.Second}
	config := filepath.Join(tools, "config.yaml")
	os.WriteFile(config, []byte("kind: ArmorshimConfiguration\n"), 0o644)
	// Someone else's profile and configuration file stay.
	os.MkdirAll(filepath.Join(root, profilesDir), 0o755)
	os.WriteFile(filepath.Join(root, profilesDir, "theirs"), []byte("profile theirs {}\n"), 0o644)

	if err := h.install(payloadDir(t, "v1"), config, "v1"); err != nil {
		t.Fatalf("install: %v\n%s", err, out.String())
	}
	cs := calls(t, tools)
	// armorshim serves before the kubelet is pointed at it.
	if index(t, cs, "start armorshim.service") > index(t, cs, "restart kubelet.service") {
		t.Errorf("the kubelet was restarted before armorshim started: %q", cs)
	}
	index(t, cs, "enable armorshim.service")
	for _, f := range []string{binPath, libexecPath, unitPath, configPath, statePath, dropinsRecord,
		"/etc/systemd/system/kubelet.service.d/90-armorshim.conf", "/etc/kubernetes/kubelet.conf.d/90-armorshim.conf"} {
		if !exists(filepath.Join(root, f)) {
			t.Errorf("%s not installed", f)
		}
	}
	dropin, _ := os.ReadFile(filepath.Join(root, "/etc/systemd/system/kubelet.service.d/90-armorshim.conf"))
	if !bytes.Contains(dropin, []byte(`KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml --config-dir=/etc/kubernetes/kubelet.conf.d`)) {
		t.Errorf("the kubelet drop-in does not extend the node's KUBELET_CONFIG_ARGS:\n%s", dropin)
	}
	if st, _ := h.readState(); st == nil || st.Version != "v1" {
		t.Errorf("state after install: %+v", st)
	}

	// The same version again: nothing restarted.
	if err := h.install(payloadDir(t, "v1"), config, "v1"); err != nil {
		t.Fatal(err)
	}
	cs = calls(t, tools)
	if slices.Contains(cs, "restart armorshim.service") || slices.Contains(cs, "restart kubelet.service") {
		t.Errorf("an unchanged install restarted something: %q", cs)
	}
	// A new binary: armorshim restarts, the kubelet does not.
	if err := h.install(payloadDir(t, "v2"), config, "v2"); err != nil {
		t.Fatal(err)
	}
	cs = calls(t, tools)
	index(t, cs, "restart armorshim.service")
	if slices.Contains(cs, "restart kubelet.service") {
		t.Errorf("an upgrade restarted the kubelet: %q", cs)
	}
	if b, _ := os.ReadFile(filepath.Join(root, binPath)); string(b) != "v2" {
		t.Errorf("binary after upgrade: %q", b)
	}
	// A new configuration only: a reload.
	os.WriteFile(config, []byte("kind: ArmorshimConfiguration\npolicy:\n  enabled: true\n"), 0o644)
	if err := h.install(payloadDir(t, "v2"), config, "v2"); err != nil {
		t.Fatal(err)
	}
	cs = calls(t, tools)
	index(t, cs, "reload-or-restart armorshim.service")
	if slices.Contains(cs, "restart armorshim.service") {
		t.Errorf("a configuration change restarted armorshim: %q", cs)
	}

	if err := h.uninstall(); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out.String())
	}
	cs = calls(t, tools)
	// The kubelet is back on containerd before armorshim stops.
	if index(t, cs, "restart kubelet.service") > index(t, cs, "disable --now armorshim.service") {
		t.Errorf("armorshim stopped before the kubelet left it: %q", cs)
	}
	for _, f := range []string{binPath, libexecPath, unitPath, configPath, statePath, dropinsRecord, shareDir,
		"/etc/systemd/system/kubelet.service.d/90-armorshim.conf", "/etc/kubernetes/kubelet.conf.d/90-armorshim.conf"} {
		if exists(filepath.Join(root, f)) {
			t.Errorf("%s left after uninstall", f)
		}
	}
	if !exists(filepath.Join(root, profilesDir, "theirs")) {
		t.Error("uninstall removed a profile it did not place")
	}
}

// A first installation that fails leaves the node as it was.
func TestInstallRollsBack(t *testing.T) {
	root, tools := t.TempDir(), t.TempDir()
	var out bytes.Buffer
	h := &hostEnv{root: root, systemctl: fakeSystemctl(t, tools), out: &out, wait: time.Second}
	os.WriteFile(filepath.Join(tools, "fail-start"), nil, 0o644)
	if err := h.install(payloadDir(t, "v1"), "", "v1"); err == nil {
		t.Fatal("install succeeded with armorshim failing to start")
	}
	cs := calls(t, tools)
	if slices.Contains(cs, "restart kubelet.service") {
		t.Errorf("the kubelet was restarted though armorshim never served: %q", cs)
	}
	var left []string
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() && p != filepath.Join(root, "/run/armorshim-installer.lock") {
			left = append(left, strings.TrimPrefix(p, root))
		}
		return nil
	})
	if len(left) > 0 {
		t.Errorf("files left after a failed install: %q\n%s", left, out.String())
	}
}

// A kubelet that does not run on armorshim (systemd restarting it over and
// over) undoes the first install: the kubelet goes back to containerd.
func TestInstallRollsBackWhenTheKubeletFlaps(t *testing.T) {
	root, tools := t.TempDir(), t.TempDir()
	var out bytes.Buffer
	h := &hostEnv{root: root, systemctl: fakeSystemctl(t, tools), out: &out, wait: time.Second, settle: time.Millisecond}
	os.WriteFile(filepath.Join(tools, "flap"), nil, 0o644)
	if err := h.install(payloadDir(t, "v1"), "", "v1"); err == nil || !strings.Contains(err.Error(), "restarted") {
		t.Fatalf("install with a flapping kubelet: %v\n%s", err, out.String())
	}
	cs := calls(t, tools)
	first := index(t, cs, "restart kubelet.service")
	if !slices.Contains(cs[first+1:], "restart kubelet.service") || !slices.Contains(cs, "disable --now armorshim.service") {
		t.Errorf("the kubelet was not put back on containerd: %q", cs)
	}
	for _, f := range []string{binPath, statePath, dropinsRecord, "/etc/kubernetes/kubelet.conf.d/90-armorshim.conf"} {
		if exists(filepath.Join(root, f)) {
			t.Errorf("%s left", f)
		}
	}
}

// An upgrade whose armorshim does not start puts the previous one back.
func TestUpgradePutsBack(t *testing.T) {
	root, tools := t.TempDir(), t.TempDir()
	var out bytes.Buffer
	h := &hostEnv{root: root, systemctl: fakeSystemctl(t, tools), out: &out, wait: time.Second}
	if err := h.install(payloadDir(t, "v1"), "", "v1"); err != nil {
		t.Fatal(err)
	}
	calls(t, tools)
	os.WriteFile(filepath.Join(tools, "fail-restart"), nil, 0o644)
	if err := h.install(payloadDir(t, "v2"), "", "v2"); err == nil {
		t.Fatal("an upgrade whose armorshim fails succeeded")
	}
	if b, _ := os.ReadFile(filepath.Join(root, binPath)); string(b) != "v1" {
		t.Errorf("binary after a failed upgrade: %q, want v1 back", b)
	}
	if st, _ := h.readState(); st == nil || st.Version != "v1" {
		t.Errorf("state after a failed upgrade: %+v", st)
	}
	cs := calls(t, tools)
	if n := strings.Count(strings.Join(cs, "\n"), "restart armorshim.service"); n != 2 {
		t.Errorf("want the failed restart and the previous one's: %q", cs)
	}
}

// A configuration that was there before the installer comes back with the
// uninstall.
func TestUninstallRestoresTheConfiguration(t *testing.T) {
	root, tools := t.TempDir(), t.TempDir()
	var out bytes.Buffer
	h := &hostEnv{root: root, systemctl: fakeSystemctl(t, tools), out: &out, wait: time.Second}
	writeAtomic(filepath.Join(root, configPath), []byte("theirs\n"), 0o644)
	config := filepath.Join(tools, "config.yaml")
	os.WriteFile(config, []byte("ours\n"), 0o644)
	if err := h.install(payloadDir(t, "v1"), config, "v1"); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, configPath)); string(b) != "ours\n" {
		t.Errorf("installed configuration: %q", b)
	}
	if err := h.uninstall(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, configPath)); string(b) != "theirs\n" {
		t.Errorf("configuration after uninstall: %q, want theirs back", b)
	}
}
