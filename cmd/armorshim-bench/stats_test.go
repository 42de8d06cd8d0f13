package main

import (
	"math"
	"strings"
	"testing"
)

func TestQuantile(t *testing.T) {
	xs := []float64{5, 1, 4, 2, 3}
	for _, c := range []struct{ q, want float64 }{{0, 1}, {0.5, 3}, {1, 5}, {0.25, 2}, {0.99, 4.96}} {
		if got := quantile(xs, c.q); math.Abs(got-c.want) > 1e-9 {
			t.Errorf("quantile(%v) = %v, want %v", c.q, got, c.want)
		}
	}
	if xs[0] != 5 {
		t.Errorf("quantile sorted its input")
	}
	if !math.IsNaN(median(nil)) {
		t.Errorf("median of nothing is not NaN")
	}
}

func TestVerdictUsesPerRunRatios(t *testing.T) {
	r := &row{target: &target{onRatio: true, max: true, limit: 1.1}}
	r.vals[direct] = []float64{10, 20, 30}
	r.vals[armorshim] = []float64{10.5, 21, 40}
	if v, verdict := r.verdict(); verdict != "PASS" || math.Abs(v-1.05) > 1e-9 {
		t.Errorf("verdict = %v %s, want 1.05 PASS", v, verdict)
	}
	r.target = &target{limit: 0.6} // at least 0.6 of direct
	r.target.onRatio = true
	if _, verdict := r.verdict(); verdict != "PASS" {
		t.Errorf("throughput verdict = %s", verdict)
	}
}

func TestPrintTable(t *testing.T) {
	r := &row{id: "P1", name: "x", unit: "ms", target: &target{text: "≤ 1", max: true, limit: 1}}
	r.vals[armorshim] = []float64{2}
	var b strings.Builder
	printTable(&b, []*row{r})
	if !strings.Contains(b.String(), "MISS (2.000)") || !strings.Contains(b.String(), "| —") {
		t.Errorf("table:\n%s", b.String())
	}
}

func TestModeOf(t *testing.T) {
	if modeOf([]string{"--runs", "3"}) != "" || modeOf([]string{"fake-runtime"}) != "fake-runtime" || modeOf(nil) != "" {
		t.Error("modeOf")
	}
}

// --only names groups: an unknown one is refused before anything runs, and
// the groups not named do not run.
func TestOnlyGroups(t *testing.T) {
	if err := runBench([]string{"--only", "calls,bogus"}); err == nil || !strings.Contains(err.Error(), `unknown group "bogus"`) {
		t.Errorf("--only calls,bogus: %v", err)
	}
	o := options{only: map[string]bool{"mix": true}}
	if !o.want("mix") || o.want("calls") || !(options{}).want("start") {
		t.Error("want does not follow --only")
	}
}

// P7's target scales direct's median: armorshim's median must stay within
// 1.25 × direct's + 4 MiB.
func TestScaledTarget(t *testing.T) {
	r := &row{target: abuseTarget()}
	r.vals[direct] = []float64{100, 120, 80}
	r.vals[armorshim] = []float64{129, 10, 200}
	if v, verdict := r.verdict(); verdict != "PASS" || v != 129 || r.limit() != 129 {
		t.Errorf("verdict = %v %s (limit %v), want 129 PASS (limit 129)", v, verdict, r.limit())
	}
	r.vals[armorshim][0] = 130
	if _, verdict := r.verdict(); verdict != "MISS" {
		t.Errorf("verdict over the limit = %s", verdict)
	}
	var b strings.Builder
	printTable(&b, []*row{r})
	if !strings.Contains(b.String(), "MISS (130.0 ≤ 129.0)") {
		t.Errorf("table:\n%s", b.String())
	}
}
