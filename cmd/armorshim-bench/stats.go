package main

import (
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"time"
)

// quantile returns the q-quantile (0..1) of xs by linear interpolation
// between the closest ranks; NaN for no values. xs is not modified.
func quantile(xs []float64, q float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	pos := q * float64(len(s)-1)
	lo := int(math.Floor(pos))
	hi := int(math.Ceil(pos))
	return s[lo] + (s[hi]-s[lo])*(pos-float64(lo))
}

func median(xs []float64) float64 { return quantile(xs, 0.5) }

func minMax(xs []float64) (float64, float64) {
	if len(xs) == 0 {
		return math.NaN(), math.NaN()
	}
	lo, hi := xs[0], xs[0]
	for _, x := range xs[1:] {
		lo, hi = math.Min(lo, x), math.Max(hi, x)
	}
	return lo, hi
}

// micros converts durations to float microseconds.
func micros(ds []time.Duration) []float64 {
	out := make([]float64, len(ds))
	for i, d := range ds {
		out[i] = float64(d) / float64(time.Microsecond)
	}
	return out
}

// The three paths every scenario is measured on, in table order.
const (
	direct = iota
	armorshim
	typed
	relay
	numPaths
)

var pathNames = [numPaths]string{"direct", "armorshim", "typed proxy", "byte relay"}

// target is a pass/miss rule on a row: on the per-run ratio armorshim/direct,
// on armorshim's own value when the row has no direct figure, or, with
// scale set, on armorshim's median against scale × direct's median + limit.
type target struct {
	text    string
	onRatio bool
	max     bool // the value must be at most limit (else at least)
	limit   float64
	scale   float64
}

func (t *target) pass(v float64) bool {
	if t.max {
		return v <= t.limit
	}
	return v >= t.limit
}

// row is one line of the results table: a value per path per run.
type row struct {
	id, name, unit string
	vals           [numPaths][]float64
	target         *target
}

// ratios returns the per-run ratios of path p to direct, so that each ratio
// compares figures taken in the same run.
func (r *row) ratios(p int) []float64 {
	var out []float64
	for i := range r.vals[p] {
		if i < len(r.vals[direct]) && r.vals[direct][i] != 0 {
			out = append(out, r.vals[p][i]/r.vals[direct][i])
		}
	}
	return out
}

// verdict returns the figure the target is judged on and PASS/MISS, or "" when
// the row has no target.
func (r *row) verdict() (float64, string) {
	if r.target == nil {
		return math.NaN(), ""
	}
	v := median(r.vals[armorshim])
	if r.target.onRatio {
		v = median(r.ratios(armorshim))
	}
	if r.target.scale != 0 {
		if v <= r.limit() {
			return v, "PASS"
		}
		return v, "MISS"
	}
	if r.target.pass(v) {
		return v, "PASS"
	}
	return v, "MISS"
}

// limit is the bound of a row whose target scales direct's median.
func (r *row) limit() float64 {
	return r.target.scale*median(r.vals[direct]) + r.target.limit
}

// cell formats "median [min–max]" of xs, or "—" when empty.
func cell(xs []float64) string {
	if len(xs) == 0 {
		return "—"
	}
	lo, hi := minMax(xs)
	return fmt.Sprintf("%s [%s–%s]", num(median(xs)), num(lo), num(hi))
}

func num(x float64) string {
	switch a := math.Abs(x); {
	case a >= 1000:
		return fmt.Sprintf("%.0f", x)
	case a >= 100:
		return fmt.Sprintf("%.1f", x)
	case a >= 10:
		return fmt.Sprintf("%.2f", x)
	}
	return fmt.Sprintf("%.3f", x)
}

// printTable writes the rows as a Markdown table.
func printTable(w io.Writer, rows []*row) {
	head := []string{"scenario", "unit", pathNames[direct], pathNames[armorshim], pathNames[typed], pathNames[relay],
		"armorshim/direct", "typed/direct", "relay/direct", "target", "result"}
	lines := [][]string{head}
	for _, r := range rows {
		result := ""
		if v, verdict := r.verdict(); verdict != "" {
			result = fmt.Sprintf("%s (%s)", verdict, num(v))
			if r.target.scale != 0 {
				result = fmt.Sprintf("%s (%s ≤ %s)", verdict, num(v), num(r.limit()))
			}
		}
		tgt := ""
		if r.target != nil {
			tgt = r.target.text
		}
		lines = append(lines, []string{r.id + " " + r.name, r.unit,
			cell(r.vals[direct]), cell(r.vals[armorshim]), cell(r.vals[typed]), cell(r.vals[relay]),
			cell(r.ratios(armorshim)), cell(r.ratios(typed)), cell(r.ratios(relay)), tgt, result})
	}
	widths := make([]int, len(head))
	for _, l := range lines {
		for i, c := range l {
			widths[i] = max(widths[i], len([]rune(c)))
		}
	}
	for n, l := range lines {
		var b strings.Builder
		b.WriteString("|")
		for i, c := range l {
			fmt.Fprintf(&b, " %s%s |", c, strings.Repeat(" ", widths[i]-len([]rune(c))))
		}
		fmt.Fprintln(w, b.String())
		if n == 0 {
			b.Reset()
			b.WriteString("|")
			for i := range l {
				fmt.Fprintf(&b, "%s|", strings.Repeat("-", widths[i]+2))
			}
			fmt.Fprintln(w, b.String())
		}
	}
}
