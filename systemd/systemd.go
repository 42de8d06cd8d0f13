// Package systemd owns armorshim's systemd integration: the unit files and
// kubelet drop-ins in this directory, and the glue the daemon uses at run
// time — readiness notification and socket activation.
package systemd

import (
	"fmt"
	"net"
	"strings"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"k8s.io/klog/v2"
)

// Notification states (sd_notify(3)).
const (
	Ready     = daemon.SdNotifyReady
	Stopping  = daemon.SdNotifyStopping
	Reloading = daemon.SdNotifyReloading
)

// Status is a free-form STATUS= line for systemctl status.
func Status(s string) string { return "STATUS=" + s }

// Notify tells systemd our state when it started us with NOTIFY_SOCKET;
// otherwise it does nothing.
func Notify(states ...string) {
	state := strings.Join(states, "\n")
	if _, err := daemon.SdNotify(false, state); err != nil {
		klog.V(2).InfoS("sd_notify failed", "state", state, "err", err)
	}
}

// ActivationListener returns the one socket systemd passed (LISTEN_FDS).
func ActivationListener() (net.Listener, error) {
	ls, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	if len(ls) != 1 || ls[0] == nil {
		return nil, fmt.Errorf("socket activation: want exactly one stream socket from systemd, got %d (is armorshim.socket active?)", len(ls))
	}
	return ls[0], nil
}
