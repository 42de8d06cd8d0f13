package cri

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/klog/v2"
)

func TestTokenBucket(t *testing.T) {
	b := newTokenBucket(logsPerSecond, logBurst)
	now := time.Unix(1764121000, 0)
	logged := 0
	for i := 0; i < 100; i++ {
		if ok, _ := b.allow(now); ok {
			logged++
		}
	}
	if logged != logBurst {
		t.Fatalf("a burst of 100 logged %d lines, want %d", logged, logBurst)
	}
	// One second later: logsPerSecond more, and the first says how many
	// were suppressed.
	now = now.Add(time.Second)
	ok, dropped := b.allow(now)
	if !ok || dropped != 100-logBurst {
		t.Fatalf("after 1s: ok=%t dropped=%d, want true %d", ok, dropped, 100-logBurst)
	}
	logged = 1
	for i := 0; i < 100; i++ {
		if ok, _ := b.allow(now); ok {
			logged++
		}
	}
	if logged != logsPerSecond {
		t.Errorf("after 1s %d lines logged, want %d", logged, logsPerSecond)
	}
}

// testRepeatLog is a repeatLog on a clock the test moves.
func testRepeatLog(start time.Time) (*repeatLog, *time.Time) {
	r := newRepeatLog()
	now := start
	r.now = func() time.Time { return now }
	return r, &now
}

// A kubelet retrying one refused container every 10 s for 5 minutes: the
// first refusal is logged, then one line a minute, each saying how many
// repeats it stands for; every refusal is accounted for.
func TestRepeatLogStorm(t *testing.T) {
	r, now := testRepeatLog(time.Unix(1764121000, 0))
	key := r.key("Refused CreateContainer", []any{"pod", "default/hello", "container", "hello", "message", "Blocked"})
	const retries = 5 * 6 // 5 minutes, every 10 s
	logged, accounted := 0, 0
	for i := 0; i < retries; i++ {
		if ok, repeats, before := r.allow(key); ok {
			logged++
			accounted += 1 + repeats
			if before != 0 {
				t.Errorf("retry %d: %d lines suppressed by the budget", i, before)
			}
			if want := min(i, 5); repeats != want {
				t.Errorf("retry %d: logged with %d repeats, want %d", i, repeats, want)
			}
		}
		*now = now.Add(10 * time.Second)
	}
	if logged != 5 {
		t.Errorf("%d retries logged %d lines, want 5 (the first, then one a minute)", retries, logged)
	}
	// The next line accounts for the rest.
	*now = now.Add(time.Minute)
	ok, repeats, _ := r.allow(key)
	if !ok || accounted+repeats+1 != retries+1 {
		t.Errorf("after the storm: ok=%t repeats=%d, %d of %d accounted for", ok, repeats, accounted+repeats+1, retries+1)
	}

	// A burst at one instant: one line.
	r, now = testRepeatLog(time.Unix(1764121000, 0))
	logged = 0
	for i := 0; i < 10000; i++ {
		if ok, _, _ := r.allow(key); ok {
			logged++
		}
	}
	if logged != 1 {
		t.Errorf("10000 identical lines at once logged %d, want 1", logged)
	}
	*now = now.Add(repeatInterval)
	if ok, repeats, _ := r.allow(key); !ok || repeats != 9999 {
		t.Errorf("a minute later: ok=%t repeats=%d, want true 9999", ok, repeats)
	}
}

// Distinct pods each get their first line, within the shared budget; past
// it, the next line logged says how many the budget suppressed, and the
// pods it suppressed are logged when they come back.
func TestRepeatLogDistinctLines(t *testing.T) {
	r, now := testRepeatLog(time.Unix(1764121000, 0))
	keyOf := func(i int) uint64 {
		return r.key("Refused CreateContainer", []any{"pod", fmt.Sprintf("default/pod-%d", i), "container", "c", "message", "Blocked"})
	}
	// logBurst pods, each retried 50 times at once: one line each.
	for rep := 0; rep < 50; rep++ {
		for i := 0; i < logBurst; i++ {
			if ok, _, _ := r.allow(keyOf(i)); ok != (rep == 0) {
				t.Fatalf("pod %d, try %d: logged %t", i, rep, ok)
			}
		}
	}
	// 1000 more pods at once: the budget is spent.
	for i := logBurst; i < logBurst+1000; i++ {
		if ok, _, _ := r.allow(keyOf(i)); ok {
			t.Fatalf("pod %d logged past the budget", i)
		}
	}
	// A second later, a few lines; the first says how many were suppressed.
	*now = now.Add(time.Second)
	ok, repeats, before := r.allow(keyOf(logBurst))
	if !ok || before != 1000-1+1 || repeats != 1 {
		// 999 other pods and this pod's own first try.
		t.Errorf("after 1s: ok=%t before=%d repeats=%d, want true 1000 1", ok, before, repeats)
	}
	// Every pod is logged once it comes back, at the budget's rate.
	seen := map[int]bool{}
	for s := 0; s < 1000 && len(seen) < 999; s++ {
		*now = now.Add(time.Second)
		for i := logBurst + 1; i < logBurst+1000; i++ {
			if ok, _, _ := r.allow(keyOf(i)); ok {
				seen[i] = true
			}
		}
	}
	if len(seen) != 999 {
		t.Errorf("%d of 999 pods logged once they retried", len(seen))
	}
}

