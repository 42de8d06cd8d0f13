package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

const (
	manifest  = "profiles-daemonset.yaml"
	name      = "armorshim-profiles"
	namespace = "kube-system"
	hostDir   = "/etc/armorshim/profiles.d"
	image     = "registry.k8s.io/e2e-test-images/busybox:1.36.1-1"
	record    = ".armorshim-profiles-daemonset"

	denyWrite  = "k8s-apparmor-example-deny-write"
	allowWrite = "k8s-apparmor-example-allow-write"
)

// The AppArmor tutorial's profiles.
var tutorialProfiles = map[string]string{
	denyWrite: `#include <tunables/global>

profile k8s-apparmor-example-deny-write flags=(attach_disconnected) {
  #include <abstractions/base>

  file,

  # Deny all file writes.
  deny /** w,
}
`,
	allowWrite: `#include <tunables/global>

profile k8s-apparmor-example-allow-write flags=(attach_disconnected) {
  #include <abstractions/base>

  file,
}
`,
}

// decode reads the manifest: its ConfigMap and its DaemonSet, each decoded
// strictly (unknown and duplicate fields fail).
func decode(t *testing.T) (*corev1.ConfigMap, *appsv1.DaemonSet) {
	t.Helper()
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	var cm *corev1.ConfigMap
	var ds *appsv1.DaemonSet
	for i, doc := range regexp.MustCompile(`(?m)^---[ \t]*$`).Split(string(data), -1) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("%s: document %d: %v", manifest, i, err)
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case " ":
			if strings.TrimSpace(regexp.MustCompile(`(?m)^\s*#.*$`).ReplaceAllString(doc, "")) != "" {
				t.Fatalf("%s: document %d has no apiVersion and kind", manifest, i)
			}
			continue
		case "v1 ConfigMap":
			if cm != nil {
				t.Fatalf("%s: a second ConfigMap (document %d)", manifest, i)
			}
			cm = &corev1.ConfigMap{}
			obj = cm
		case "apps/v1 DaemonSet":
			if ds != nil {
				t.Fatalf("%s: a second DaemonSet (document %d)", manifest, i)
			}
			ds = &appsv1.DaemonSet{}
			obj = ds
		default:
			t.Fatalf("%s: document %d: unexpected %s %s", manifest, i, tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s: document %d (%s): %v", manifest, i, tm.Kind, err)
		}
	}
	if cm == nil || ds == nil {
		t.Fatalf("%s: want a ConfigMap and a DaemonSet, got ConfigMap %v, DaemonSet %v", manifest, cm != nil, ds != nil)
	}
	return cm, ds
}

// script is the DaemonSet's sync script: sh -c SCRIPT.
func script(t *testing.T, ds *appsv1.DaemonSet) string {
	t.Helper()
	cs := ds.Spec.Template.Spec.Containers
	if len(cs) != 1 {
		t.Fatalf("%d containers, want 1", len(cs))
	}
	cmd := cs[0].Command
	if len(cmd) != 3 || cmd[0] != "sh" || cmd[1] != "-c" || cmd[2] == "" {
		t.Fatalf("command %q, want [sh -c SCRIPT]", cmd)
	}
	if len(cs[0].Args) != 0 {
		t.Fatalf("args %q, want none", cs[0].Args)
	}
	return cmd[2]
}

// show prints what an optional field points to.
func show[T any](p *T) string {
	if p == nil {
		return "unset"
	}
	return fmt.Sprint(*p)
}

// validName is the sync script's rule for the names it places.
var validName = regexp.MustCompile(`^[A-Za-z0-9_-][A-Za-z0-9._-]*$`)

