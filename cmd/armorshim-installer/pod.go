package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Node labels the installer sets.
// readyFile, in the pod's own file system, tells the readiness probe
// (armorshim-installer ready) that the pod did its work.
const readyFile = "/installer-ready"

const (
	labelInstalled = "armorshim.io/installed"
	labelBlocked   = "armorshim.io/install-blocked"
)

// pod is the installer as its DaemonSet runs it: the host's root file
// system mounted at hostRoot, the payload in the image, the configuration
// from a ConfigMap.
type pod struct {
	hostRoot, payload, config  string
	version                    string
	node, namespace, daemonSet string
	containerdSock             string
	syncEvery                  time.Duration
	refused                    []byte // the configuration last refused, said once
	api                        *kube
	out                        io.Writer
}

func (p *pod) logf(format string, a ...any) { log.Printf(format, a...) }

// hostCommand runs a command on the host: chrooted into its root file
// system, so that it is the host's systemctl and systemd-run that run.
func (p *pod) hostCommand(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(name, args...)
	// The command is looked up in the host's PATH, not the image's: the
	// path is the one execve sees after the chroot.
	cmd.Path, cmd.Err = hostLookPath(p.hostRoot, name)
	cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: p.hostRoot}
	cmd.Dir = "/"
	cmd.Env = []string{"PATH=" + hostPATH, "LC_ALL=C"}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	return cmd
}

// hostPATH is the PATH host commands are looked up in and run with.
const hostPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// hostLookPath finds an executable named name in the host's PATH below
// root and returns its path as seen from the host.
func hostLookPath(root, name string) (string, error) {
	if filepath.IsAbs(name) {
		return name, nil
	}
	for _, dir := range filepath.SplitList(hostPATH) {
		p := filepath.Join(dir, name)
		if fi, err := os.Stat(filepath.Join(root, p)); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s: not found in the host's PATH (%s)", name, hostPATH)
}

// onHost runs the installer's host side as a transient systemd service, so
// that neither the kubelet's restart nor this pod's end can cut it short.
// Its output goes to the journal (a pipe to this pod could break under it)
// and is copied to the pod's log once it ends.
func (p *pod) onHost(bin string, args ...string) error {
	unit := "armorshim-installer-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	argv := append([]string{"--unit=" + unit, "--wait", "--collect", "--quiet", "--service-type=exec",
		"-p", "StandardOutput=journal", "-p", "StandardError=journal", bin}, args...)
	err := p.hostCommand("systemd-run", argv...).Run()
	// what it wrote, in the pod's log (journald may lag a moment)
	time.Sleep(500 * time.Millisecond)
	_ = p.hostCommand("journalctl", "--no-pager", "-o", "cat", "-u", unit).Run()
	if err != nil {
		return fmt.Errorf("systemd-run %s (journalctl -u %s): %w", bin, unit, err)
	}
	return nil
}

// stage copies the payload and the configuration into the host's staging
// directory, for the host side to install from.
func (p *pod) stage() (dir, config string, err error) {
	dir = filepath.Join(stagingDir, labelValue(p.version))
	hostDir := filepath.Join(p.hostRoot, dir)
	if err := os.RemoveAll(hostDir); err != nil {
		return "", "", err
	}
	err = filepath.WalkDir(p.payload, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(p.payload, path)
		return copyFile(path, filepath.Join(hostDir, rel))
	})
	if err != nil {
		return "", "", err
	}
	config = filepath.Join(dir, "config.yaml")
	if err := p.stageConfig(config, filepath.Join(dir, "armorshim-installer")); err != nil {
		return "", "", err
	}
	return dir, config, nil
}

// stageConfig writes the ConfigMap's configuration to the host path
// staged and has checker (the installer's binary on the host) load it as
// armorshim would, there, where the files it names are.
func (p *pod) stageConfig(staged, checker string) error {
	data, err := os.ReadFile(p.config)
	if err != nil {
		return fmt.Errorf("the ConfigMap's configuration: %w", err)
	}
	if err := writeAtomic(filepath.Join(p.hostRoot, staged), data, 0o644); err != nil {
		return err
	}
	var out bytes.Buffer
	cmd := p.hostCommand(checker, "check-config", staged)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("the ConfigMap's configuration is refused: %s", bytes.TrimSpace(out.Bytes()))
	}
	return nil
}

func (p *pod) setLabels(ctx context.Context, labels map[string]*string) {
	if err := p.api.label(ctx, p.node, labels); err != nil {
		p.logf("%v", err)
	}
}

func strp(s string) *string { return &s }

