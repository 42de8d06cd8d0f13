package shim

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

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
	want = "armorshim_profile_load_failures_total 1\n"
	if got := gather(t, reg, "armorshim_profile_load_failures_total"); got != want {
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
