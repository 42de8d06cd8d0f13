package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Where the installer puts things on the host. Everything it places is
// listed in the state file, and only that is removed on uninstall.
const (
	binPath       = "/usr/local/bin/armorshim" // the unit's ExecStart
	libexecPath   = "/usr/local/libexec/armorshim/armorshim-installer"
	shareDir      = "/usr/local/share/armorshim/systemd"
	unitPath      = "/etc/systemd/system/armorshim.service"
	configPath    = "/etc/armorshim/config.yaml"
	configBackup  = "/etc/armorshim/config.yaml.pre-installer"
	profilesDir   = "/etc/armorshim/profiles.d"
	statePath     = "/etc/armorshim/installer.json"
	dropinsRecord = "/etc/armorshim/installed-dropins" // written by kubelet-dropins.sh
	stagingDir    = "/var/lib/armorshim-installer"
)

// state is what an installation placed on the host.
type state struct {
	Version string   `json:"version"`
	Files   []string `json:"files"`
}

// hostEnv runs the host side: files under root, units through systemctl.
type hostEnv struct {
	root      string // "/" on a node; a directory in tests
	systemctl string // the systemctl command
	out       io.Writer
	wait      time.Duration // how long a unit may take to become active
	settle    time.Duration // how long it must then run without a restart
}

func (h *hostEnv) path(p string) string { return filepath.Join(h.root, p) }

func (h *hostEnv) logf(format string, a ...any) { fmt.Fprintf(h.out, format+"\n", a...) }

// run runs a host command, its output to h.out.
func (h *hostEnv) run(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = h.out, h.out
	cmd.Env = append(os.Environ(), "SYSTEMCTL="+h.systemctl, "DESTDIR="+strings.TrimSuffix(h.root, "/"),
		"SRC="+h.path(shareDir))
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return nil
}

func (h *hostEnv) sysctl(args ...string) error { return h.run(h.systemctl, args...) }

// active waits until unit is active, up to h.wait.
func (h *hostEnv) active(unit string) error {
	deadline := time.Now().Add(h.wait)
	for {
		if exec.Command(h.systemctl, "is-active", "--quiet", unit).Run() == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s is not active after %v", unit, h.wait)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (h *hostEnv) readState() (*state, error) {
	b, err := os.ReadFile(h.path(statePath))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var s state
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", statePath, err)
	}
	return &s, nil
}

func (h *hostEnv) writeState(s *state) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeAtomic(h.path(statePath), append(b, '\n'), 0o644)
}

// writeAtomic replaces path with data: a reader sees the old file or the
// new one, never a part.
func writeAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// payloadFiles maps the payload's files to where they go on the host.
var payloadFiles = []struct {
	src, dst string
	mode     os.FileMode
}{
	{"bin/armorshim", binPath, 0o755},
	{"armorshim-installer", libexecPath, 0o755},
	{"systemd/armorshim.service", unitPath, 0o644},
	{"systemd/kubelet-dropins.sh", shareDir + "/kubelet-dropins.sh", 0o644},
	{"systemd/kubelet.conf.d/90-armorshim.conf", shareDir + "/kubelet.conf.d/90-armorshim.conf", 0o644},
	{"systemd/kubelet.service.d/90-armorshim.conf", shareDir + "/kubelet.service.d/90-armorshim.conf", 0o644},
}

// place copies the payload and the configuration onto the host; it
// returns the host files placed, which of them changed, and the previous
// content of those (nil: there was none), to put back if the new ones fail.
func (h *hostEnv) place(payload, config string) (files []string, changed map[string]bool, prev map[string][]byte, err error) {
	changed, prev = map[string]bool{}, map[string][]byte{}
	put := func(dst string, data []byte, mode os.FileMode) error {
		files = append(files, dst)
		old, err := os.ReadFile(h.path(dst))
		if err == nil && bytes.Equal(old, data) {
			return nil
		}
		changed[dst], prev[dst] = true, old
		return writeAtomic(h.path(dst), data, mode)
	}
	for _, f := range payloadFiles {
		data, err := os.ReadFile(filepath.Join(payload, f.src))
		if err != nil {
			return files, changed, prev, fmt.Errorf("payload: %w", err)
		}
		if err := put(f.dst, data, f.mode); err != nil {
			return files, changed, prev, err
		}
	}
	if config != "" {
		data, err := os.ReadFile(config)
		if err != nil {
			return files, changed, prev, err
		}
		if err := put(configPath, data, 0o644); err != nil {
			return files, changed, prev, err
		}
	}
	return files, changed, prev, os.MkdirAll(h.path(profilesDir), 0o755)
}

