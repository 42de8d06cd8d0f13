package host

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// fakeKernel is a securityfs tree and an apparmor_parser that loads into it
// as the kernel would: --replace adds the file's "profile NAME" lines to the
// profiles list and bumps the revision, -R takes them out.
type fakeKernel struct {
	t               *testing.T
	sysfs, procfs   string
	parser, calls   string
	profiles, revfn string
}

func newFakeKernel(t *testing.T) *fakeKernel {
	t.Helper()
	root := t.TempDir()
	k := &fakeKernel{t: t, sysfs: filepath.Join(root, "sys"), procfs: filepath.Join(root, "proc")}
	sec := filepath.Join(k.sysfs, "kernel", "security", "apparmor")
	k.profiles, k.revfn = filepath.Join(sec, "profiles"), filepath.Join(sec, "revision")
	for path, data := range map[string]string{
		filepath.Join(k.sysfs, "module", "apparmor", "parameters", "enabled"): "Y\n",
		k.profiles: "cri-containerd.apparmor.d (enforce)\n",
		k.revfn:    "1\n",
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		write(t, path, data)
	}
	k.calls = filepath.Join(root, "calls.log")
	k.parser = filepath.Join(root, "apparmor_parser")
	script := fmt.Sprintf(`#!/bin/sh
echo "$*" >> %[1]q
for a in "$@"; do f="$a"; done
names=$(sed -n 's/^profile \([^ ]*\).*/\1/p' "$f")
case "$1" in
--names) echo "$names"; exit 0 ;;
esac
grep -q "not for this kernel" "$f" && exit 0
for n in $names; do
  grep -v "^$n (" %[2]q > %[2]q.new; cat %[2]q.new > %[2]q
  [ "$1" = -R ] || echo "$n (enforce)" >> %[2]q
done
echo $(( $(cat %[3]q) + 1 )) > %[3]q
`, k.calls, k.profiles, k.revfn)
	if err := os.WriteFile(k.parser, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return k
}

// remove is apparmor_parser -R FILE.
func (k *fakeKernel) remove(file string) {
	k.t.Helper()
	if out, err := exec.Command(k.parser, "-R", file).CombinedOutput(); err != nil {
		k.t.Fatalf("-R: %v %s", err, out)
	}
}

func (k *fakeKernel) loaded() []string {
	data, err := os.ReadFile(k.profiles)
	if err != nil {
		k.t.Fatal(err)
	}
	var names []string
	for name := range ParseProfiles(string(data)) {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

func (k *fakeKernel) replaces() int {
	n := 0
	for _, c := range calls(k.t, k.calls) {
		if strings.HasPrefix(c, "--replace ") {
			n++
		}
	}
	return n
}

func TestLoaderReloadsProfilesGoneFromTheKernel(t *testing.T) {
	k := newFakeKernel(t)
	r := NewReader(k.sysfs, k.procfs)
	t.Cleanup(func() { r.Close() })
	dir := t.TempDir()
	write(t, filepath.Join(dir, "nginx"), "profile k8s-nginx {}\nprofile k8s-nginx-helper {}\n")
	write(t, filepath.Join(dir, "deny-write"), denyWriteProfile)
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	l := &Loader{Dir: dir, TrustedUID: me, Parser: k.parser, Kernel: r.Snapshot, Now: func() time.Time { return now }}
	ctx := context.Background()

	done, err := l.Sync(ctx)
	if err != nil || len(done) != 2 || !done[1].Loaded || strings.Join(done[1].Profiles, ",") != "k8s-nginx,k8s-nginx-helper" {
		t.Fatalf("first sync = %+v %v", done, err)
	}
	want := "cri-containerd.apparmor.d k8s-apparmor-example-deny-write k8s-nginx k8s-nginx-helper"
	if got := strings.Join(k.loaded(), " "); got != want {
		t.Fatalf("kernel = %s, want %s", got, want)
	}
	if done, _ := l.Sync(ctx); len(done) != 0 {
		t.Fatalf("all loaded, yet %+v", done)
	}

	// apparmor_parser -R of one file: only that file is loaded again.
	k.remove(filepath.Join(dir, "nginx"))
	if got := strings.Join(k.loaded(), " "); got != "cri-containerd.apparmor.d k8s-apparmor-example-deny-write" {
		t.Fatalf("after -R: %s", got)
	}
	before := k.replaces()
	done, _ = l.Sync(ctx)
	if len(done) != 1 || done[0].Name != "nginx" || !done[0].Loaded {
		t.Fatalf("after -R: %+v, want nginx loaded again", done)
	}
	if got := strings.Join(k.loaded(), " "); got != want {
		t.Fatalf("kernel after the reload = %s", got)
	}
	if k.replaces() != before+1 || l.Totals().Reloads != 1 {
		t.Errorf("%d replaces, %d reloads counted; want 1, 1", k.replaces()-before, l.Totals().Reloads)
	}
	if done, _ := l.Sync(ctx); len(done) != 0 {
		t.Fatalf("back in the kernel, yet %+v", done)
	}

	// One profile of a file gone (a package upgrade removed it): reloaded.
	write(t, k.profiles, strings.ReplaceAll(string(must(os.ReadFile(k.profiles))), "k8s-nginx-helper (enforce)\n", ""))
	write(t, k.revfn, "100\n")
	if done, _ := l.Sync(ctx); len(done) != 1 || done[0].Name != "nginx" {
		t.Fatalf("one profile gone: %+v", done)
	}
	if l.Totals().Reloads != 2 {
		t.Errorf("reloads = %d, want 2", l.Totals().Reloads)
	}
}

// A file whose profiles never show up in the kernel is not loaded at every
// sync: the reloads back off.
func TestLoaderReloadBacksOff(t *testing.T) {
	k := newFakeKernel(t)
	r := NewReader(k.sysfs, k.procfs)
	t.Cleanup(func() { r.Close() })
	dir := t.TempDir()
	write(t, filepath.Join(dir, "odd"), "profile k8s-odd {}\n# not for this kernel\n")
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	l := &Loader{Dir: dir, TrustedUID: me, Parser: k.parser, Kernel: r.Snapshot, Now: func() time.Time { return now }}
	var loads []time.Duration
	for ms := 0; ms <= 8000; ms += 500 {
		now = t0.Add(time.Duration(ms) * time.Millisecond)
		if done, _ := l.Sync(context.Background()); len(done) == 1 {
			loads = append(loads, now.Sub(t0))
		}
	}
	// Loaded at 0; missing: again at once (0.5s), then 1s, 2s, 4s later.
	if got := fmt.Sprint(loads); got != "[0s 500ms 1.5s 3.5s 7.5s]" {
		t.Errorf("loads at %s", got)
	}
	if got := l.Totals().Reloads; got != 4 {
		t.Errorf("reloads = %d, want 4", got)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
