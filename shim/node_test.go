package shim

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/host"
)

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