// restore puts back the files place replaced.
func (h *hostEnv) restore(prev map[string][]byte) {
	for f, data := range prev {
		if data != nil {
			mode := os.FileMode(0o644)
			if f == binPath || f == libexecPath {
				mode = 0o755
			}
			if err := writeAtomic(h.path(f), data, mode); err != nil {
				h.logf("cannot restore %s: %v", f, err)
			}
		}
	}
}

// lock serializes the host side: an install and an uninstall (an old
// DaemonSet's pod and a new one's) never interleave.
func (h *hostEnv) lock() (func(), error) {
	p := h.path("/run/armorshim-installer.lock")
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, err
	}
	return func() { f.Close() }, nil
}

// install puts armorshim on the host, in front of the kubelet. A first
// installation that fails is rolled back: the node is left as it was.
// Later runs replace what changed: a new binary or unit restarts armorshim
// (the kubelet keeps running and retries what the restart interrupts) and,
// if it does not come back, the previous ones are put back; a new
// configuration reloads it.
func (h *hostEnv) install(payload, config, version string) error {
	unlock, err := h.lock()
	if err != nil {
		return err
	}
	defer unlock()
	old, err := h.readState()
	if err != nil {
		return err
	}
	if old == nil && exists(h.path(configPath)) {
		// Someone's configuration from before: kept aside, put back by the
		// uninstall.
		if err := os.Rename(h.path(configPath), h.path(configBackup)); err != nil {
			return err
		}
	}
	files, changed, prev, err := h.place(payload, config)
	if old == nil {
		// Recorded before anything runs, so that a failure below can be
		// undone and a later uninstall finds everything.
		if err2 := h.writeState(&state{Version: "", Files: files}); err2 != nil && err == nil {
			err = err2
		}
	}
	if err == nil {
		err = h.sysctl("daemon-reload")
	}
	if old == nil {
		if err == nil {
			err = h.firstStart()
		}
		if err != nil {
			h.logf("installation failed: %v; undoing it", err)
			if uerr := h.uninstallLocked(); uerr != nil {
				h.logf("undoing failed too: %v", uerr)
			}
			return err
		}
		h.logf("armorshim %s installed; the kubelet now talks to armorshim", version)
		return h.writeState(&state{Version: version, Files: files})
	}
	if err != nil {
		h.restore(prev)
		return err
	}
	upgrade := changed[binPath] || changed[unitPath]
	switch {
	case upgrade:
		h.logf("armorshim %s -> %s: restarting armorshim (the kubelet keeps running)", old.Version, version)
		err = h.sysctl("restart", "armorshim.service")
	case changed[configPath]:
		h.logf("configuration changed: reloading armorshim")
		err = h.sysctl("reload-or-restart", "armorshim.service")
	default:
		err = h.sysctl("start", "armorshim.service")
	}
	if err == nil {
		err = h.stable("armorshim.service")
	}
	if err != nil && upgrade {
		h.logf("armorshim %s does not run (%v): putting %s back", version, err, old.Version)
		h.restore(prev)
		if rerr := errors.Join(h.sysctl("daemon-reload"), h.sysctl("restart", "armorshim.service")); rerr != nil {
			h.logf("restarting the previous armorshim failed too: %v", rerr)
		}
		return err
	}
	if err == nil {
		err = h.sysctl("enable", "armorshim.service")
	}
	if err == nil && !exists(h.path(dropinsRecord)) {
		err = h.switchKubelet()
	}
	if err != nil {
		return err
	}
	return h.writeState(&state{Version: version, Files: files})
}

