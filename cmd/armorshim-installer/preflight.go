package main

import (
	"bytes"
	"fmt"
	"os"
	"regexp"
	"strings"
)

// Why a node is left untouched: the value of the node label
// armorshim.io/install-blocked.
const (
	blockedNoSystemd      = "no-systemd"
	blockedNoAppArmor     = "no-apparmor"
	blockedNoKubeletUnit  = "no-kubelet-unit"
	blockedKubeletLayout  = "unknown-kubelet-layout"
	blockedNoContainerd   = "no-containerd"
	blockedInstalledOther = "installed-otherwise"
)

// blocked is why the installer cannot work on a node.
type blocked struct{ reason, detail string }

func (b *blocked) Error() string { return b.reason + ": " + b.detail }

// preflight checks, reading the host below root and changing nothing,
// that the installer can work there. catKubelet returns `systemctl cat
// kubelet.service` as the host's systemd shows it.
func preflight(root, containerdSock string, catKubelet func() (string, error)) *blocked {
	h := hostEnv{root: root}
	if fi, err := os.Stat(h.path("/run/systemd/system")); err != nil || !fi.IsDir() {
		return &blocked{blockedNoSystemd, "/run/systemd/system is missing: systemd does not run this node"}
	}
	if b, err := os.ReadFile(h.path("/sys/module/apparmor/parameters/enabled")); err != nil || !bytes.HasPrefix(b, []byte("Y")) {
		return &blocked{blockedNoAppArmor, "/sys/module/apparmor/parameters/enabled is not Y: AppArmor is not enabled in this node's kernel"}
	}
	if fi, err := os.Stat(h.path(containerdSock)); err != nil || fi.Mode()&os.ModeSocket == 0 {
		return &blocked{blockedNoContainerd, containerdSock + " is not a socket: containerd does not serve here"}
	}
	if st, _ := h.readState(); st == nil {
		for _, p := range []string{"/usr/bin/armorshim", binPath, dropinsRecord} {
			if exists(h.path(p)) {
				return &blocked{blockedInstalledOther, p + " exists: armorshim was installed otherwise (package, make install); remove that first"}
			}
		}
	}
	unit, err := catKubelet()
	if err != nil {
		return &blocked{blockedNoKubeletUnit, "systemctl cat kubelet.service: " + err.Error()}
	}
	if why := kubeletLayout(unit, exists(h.path("/var/lib/kubelet/config.yaml"))); why != "" {
		return &blocked{blockedKubeletLayout, why}
	}
	return nil
}

var (
	execStartRE = regexp.MustCompile(`(?m)^[ \t]*ExecStart[ \t]*=[ \t]*(.*)$`)
	commentRE   = regexp.MustCompile(`(?m)^[ \t]*[#;].*$`)
	envRE       = regexp.MustCompile(`(?m)^[ \t]*Environment[ \t]*=[ \t]*"?KUBELET_CONFIG_ARGS=([^"\n]*)"?`)
)

// kubeletLayout says why the kubelet unit (systemctl cat output) is not one
// the installer knows how to point at armorshim, or "" when it is: kubeadm's
// layout, an ExecStart passing $KUBELET_CONFIG_ARGS, which the drop-in
// extends with --config-dir (or whose --config-dir it uses). A --config-dir
// anywhere else (on ExecStart, in another variable) would come after ours
// or be one the drop-in script does not see: the kubelet would not read
// the drop-in, so such a unit is refused. defaultConfig says whether
// /var/lib/kubelet/config.yaml exists, the --config the drop-in gives when
// KUBELET_CONFIG_ARGS is unset.
func kubeletLayout(unit string, defaultConfig bool) string {
	unit = commentRE.ReplaceAllString(unit, "")
	var exec string
	for _, m := range execStartRE.FindAllStringSubmatch(unit, -1) {
		exec = m[1] // the last one wins (an empty one resets)
	}
	if exec == "" {
		return "the kubelet unit has no ExecStart"
	}
	if !strings.Contains(exec, "$KUBELET_CONFIG_ARGS") && !strings.Contains(exec, "${KUBELET_CONFIG_ARGS}") {
		return fmt.Sprintf("the kubelet's ExecStart (%.200s) does not pass $KUBELET_CONFIG_ARGS: use kubeadm's drop-in (10-kubeadm.conf), or install by hand (README, \"Installing on a node\")", exec)
	}
	var args string
	for _, m := range envRE.FindAllStringSubmatch(unit, -1) {
		args = m[1]
	}
	rest := envRE.ReplaceAllString(unit, "")
	if strings.Contains(rest, "--config-dir") {
		return "the kubelet unit sets --config-dir outside KUBELET_CONFIG_ARGS (on ExecStart or in another variable): move it into KUBELET_CONFIG_ARGS, where the drop-in finds it"
	}
	if args == "" && !defaultConfig {
		return "KUBELET_CONFIG_ARGS is unset and /var/lib/kubelet/config.yaml is missing: the kubelet's configuration file is unknown"
	}
	return ""
}