// However many distinct lines, the memory holds at most maxRepeatLines.
func TestRepeatLogMemoryBound(t *testing.T) {
	r, now := testRepeatLog(time.Unix(1764121000, 0))
	for i := 0; i < 10*maxRepeatLines; i++ {
		r.allow(uint64(i))
		*now = now.Add(time.Millisecond)
		if len(r.lines) > maxRepeatLines || r.lru.Len() != len(r.lines) {
			t.Fatalf("after %d lines: %d remembered (list %d), bound %d", i+1, len(r.lines), r.lru.Len(), maxRepeatLines)
		}
	}
	// The most recently seen are kept (its suppressed first try is
	// remembered); the least recently seen are forgotten.
	*now = now.Add(time.Second)
	if ok, repeats, _ := r.allow(uint64(10*maxRepeatLines - 1)); !ok || repeats != 1 {
		t.Errorf("the last line: ok=%t repeats=%d, want true 1", ok, repeats)
	}
	if ok, repeats, _ := r.allow(0); !ok || repeats != 0 {
		t.Errorf("the first line: ok=%t repeats=%d, want true 0 (forgotten)", ok, repeats)
	}
}

// The incident: many pods, each retried every 10 s for 5 minutes. The
// lines stay within the budget, and every pod gets its first line.
func TestRepeatLogManyPodsRetrying(t *testing.T) {
	r, now := testRepeatLog(time.Unix(1764121000, 0))
	const pods, seconds = 1000, 300
	keys := make([]uint64, pods)
	for i := range keys {
		keys[i] = r.key("Refused CreateContainer", []any{"pod", fmt.Sprintf("default/pod-%d", i), "container", "c", "message", "Blocked"})
	}
	logged, events := 0, 0
	first := map[int]bool{}
	for s := 0; s < seconds; s++ {
		for i := s % 10; i < pods; i += 10 { // each pod every 10 s
			events++
			if ok, _, _ := r.allow(keys[i]); ok {
				logged++
				first[i] = true
			}
		}
		*now = now.Add(time.Second)
	}
	if limit := logsPerSecond*seconds + logBurst; logged > limit {
		t.Errorf("%d refusals logged %d lines, want at most %d", events, logged, limit)
	}
	if len(first) != pods {
		t.Errorf("%d of %d pods got their first line", len(first), pods)
	}
	t.Logf("%d refusals, %d lines", events, logged)
}

// A line logged after suppressions says so, with the message still last.
func TestRepeatLogLine(t *testing.T) {
	var buf bytes.Buffer
	klog.LogToStderr(false)
	klog.SetOutput(&buf)
	t.Cleanup(func() { klog.SetOutput(os.Stderr); klog.LogToStderr(true) })

	r, now := testRepeatLog(time.Unix(1764121000, 0))
	line := func() {
		r.InfoS("Refused CreateContainer", "pod", klog.KRef("default", "hello"), "container", "hello", "message", "Blocked: x")
	}
	line()
	for i := 0; i < 7; i++ {
		line()
	}
	for i := 0; i < logBurst-1+3; i++ { // spend the budget left, 3 suppressed
		r.InfoS("Other", "i", i)
	}
	*now = now.Add(repeatInterval)
	line()
	klog.Flush()
	var got []string
	for _, l := range strings.Split(buf.String(), "\n") {
		if _, after, ok := strings.Cut(l, "] "); ok && strings.HasPrefix(after, `"Refused`) {
			got = append(got, after)
		}
	}
	want := []string{
		`"Refused CreateContainer" pod="default/hello" container="hello" message="Blocked: x"`,
		`"Refused CreateContainer" pod="default/hello" container="hello" suppressedRepeats=7 suppressedBefore=3 message="Blocked: x"`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("lines:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Concurrent refusals: one line, every repeat accounted for.
func TestRepeatLogConcurrent(t *testing.T) {
	r, _ := testRepeatLog(time.Unix(1764121000, 0))
	var wg sync.WaitGroup
	var logged atomic.Int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				if ok, _, _ := r.allow(42); ok {
					logged.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if logged.Load() != 1 || r.lines[42].Value.(*repeatLine).suppressed != 8000-1 {
		t.Errorf("8000 concurrent repeats: %d lines, %d suppressed", logged.Load(), r.lines[42].Value.(*repeatLine).suppressed)
	}
}