func TestManifest(t *testing.T) {
	cm, ds := decode(t)
	for _, m := range []metav1.ObjectMeta{cm.ObjectMeta, ds.ObjectMeta} {
		if m.Name != name || m.Namespace != namespace || m.Labels["app.kubernetes.io/name"] != name {
			t.Errorf("metadata %s/%s labels %v, want %s/%s with app.kubernetes.io/name=%s",
				m.Namespace, m.Name, m.Labels, namespace, name, name)
		}
	}

	// The ConfigMap: the tutorial's two profiles, each defined in the file
	// named after it.
	if len(cm.BinaryData) != 0 {
		t.Errorf("binaryData %v, want none", cm.BinaryData)
	}
	var keys []string
	for k := range cm.Data {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if want := []string{allowWrite, denyWrite}; !slices.Equal(keys, want) {
		t.Errorf("ConfigMap keys %q, want %q", keys, want)
	}
	for k, text := range cm.Data {
		if !validName.MatchString(k) {
			t.Errorf("key %q is not a name the sync places", k)
		}
		if !strings.Contains(text, "\nprofile "+k+" ") {
			t.Errorf("key %q does not define profile %q:\n%s", k, k, text)
		}
		if want, ok := tutorialProfiles[k]; ok && text != want {
			t.Errorf("key %q:\n%s\nwant the tutorial's profile:\n%s", k, text, want)
		}
	}

	// The DaemonSet.
	spec := ds.Spec
	pod := spec.Template.Spec
	if spec.Selector == nil || len(spec.Selector.MatchExpressions) != 0 ||
		len(spec.Selector.MatchLabels) != 1 || spec.Selector.MatchLabels["app.kubernetes.io/name"] != name ||
		spec.Template.Labels["app.kubernetes.io/name"] != name {
		t.Errorf("selector %v, template labels %v: want both app.kubernetes.io/name=%s", spec.Selector, spec.Template.Labels, name)
	}
	if u := spec.UpdateStrategy; u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil ||
		u.RollingUpdate.MaxUnavailable == nil || *u.RollingUpdate.MaxUnavailable != intstr.FromString("10%") {
		t.Errorf("updateStrategy %+v, want RollingUpdate with maxUnavailable 10%%", u)
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q, want system-node-critical", pod.PriorityClassName)
	}
	if want := []corev1.Toleration{{Operator: corev1.TolerationOpExists}}; !slices.Equal(pod.Tolerations, want) {
		t.Errorf("tolerations %+v, want %+v (every taint)", pod.Tolerations, want)
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || *g != 5 {
		t.Errorf("terminationGracePeriodSeconds %s, want 5", show(g))
	}
	if pod.HostNetwork || pod.HostPID || pod.HostIPC {
		t.Errorf("hostNetwork %v hostPID %v hostIPC %v, want none", pod.HostNetwork, pod.HostPID, pod.HostIPC)
	}
	if pod.HostUsers != nil && !*pod.HostUsers {
		t.Errorf("hostUsers false: uid 0 would not be the host's root, and armorshim refuses files not owned by root")
	}
	if a := pod.AutomountServiceAccountToken; a == nil || *a {
		t.Errorf("automountServiceAccountToken %s, want false (it needs no API)", show(a))
	}

	// Volumes: the ConfigMap and the host's profile directory.
	var cmVol, hostVol string
	for _, v := range pod.Volumes {
		switch {
		case v.ConfigMap != nil:
			if v.ConfigMap.Name != name || len(v.ConfigMap.Items) != 0 || (v.ConfigMap.Optional != nil && *v.ConfigMap.Optional) {
				t.Errorf("volume %s: configMap %+v, want all of %s, not optional", v.Name, v.ConfigMap, name)
			}
			if m := v.ConfigMap.DefaultMode; m == nil || *m != 0o644 {
				t.Errorf("volume %s: defaultMode %s, want 0644 (420)", v.Name, show(m))
			}
			cmVol = v.Name
		case v.HostPath != nil:
			if v.HostPath.Path != hostDir || v.HostPath.Type == nil || *v.HostPath.Type != corev1.HostPathDirectoryOrCreate {
				t.Errorf("volume %s: hostPath %+v, want %s, DirectoryOrCreate", v.Name, v.HostPath, hostDir)
			}
			hostVol = v.Name
		default:
			t.Errorf("volume %s: want only the configMap and the hostPath", v.Name)
		}
	}
	if len(pod.Volumes) != 2 || cmVol == "" || hostVol == "" {
		t.Fatalf("volumes %+v, want the ConfigMap's and the hostPath", pod.Volumes)
	}

	script(t, ds)
	c := pod.Containers[0]
	if c.Image != image || c.ImagePullPolicy != corev1.PullIfNotPresent {
		t.Errorf("image %s (%s), want %s (IfNotPresent)", c.Image, c.ImagePullPolicy, image)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			t.Errorf("env %s comes from %+v, want a value", e.Name, e.ValueFrom)
		}
		env[e.Name] = e.Value
	}
	if len(env) != 3 || env["SRC"] == "" || env["DST"] == "" || env["INTERVAL"] != "5" {
		t.Errorf("env %v, want SRC, DST and INTERVAL=5", env)
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	if m := mounts[cmVol]; m.MountPath != env["SRC"] || !m.ReadOnly || m.SubPath != "" {
		t.Errorf("the ConfigMap is mounted as %+v, want read-only at SRC %q, without subPath (which gets no updates)", m, env["SRC"])
	}
	if m := mounts[hostVol]; m.MountPath != env["DST"] || m.ReadOnly || m.SubPath != "" ||
		(m.MountPropagation != nil && *m.MountPropagation != corev1.MountPropagationNone) {
		t.Errorf("the host directory is mounted as %+v, want read-write at DST %q", m, env["DST"])
	}
	if len(mounts) != 2 {
		t.Errorf("volumeMounts %+v, want the two volumes", c.VolumeMounts)
	}

	// Security: root, so that the files are root's, without any capability.
	psc := pod.SecurityContext
	csc := c.SecurityContext
	if psc == nil || csc == nil {
		t.Fatalf("securityContext pod %v, container %v: want both", psc, csc)
	}
	uid, gid := psc.RunAsUser, psc.RunAsGroup
	if csc.RunAsUser != nil {
		uid = csc.RunAsUser
	}
	if csc.RunAsGroup != nil {
		gid = csc.RunAsGroup
	}
	if uid == nil || *uid != 0 || gid == nil || *gid != 0 {
		t.Errorf("runAsUser %s runAsGroup %s, want 0 and 0", show(uid), show(gid))
	}
	if n := psc.RunAsNonRoot; n != nil && *n {
		t.Errorf("runAsNonRoot true, want it unset or false")
	}
	if csc.Privileged != nil && *csc.Privileged {
		t.Errorf("privileged")
	}
	if a := csc.AllowPrivilegeEscalation; a == nil || *a {
		t.Errorf("allowPrivilegeEscalation %s, want false", show(a))
	}
	if r := csc.ReadOnlyRootFilesystem; r == nil || !*r {
		t.Errorf("readOnlyRootFilesystem %s, want true", show(r))
	}
	if caps := csc.Capabilities; caps == nil || len(caps.Add) != 0 || !slices.Equal(caps.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("capabilities %+v, want drop [ALL] and no add", caps)
	}
	seccomp := psc.SeccompProfile
	if csc.SeccompProfile != nil {
		seccomp = csc.SeccompProfile
	}
	if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("seccompProfile %+v, want RuntimeDefault", seccomp)
	}

	// Small resources, limited.
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, lim := c.Resources.Requests[r], c.Resources.Limits[r]
		if req.IsZero() || lim.IsZero() || req.Cmp(lim) > 0 {
			t.Errorf("%s: request %s, limit %s: want both, request <= limit", r, req.String(), lim.String())
		}
	}
	if lim := c.Resources.Limits[corev1.ResourceMemory]; lim.Cmp(resource.MustParse("64Mi")) > 0 {
		t.Errorf("memory limit %s, want at most 64Mi", lim.String())
	}
	if lim := c.Resources.Limits[corev1.ResourceCPU]; lim.Cmp(resource.MustParse("100m")) > 0 {
		t.Errorf("cpu limit %s, want at most 100m", lim.String())
	}
}

