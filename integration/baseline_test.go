//go:build integration

package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// baseline is the full critest run straight against containerd, kept
// between runs. It does not involve armorshim: it depends only on the guest
// (kernel, containerd, runc, critest, images: the rootfs cache key), on how
// critest is run (guest.sh's critest_run) and on its parallelism. A run
// that finds it skips that half hour of TCG time and compares the run
// through armorshim with it. ARMORSHIM_IT_BASELINE=0 ignores it.
type baseline struct {
	xml, line string // cached JUnit report and critest console line
}

func newBaseline(dir, cache string, prep map[string]string) *baseline {
	guest, _ := os.ReadFile(filepath.Join(dir, "guest", "guest.sh"))
	fn := string(guest)
	if i := strings.Index(fn, "critest_run() {"); i >= 0 {
		fn = fn[i:]
		if j := strings.Index(fn, "\n}\n"); j >= 0 {
			fn = fn[:j]
		}
	}
	parallel := os.Getenv("CRITEST_PARALLEL")
	if parallel == "" {
		parallel = "4"
	}
	sum := sha256.Sum256([]byte(fn + "\x00" + parallel + "\x00" + os.Getenv("CRITEST_TIMEOUT")))
	key := filepath.Base(filepath.Dir(prep["rootfs"])) + "-" + hex.EncodeToString(sum[:6])
	d := filepath.Join(cache, "critest-baseline", key)
	return &baseline{xml: d + ".xml", line: d + ".json"}
}

func (b *baseline) cached() bool {
	if os.Getenv("ARMORSHIM_IT_BASELINE") == "0" || os.Getenv("ARMORSHIM_IT_FULL") == "0" {
		return false
	}
	_, e1 := os.Stat(b.xml)
	_, e2 := os.Stat(b.line)
	return e1 == nil && e2 == nil
}

// apply hands the main boot the cached direct run, or caches the one it
// just made.
func (b *baseline) apply(t *testing.T, boot *boot) {
	t.Helper()
	report := filepath.Join(boot.artefacts, "critest-full-direct.xml")
	if b.cached() {
		var line critestLine
		data, err := os.ReadFile(b.line)
		if err == nil {
			err = json.Unmarshal(data, &line)
		}
		xml, err2 := os.ReadFile(b.xml)
		if err != nil || err2 != nil {
			t.Errorf("critest baseline %s unreadable: %v %v", b.xml, err, err2)
			return
		}
		if boot.artefacts == "" {
			return
		}
		if err := os.WriteFile(report, xml, 0o644); err != nil {
			t.Errorf("critest baseline: %v", err)
			return
		}
		line.Summary += " (cached: this guest's direct run of " + fileDate(b.xml) + ")"
		boot.critest["full-direct"] = line
		t.Logf("full critest direct: cached baseline %s", b.xml)
		return
	}
	line, ok := boot.critest["full-direct"]
	if !ok || !strings.HasPrefix(line.Ran, "Ran ") || boot.artefacts == "" {
		return
	}
	xml, err := os.ReadFile(report)
	if err != nil {
		return
	}
	data, _ := json.Marshal(line)
	if os.MkdirAll(filepath.Dir(b.xml), 0o755) == nil &&
		os.WriteFile(b.xml, xml, 0o644) == nil && os.WriteFile(b.line, data, 0o644) == nil {
		t.Logf("full critest direct: cached as %s", b.xml)
	}
}

func fileDate(path string) string {
	fi, err := os.Stat(path)
	if err != nil {
		return "?"
	}
	return fi.ModTime().UTC().Format("2006-01-02 15:04 UTC")
}
