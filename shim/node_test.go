package shim

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/host"
)

// fakeParser is an apparmor_parser that fails on files holding "broken".
func fakeParser(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "apparmor_parser")
	script := "#!/bin/sh\nfor a in \"$@\"; do f=\"$a\"; done\nif grep -q broken \"$f\"; then echo \"$f: syntax error\" >&2; exit 1; fi\n"
	if err := os.WriteFile(p, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func writeFile(t *testing.T, path, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func TestLoaderMetrics(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "good"), "profile good {}\n", 0o644)
	writeFile(t, filepath.Join(dir, "broken"), "broken\n", 0o644)
	writeFile(t, filepath.Join(dir, "open"), "profile open {}\n", 0o666)
	l := &host.Loader{Dir: dir, Parser: fakeParser(t), TrustedUID: uint32(os.Getuid())}
	reg := prometheus.NewPedanticRegistry()
	registerLoaderMetrics(reg, l)
	if _, err := l.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := `armorshim_profile_files{state="failed"} 1
armorshim_profile_files{state="loaded"} 1
armorshim_profile_files{state="refused"} 1
`
	if got := gather(t, reg, "armorshim_profile_files"); got != want {
		t.Errorf("metrics:\n%s\nwant:\n%s", got, want)
	}
	want = "armorshim_profile_load_failures_total 1\narmorshim_profile_reloads_total 0\n"
	if got := gather(t, reg, "armorshim_profile_load_failures_total", "armorshim_profile_reloads_total"); got != want {
		t.Errorf("metrics:\n%s\nwant:\n%s", got, want)
	}
}

// gather renders the samples of the named metrics, one "name{labels} value"
// a line, in the registry's order.
func gather(t *testing.T, reg prometheus.Gatherer, names ...string) string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		if !slices.Contains(names, mf.GetName()) {
			continue
		}
		for _, m := range mf.GetMetric() {
			var labels []string
			for _, lp := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", lp.GetName(), lp.GetValue()))
			}
			v := m.GetGauge().GetValue() + m.GetCounter().GetValue()
			name := mf.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			fmt.Fprintf(&b, "%s %g\n", name, v)
		}
	}
	return b.String()
}

// The serving loader watches the kernel: a profile removed from it while
// its file stays is loaded again and counted; its state reaches the status
// file.
func TestServingLoaderReloadsRemovedProfiles(t *testing.T) {
	sysfs := t.TempDir()
	sec := filepath.Join(sysfs, "kernel", "security", "apparmor")
	os.MkdirAll(filepath.Join(sysfs, "module", "apparmor", "parameters"), 0o755)
	os.MkdirAll(sec, 0o755)
	writeFile(t, filepath.Join(sysfs, "module", "apparmor", "parameters", "enabled"), "Y\n", 0o644)
	writeFile(t, filepath.Join(sec, "profiles"), "", 0o644)
	writeFile(t, filepath.Join(sec, "revision"), "1\n", 0o644)
	// A parser that loads "profile NAME" into the fake securityfs.
	parser := filepath.Join(t.TempDir(), "apparmor_parser")
	writeFile(t, parser, `#!/bin/sh
for a in "$@"; do f="$a"; done
names=$(sed -n 's/^profile \([^ ]*\).*/\1/p' "$f")
[ "$1" = --names ] && { echo "$names"; exit 0; }
for n in $names; do echo "$n (enforce)" >> `+sec+`/profiles; done
echo $(( $(cat `+sec+`/revision) + 1 )) > `+sec+`/revision
`, 0o755)
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "nginx"), "profile k8s-nginx {}\n", 0o644)
	h := host.NewReader(sysfs, t.TempDir())
	t.Cleanup(func() { h.Close() })
	status := filepath.Join(t.TempDir(), "profiles.json")
	l := newLoader(ProfilesConfig{Directory: dir, Parser: parser, StatusFile: status}, h)
	l.TrustedUID = uint32(os.Getuid())
	reg := prometheus.NewPedanticRegistry()
	registerLoaderMetrics(reg, l)

	if _, err := l.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	// apparmor_parser -R k8s-nginx
	writeFile(t, filepath.Join(sec, "profiles"), "", 0o644)
	writeFile(t, filepath.Join(sec, "revision"), "10\n", 0o644)
	if done, _ := l.Sync(context.Background()); len(done) != 1 || !done[0].Loaded {
		t.Fatalf("after -R: %+v, want the file loaded again", done)
	}
	if snap := h.Snapshot(); snap.Profiles["k8s-nginx"] != "enforce" {
		t.Errorf("kernel after the reload: %v", snap.Profiles)
	}
	if got := gather(t, reg, "armorshim_profile_reloads_total"); got != "armorshim_profile_reloads_total 1\n" {
		t.Errorf("metrics: %s", got)
	}

	// Run writes the status file at once.
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { l.Run(ctx, time.Hour); close(ran) }()
	cancel()
	<-ran
	st, err := host.ReadStatus(status)
	if err != nil || st.Directory != dir || len(st.Files) != 1 || !st.Files[0].Loaded || st.Files[0].Profiles[0] != "k8s-nginx" {
		t.Fatalf("status file = %+v %v", st, err)
	}
}

// A feature file that cannot be written is logged once per change, not at
// every refresh.
func TestFeatureWriteFailureLoggedOncePerChange(t *testing.T) {
	var buf bytes.Buffer
	klog.LogToStderr(false)
	klog.SetOutput(&buf)
	// Each severity's log gets the lines of its severity and above: read
	// the INFO log only.
	for _, sev := range []string{"WARNING", "ERROR", "FATAL"} {
		klog.SetOutputBySeverity(sev, io.Discard)
	}
	t.Cleanup(func() { klog.SetOutput(os.Stderr); klog.LogToStderr(true) })

	dir := filepath.Join(t.TempDir(), "features.d")
	os.WriteFile(dir, nil, 0o644) // a file where the directory should be: every write fails
	w := &featureWriter{cfg: NodeFeaturesConfig{Directory: dir, Expiry: Duration(time.Hour)}, host: host.NewReader(t.TempDir(), t.TempDir())}
	now := time.Now()
	for i := range 3 {
		w.refresh(now.Add(time.Duration(i) * 2 * time.Second))
	}
	os.Remove(dir)
	os.Mkdir(dir, 0o755)
	w.refresh(now.Add(6 * time.Second))
	if _, err := os.Stat(filepath.Join(dir, host.FeatureFileName)); err != nil {
		t.Fatalf("the feature file was not written once the directory was there: %v", err)
	}
	klog.Flush()
	out := buf.String()
	if n := strings.Count(out, "Writing node features failed"); n != 1 {
		t.Errorf("three failed refreshes logged %d times, want once:\n%s", n, out)
	}
	if n := strings.Count(out, "Node features written again"); n != 1 {
		t.Errorf("the recovery logged %d times, want once:\n%s", n, out)
	}
}