// run installs armorshim on the node, keeps its configuration in step with
// the ConfigMap, and when its DaemonSet is deleted uninstalls it.
func (p *pod) run(ctx context.Context) error {
	cat := func() (string, error) {
		var b bytes.Buffer
		cmd := p.hostCommand("systemctl", "cat", "kubelet.service")
		cmd.Stdout, cmd.Stderr = &b, &b
		err := cmd.Run()
		if err != nil {
			return "", fmt.Errorf("%w: %s", err, bytes.TrimSpace(b.Bytes()))
		}
		return b.String(), nil
	}
	installed := exists(filepath.Join(p.hostRoot, statePath))
	if b := preflight(p.hostRoot, p.containerdSock, cat); b != nil {
		p.logf("node %s left untouched: %v", p.node, b)
		labels := map[string]*string{labelBlocked: strp(b.reason)}
		if !installed {
			labels[labelInstalled] = nil
		}
		p.setLabels(ctx, labels)
		p.ready() // reported: the rollout goes on to the next node
		<-ctx.Done()
		return p.stop(installed)
	}
	dir, config, err := p.stage()
	if err == nil {
		p.logf("installing armorshim %s on node %s", p.version, p.node)
		err = p.onHost(filepath.Join(dir, "armorshim-installer"), "host-install",
			"--payload", dir, "--config", config, "--version", p.version)
	}
	os.RemoveAll(filepath.Join(p.hostRoot, dir))
	if err != nil {
		// Not ready, and the pod fails: an update's rollout stops here.
		p.logf("installation of %s failed on node %s (a first install is undone, an upgrade put back): %v", p.version, p.node, err)
		p.setLabels(ctx, map[string]*string{labelBlocked: strp("install-failed")})
		return err
	}
	p.setLabels(ctx, map[string]*string{labelInstalled: strp(labelValue(p.version)), labelBlocked: nil})
	p.logf("armorshim %s runs on node %s", p.version, p.node)
	p.ready()

	tick := time.NewTicker(p.syncEvery)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			p.syncConfig()
		case <-ctx.Done():
			return p.stop(true)
		}
	}
}

// syncConfig puts a changed configuration in place, once the host's
// installer loaded it as armorshim would, and reloads armorshim.
func (p *pod) syncConfig() {
	want, err := os.ReadFile(p.config)
	if err != nil {
		p.logf("the ConfigMap's configuration: %v", err)
		return
	}
	host := filepath.Join(p.hostRoot, configPath)
	if have, err := os.ReadFile(host); err == nil && bytes.Equal(have, want) {
		return
	}
	if bytes.Equal(want, p.refused) {
		return // said once
	}
	staged := filepath.Join(stagingDir, "config.yaml")
	if err := p.stageConfig(staged, libexecPath); err != nil {
		p.logf("%v; armorshim keeps its configuration", err)
		p.refused = want
		return
	}
	p.refused = nil
	if err := writeAtomic(host, want, 0o644); err != nil {
		p.logf("writing %s: %v", configPath, err)
		return
	}
	if err := p.hostCommand("systemctl", "reload", "armorshim.service").Run(); err != nil {
		p.logf("configuration changed, but reloading armorshim failed: %v", err)
		return
	}
	p.logf("configuration changed: armorshim reloaded (SIGHUP)")
}

// ready tells the readiness probe the pod did its work.
func (p *pod) ready() {
	if err := os.WriteFile(readyFile, nil, 0o644); err != nil {
		p.logf("readiness: %v", err)
	}
}

// stop ends the pod: when the DaemonSet is deleted, armorshim is
// uninstalled; when only the pod goes (an update, a deletion by hand),
// armorshim stays and the next pod takes over. installed says whether
// armorshim is installed here by the installer.
func (p *pod) stop(installed bool) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	going, err := p.api.daemonSetGoing(ctx, p.namespace, p.daemonSet)
	switch {
	case err != nil:
		p.logf("cannot tell whether DaemonSet %s/%s is being deleted (%v): armorshim stays as it is; run the installer in cleanup mode to remove it", p.namespace, p.daemonSet, err)
		return nil
	case !going:
		p.logf("pod ending, DaemonSet %s/%s stays: armorshim stays as it is", p.namespace, p.daemonSet)
		return nil
	case !installed:
		p.setLabels(ctx, map[string]*string{labelBlocked: nil})
		return nil
	}
	return p.cleanup()
}

// cleanup uninstalls armorshim (the kubelet back on containerd first) and
// removes the node's labels.
func (p *pod) cleanup() error {
	if !exists(filepath.Join(p.hostRoot, statePath)) {
		p.logf("armorshim is not installed by the installer on node %s", p.node)
	} else {
		p.logf("uninstalling armorshim from node %s", p.node)
		if err := p.onHost(libexecPath, "host-uninstall"); err != nil {
			p.logf("uninstall failed: %v", err)
			return err
		}
	}
	// a context of its own: the uninstall may have taken a while
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p.setLabels(ctx, map[string]*string{labelInstalled: nil, labelBlocked: nil})
	return nil
}

// copyFile copies src to dst with its mode, streaming (the binaries are
// larger than the pod's memory limit allows to hold twice).
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	info, err := in.Stat()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, info.Mode().Perm())
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