// configMapVolume lays out a directory as the kubelet's atomic writer lays
// out a ConfigMap volume: DIR/..TIMESTAMP/KEY, DIR/..data -> ..TIMESTAMP,
// DIR/KEY -> ..data/KEY.
type configMapVolume struct {
	dir string
	n   int    // updates so far
	ts  string // the current ..TIMESTAMP directory
}

// write makes the volume hold files, in the kubelet's order: the new
// timestamped directory, ..data swapped to it with a rename, links for
// new keys, links of keys gone removed, the old directory removed.
func (v *configMapVolume) write(t *testing.T, files map[string]string, modes map[string]os.FileMode) {
	t.Helper()
	v.n++
	ts := fmt.Sprintf("..2026_01_01_00_00_%02d.%09d", v.n, v.n)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.Mkdir(filepath.Join(v.dir, ts), 0o755))
	for k, text := range files {
		mode, ok := modes[k]
		if !ok {
			mode = 0o644
		}
		must(os.WriteFile(filepath.Join(v.dir, ts, k), []byte(text), mode))
		must(os.Chmod(filepath.Join(v.dir, ts, k), mode))
	}
	must(os.Symlink(ts, filepath.Join(v.dir, "..data_tmp")))
	must(os.Rename(filepath.Join(v.dir, "..data_tmp"), filepath.Join(v.dir, "..data")))
	for k := range files {
		link := filepath.Join(v.dir, k)
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			must(os.Symlink(filepath.Join("..data", k), link))
		}
	}
	entries, err := os.ReadDir(v.dir)
	must(err)
	for _, e := range entries {
		if _, ok := files[e.Name()]; !ok && !strings.HasPrefix(e.Name(), ".") {
			must(os.Remove(filepath.Join(v.dir, e.Name())))
		}
	}
	if v.ts != "" {
		must(os.RemoveAll(filepath.Join(v.dir, v.ts)))
	}
	v.ts = ts
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// lines counts the output lines equal to line.
func (b *lockedBuffer) lines(line string) int {
	return strings.Count("\n"+b.String(), "\n"+line+"\n")
}