// firstStart starts armorshim, then moves the kubelet onto it.
func (h *hostEnv) firstStart() error {
	if err := h.sysctl("enable", "armorshim.service"); err != nil {
		return err
	}
	// Type=notify: start returns once armorshim serves.
	if err := h.sysctl("start", "armorshim.service"); err != nil {
		return err
	}
	if err := h.stable("armorshim.service"); err != nil {
		return err
	}
	return h.switchKubelet()
}

// switchKubelet installs the kubelet drop-ins and restarts the kubelet.
func (h *hostEnv) switchKubelet() error {
	if err := h.run("sh", h.path(shareDir+"/kubelet-dropins.sh"), "install"); err != nil {
		return err
	}
	if err := h.sysctl("daemon-reload"); err != nil {
		return err
	}
	if err := h.sysctl("restart", "kubelet.service"); err != nil {
		return err
	}
	return h.stable("kubelet.service")
}

// stable waits until unit is active and then checks it stays so for
// h.settle without systemd restarting it: a kubelet that exits at once
// (a configuration it refuses) is "active" between its restarts.
func (h *hostEnv) stable(unit string) error {
	if err := h.active(unit); err != nil {
		return err
	}
	n0 := h.restarts(unit)
	time.Sleep(h.settle)
	if n := h.restarts(unit); n != n0 {
		return fmt.Errorf("%s restarted %s time(s) within %v of starting: it does not run", unit, strconv.Itoa(n-n0), h.settle)
	}
	return h.active(unit)
}

// restarts is systemd's count of unit's automatic restarts.
func (h *hostEnv) restarts(unit string) int {
	out, _ := exec.Command(h.systemctl, "show", "-p", "NRestarts", "--value", unit).Output()
	n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	return n
}

// uninstall puts the kubelet back on containerd first, then stops armorshim
// and removes what the installer placed. The profile directory and what
// others put in /etc/armorshim stay.
func (h *hostEnv) uninstall() error {
	unlock, err := h.lock()
	if err != nil {
		return err
	}
	defer unlock()
	return h.uninstallLocked()
}

func (h *hostEnv) uninstallLocked() error {
	st, err := h.readState()
	if err != nil {
		return err
	}
	if st == nil {
		h.logf("armorshim is not installed by the installer here: nothing to do")
		return nil
	}
	var errs []error
	if exists(h.path(dropinsRecord)) {
		if err := h.run("sh", h.path(shareDir+"/kubelet-dropins.sh"), "uninstall"); err != nil {
			return err // the kubelet still needs armorshim: keep it
		}
		if err := h.sysctl("daemon-reload"); err != nil {
			return err
		}
		if exec.Command(h.systemctl, "is-active", "--quiet", "kubelet.service").Run() == nil {
			if err := h.sysctl("restart", "kubelet.service"); err != nil {
				return err
			}
			if err := h.stable("kubelet.service"); err != nil {
				errs = append(errs, err)
			}
		}
		h.logf("the kubelet talks to containerd again")
	}
	if err := h.sysctl("disable", "--now", "armorshim.service"); err != nil {
		errs = append(errs, err)
	}
	for _, f := range st.Files {
		if err := os.Remove(h.path(f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, d := range []string{shareDir + "/kubelet.conf.d", shareDir + "/kubelet.service.d", shareDir, filepath.Dir(shareDir), filepath.Dir(libexecPath)} {
		os.Remove(h.path(d)) // only if empty
	}
	if exists(h.path(configBackup)) {
		if err := os.Rename(h.path(configBackup), h.path(configPath)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := os.Remove(h.path(statePath)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := h.sysctl("daemon-reload"); err != nil {
		errs = append(errs, err)
	}
	if len(errs) == 0 {
		h.logf("armorshim removed (kept: %s)", profilesDir)
	}
	return errors.Join(errs...)
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}