// shell runs the sync script: argv before "-c SCRIPT", the environment
// besides SRC, DST and INTERVAL, and whether it runs without capabilities.
type shell struct {
	argv   []string
	env    []string
	noCaps bool
}

// running is one run of the sync script.
type running struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan error
}

func start(t *testing.T, sh shell, scr, src, dst, interval string) *running {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	cmd := exec.CommandContext(ctx, sh.argv[0], append(sh.argv[1:], "-c", scr)...)
	cmd.Env = slices.Concat(sh.env, []string{"SRC=" + src, "DST=" + dst, "INTERVAL=" + interval})
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	r := &running{cmd: cmd, out: out, done: make(chan error, 1)}
	go func() { r.done <- cmd.Wait(); cancel() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-r.done
	})
	return r
}

// stop sends SIGTERM and wants the script to end, with status 0 (its trap)
// or as killed by SIGTERM (143), within 3 seconds.
func (r *running) stop(t *testing.T) {
	t.Helper()
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatalf("SIGTERM: %v; output:\n%s", err, r.out)
	}
	select {
	case err := <-r.done:
		r.done <- err // for the cleanup
		ws := r.cmd.ProcessState.Sys().(syscall.WaitStatus)
		if !(ws.Exited() && (ws.ExitStatus() == 0 || ws.ExitStatus() == 143)) && !(ws.Signaled() && ws.Signal() == syscall.SIGTERM) {
			t.Fatalf("after SIGTERM: %v, want exit status 0 or 143; output:\n%s", err, r.out)
		}
	case <-time.After(3 * time.Second):
		t.Fatalf("still running 3s after SIGTERM; output:\n%s", r.out)
	}
}

// eventually polls cond until it holds, for at most 10 seconds.
func eventually(t *testing.T, r *running, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case e := <-r.done:
			r.done <- e
			t.Fatalf("%s: the script ended (%v) while %v; output:\n%s", what, e, err, r.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after 10s: %v; output:\n%s", what, err, r.out)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// logged waits until each line is in the output, then wants it there once.
func (r *running) logged(t *testing.T, lines ...string) {
	t.Helper()
	eventually(t, r, "logged", func() error {
		for _, line := range lines {
			if r.out.lines(line) == 0 {
				return fmt.Errorf("no line %q", line)
			}
		}
		return nil
	})
	for _, line := range lines {
		if n := r.out.lines(line); n != 1 {
			t.Errorf("%d lines %q, want 1; output:\n%s", n, line, r.out)
		}
	}
}

// holds says whether dir holds exactly these files (names starting with a
// dot included), each a regular file with this content, and mode 0644 unless
// modes says otherwise.
func holds(dir string, files map[string]string, modes map[string]os.FileMode) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var got, want []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	for f := range files {
		want = append(want, f)
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		return fmt.Errorf("%s holds %q, want %q", dir, got, want)
	}
	for f, text := range files {
		p := filepath.Join(dir, f)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		mode, ok := modes[f]
		if !ok {
			mode = 0o644
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm() != mode {
			return fmt.Errorf("%s: mode %v, want a regular file, %v", p, fi.Mode(), mode)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if string(b) != text {
			return fmt.Errorf("%s holds %q, want %q", p, b, text)
		}
	}
	return nil
}

// recordOf is the record's content for these names.
func recordOf(names ...string) string {
	slices.Sort(names)
	return strings.Join(names, "\n") + "\n"
}

// capEff is the effective capabilities of a process, from /proc.
func capEff(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`(?m)^CapEff:\s*(\S+)$`).FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("no CapEff in /proc/%d/status", pid)
	}
	return string(m[1]), nil
}

// scenario plays a ConfigMap's life against the sync script: placed, the
// ConfigMap changed, stopped, changed while stopped, started again.
func scenario(t *testing.T, sh shell, scr string) {
	tmp := t.TempDir()
	src := filepath.Join(tmp, "profiles")
	dst := filepath.Join(tmp, "profiles.d")
	for _, d := range []string{src, dst} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cm := &configMapVolume{dir: src}
	// Files of the directory the sync did not place: never touched.
	const foreign, foreignDot, foreignText = "node-local", ".node-local.swp", "profile node-local {}\n"
	for _, f := range []string{foreign, foreignDot} {
		if err := os.WriteFile(filepath.Join(dst, f), []byte(foreignText), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	old := time.Now().Add(-time.Hour).Truncate(time.Second)
	for _, f := range []string{foreign, foreignDot} {
		if err := os.Chtimes(filepath.Join(dst, f), old, old); err != nil {
			t.Fatal(err)
		}
	}
	// allow-write is also in the directory, the operator's own, not placed
	// by the sync: the key of that name is skipped, and the file is never
	// overwritten, recorded or removed.
	const operatorAllow = "profile k8s-apparmor-example-allow-write { # the operator's own\n}\n"
	if err := os.WriteFile(filepath.Join(dst, allowWrite), []byte(operatorAllow), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(filepath.Join(dst, allowWrite), old, old); err != nil {
		t.Fatal(err)
	}
	foreignModes := map[string]os.FileMode{foreign: 0o600, foreignDot: 0o600, allowWrite: 0o600}
	untouched := func() error {
		for _, f := range []string{foreign, foreignDot, allowWrite} {
			fi, err := os.Stat(filepath.Join(dst, f))
			if err != nil {
				return err
			}
			if !fi.ModTime().Equal(old) {
				return fmt.Errorf("%s was modified at %v", f, fi.ModTime())
			}
		}
		return nil
	}

	// 1. The tutorial's profiles: deny-write is placed; allow-write is
	// skipped, since the operator's file is in the way. A name the sync must
	// not place is skipped and logged, and so are the names armorshim's
	// loader skips (they would be placed and never loaded).
	const badName = "bad~name"
	unloaded := []string{"k8s-x~", "k8s-x.dpkg-old", "k8s-x.rpmnew", "k8s-x.rpmsave"}
	files := map[string]string{
		denyWrite:  tutorialProfiles[denyWrite],
		allowWrite: tutorialProfiles[allowWrite],
		badName:    "profile bad {}\n",
	}
	for _, n := range unloaded {
		files[n] = "profile k8s-x {}\n"
	}
	cm.write(t, files, nil)
	r := start(t, sh, scr, src, dst, "1")
	want := map[string]string{
		denyWrite:  tutorialProfiles[denyWrite],
		allowWrite: operatorAllow,
		foreign:    foreignText,
		foreignDot: foreignText,
		record:     recordOf(denyWrite),
	}
	eventually(t, r, "the tutorial's profiles placed", func() error { return holds(dst, want, foreignModes) })
	skipped := []string{
		"placed " + denyWrite,
		"skipped " + allowWrite + ": a file the sync did not place is in the way",
		"skipped " + badName + ": not a name of A-Z a-z 0-9 . _ -",
	}
	for _, n := range unloaded {
		skipped = append(skipped, "skipped "+n+": armorshim does not load such names")
	}
	r.logged(t, skipped...)
	if err := untouched(); err != nil {
		t.Error(err)
	}
	if sh.noCaps {
		if c, err := capEff(r.cmd.Process.Pid); err != nil || strings.Trim(c, "0") != "" {
			t.Errorf("the script runs with capabilities %s (%v), want none", c, err)
		}
	}

	// 2. The ConfigMap changes: deny-write changed, allow-write gone (the
	// operator's file stays), a new profile, whose mode in the volume (an
	// item's mode) is not 0644.
	const newName = "k8s-new"
	denyChanged := strings.Replace(tutorialProfiles[denyWrite], "deny /** w,", "deny /** wl,", 1)
	newText := "profile k8s-new flags=(attach_disconnected) {\n  file,\n}\n"
	cm.write(t, map[string]string{denyWrite: denyChanged, newName: newText}, map[string]os.FileMode{newName: 0o640})
	want = map[string]string{
		denyWrite:  denyChanged,
		newName:    newText,
		allowWrite: operatorAllow,
		foreign:    foreignText,
		foreignDot: foreignText,
		record:     recordOf(denyWrite, newName),
	}
	eventually(t, r, "the changed ConfigMap synced", func() error { return holds(dst, want, foreignModes) })
	r.logged(t, "updated "+denyWrite, "placed "+newName)
	r.stop(t)
	out1 := r.out.String()

	// 3. While it is stopped deny-write leaves the ConfigMap: the record
	// says it was placed, so the next run removes it. k8s-new, unchanged, is
	// not written again. This run sleeps 30s between syncs: SIGTERM must
	// end the sleep, not wait for it (the pod has 5s to stop).
	cm.write(t, map[string]string{newName: newText}, map[string]os.FileMode{newName: 0o640})
	r = start(t, sh, scr, src, dst, "30")
	want = map[string]string{
		newName:    newText,
		allowWrite: operatorAllow,
		foreign:    foreignText,
		foreignDot: foreignText,
		record:     recordOf(newName),
	}
	eventually(t, r, "a profile removed while stopped", func() error { return holds(dst, want, foreignModes) })
	r.stop(t)
	out2 := r.out.String()
	if err := untouched(); err != nil {
		t.Error(err)
	}
	if n := r.out.lines("removed " + denyWrite); n != 1 {
		t.Errorf("%d lines %q, want 1; output:\n%s", n, "removed "+denyWrite, out2)
	}
	if n := strings.Count(out1+out2, newName); n != 1 {
		t.Errorf("%s logged %d times, want once (placed); output:\n%s%s", newName, n, out1, out2)
	}
	if n := strings.Count(out1+out2, allowWrite); n != 1 {
		t.Errorf("%s logged %d times, want once (skipped); output:\n%s%s", allowWrite, n, out1, out2)
	}
	// Nothing but its own lines: no failure, no complaint of a tool.
	logLine := regexp.MustCompile(`^(syncing \S+ to \S+ every \d+s|(placed|updated|removed) [A-Za-z0-9._-]+|skipped .*|stopped)$`)
	for _, line := range strings.Split(strings.TrimSuffix(out1+out2, "\n"), "\n") {
		if !logLine.MatchString(line) {
			t.Errorf("unexpected output line %q; output:\n%s%s", line, out1, out2)
		}
	}
	if err := holds(dst, want, foreignModes); err != nil {
		t.Error(err)
	}
}

func TestSync(t *testing.T) {
	_, ds := decode(t)
	scr := script(t, ds)
	path := "PATH=" + os.Getenv("PATH")

	t.Run("sh", func(t *testing.T) {
		scenario(t, shell{argv: []string{"/bin/sh"}, env: []string{path}}, scr)
	})

	// As in the pod: root without any capability, which can write the
	// directory only as its owner. setpriv empties the bounding and
	// inheritable sets, so root's exec gets no capability.
	setpriv, err := exec.LookPath("setpriv")
	canDrop := os.Geteuid() == 0 && err == nil
	noCaps := func(argv ...string) shell {
		if !canDrop {
			return shell{argv: argv}
		}
		return shell{argv: append([]string{setpriv, "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"}, argv...), noCaps: true}
	}
	t.Run("sh without capabilities", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("not root: the capabilities of root are not at stake")
		}
		if !canDrop {
			t.Skip("no setpriv (util-linux) to drop capabilities")
		}
		sh := noCaps("/bin/sh")
		sh.env = []string{path}
		scenario(t, sh, scr)
	})

	// As in the image: busybox's sh and applets, nothing else on PATH
	// (without capabilities if it can).
	t.Run("busybox", func(t *testing.T) {
		bb := os.Getenv("ARMORSHIM_BUSYBOX")
		if bb == "" {
			var err error
			if bb, err = exec.LookPath("busybox"); err != nil {
				t.Skip("no busybox on PATH and ARMORSHIM_BUSYBOX unset")
			}
		}
		bin := t.TempDir()
		for _, applet := range []string{"sh", "cp", "mv", "rm", "chmod", "sleep", "cmp", "printf"} {
			if err := os.Symlink(bb, filepath.Join(bin, applet)); err != nil {
				t.Fatal(err)
			}
		}
		sh := noCaps(filepath.Join(bin, "sh"))
		sh.env = []string{"PATH=" + bin}
		scenario(t, sh, scr)
	})
}
