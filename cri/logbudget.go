package cri

import (
	"container/list"
	"fmt"
	"hash/maphash"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Log lines armorshim repeats on events it does not control (kernel
// denials, a kubelet retrying a refused pod) are bounded: at most
// logsPerSecond lines a second, bursts of logBurst; the next line logged
// says how many were suppressed.
const (
	logsPerSecond = 5
	logBurst      = 20
)

// Refusals and warnings are also bounded per distinct line: the kubelet
// retries a refused container about every 10 s, for every pod.
const (
	repeatInterval = time.Minute // one line per distinct line and interval
	maxRepeatLines = 4096        // distinct lines remembered, least recent forgotten
)

// tokenBucket bounds a stream of log lines: rate lines a second, bursts of
// burst. It counts the lines it suppressed since the last one it allowed.
// It is not safe for concurrent use.
type tokenBucket struct {
	rate, burst float64
	tokens      float64
	last        time.Time
	dropped     int
}

func newTokenBucket(rate, burst float64) tokenBucket {
	return tokenBucket{rate: rate, burst: burst, tokens: burst}
}

// allow reports whether a line may be logged at now and, if so, how many
// were suppressed since the last one logged.
func (b *tokenBucket) allow(now time.Time) (bool, int) { return b.allowAbove(now, 0) }

// allowAbove is allow for a line that may take a token only while more
// than reserve tokens are left.
func (b *tokenBucket) allowAbove(now time.Time, reserve float64) (bool, int) {
	if !b.last.IsZero() {
		b.tokens += now.Sub(b.last).Seconds() * b.rate
		if b.tokens > b.burst {
			b.tokens = b.burst
		}
	}
	b.last = now
	if b.tokens < 1+reserve {
		b.dropped++
		return false, 0
	}
	b.tokens--
	dropped := b.dropped
	b.dropped = 0
	return true, dropped
}

// repeatLog logs the refusals and warnings armorshim gives: each distinct
// line (its message and values: kind, pod, container, reason) the first
// time, then at most once per interval, saying how many repeats it
// suppressed since it was last logged; and every line logged takes a token
// of a bucket shared by all lines, so many distinct lines cannot flood the
// log either (the next line logged says how many the bucket suppressed).
// A repeat takes a token only while half the burst is left, so that the
// repeats of many refused pods do not keep a new one from its first line.
// It remembers at most maxLines distinct lines, the least recently seen are
// forgotten (and logged again when they come back). It is safe for
// concurrent use.
type repeatLog struct {
	interval time.Duration
	maxLines int
	now      func() time.Time

	mu     sync.Mutex
	seed   maphash.Seed
	lines  map[uint64]*list.Element // of *repeatLine
	lru    list.List                // most recently seen first
	budget tokenBucket
}

// repeatLine is what repeatLog remembers of one distinct line.
type repeatLine struct {
	key        uint64
	logged     time.Time // when it was last logged; zero if never
	suppressed int       // repeats not logged since
}

func newRepeatLog() *repeatLog {
	return &repeatLog{
		interval: repeatInterval, maxLines: maxRepeatLines, now: time.Now,
		seed: maphash.MakeSeed(), lines: map[uint64]*list.Element{},
		budget: newTokenBucket(logsPerSecond, logBurst),
	}
}

// InfoS logs msg with keysAndValues (as klog.InfoS) unless it repeats a
// line logged less than an interval ago or the shared budget is spent.
// Identical message and values make identical lines. A line logged after
// suppressions says so with suppressedRepeats (this line's repeats since it
// was last logged) and suppressedBefore (lines of any kind the budget
// suppressed since the last line logged), put before the last pair so that
// the message stays at the end of the line.
func (r *repeatLog) InfoS(msg string, keysAndValues ...any) {
	ok, repeats, before := r.allow(r.key(msg, keysAndValues))
	if !ok {
		return
	}
	if repeats > 0 || before > 0 {
		var extra []any
		if repeats > 0 {
			extra = append(extra, "suppressedRepeats", repeats)
		}
		if before > 0 {
			extra = append(extra, "suppressedBefore", before)
		}
		n := len(keysAndValues) &^ 1
		if n >= 2 {
			n -= 2
		}
		keysAndValues = append(append(append([]any(nil), keysAndValues[:n]...), extra...), keysAndValues[n:]...)
	}
	klog.InfoSDepth(1, msg, keysAndValues...)
}

// key hashes a line: its message and values.
func (r *repeatLog) key(msg string, keysAndValues []any) uint64 {
	var h maphash.Hash
	h.SetSeed(r.seed)
	h.WriteString(msg)
	for _, v := range keysAndValues {
		h.WriteByte(0)
		fmt.Fprint(&h, v)
	}
	return h.Sum64()
}

// allow decides one occurrence of the line with key: whether to log it,
// its repeats suppressed since it was last logged and the lines the budget
// suppressed since the last line logged.
func (r *repeatLog) allow(key uint64) (ok bool, repeats, before int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now() // under the lock: the bucket's clock never runs back
	var l *repeatLine
	if e, seen := r.lines[key]; seen {
		r.lru.MoveToFront(e)
		l = e.Value.(*repeatLine)
	} else {
		if r.lru.Len() >= r.maxLines {
			oldest := r.lru.Back()
			r.lru.Remove(oldest)
			delete(r.lines, oldest.Value.(*repeatLine).key)
		}
		l = &repeatLine{key: key}
		r.lines[key] = r.lru.PushFront(l)
	}
	if !l.logged.IsZero() && now.Sub(l.logged) < r.interval {
		l.suppressed++
		return false, 0, 0
	}
	reserve := 0.0
	if !l.logged.IsZero() {
		reserve = r.budget.burst / 2
	}
	if ok, before = r.budget.allowAbove(now, reserve); !ok {
		l.suppressed++
		return false, 0, 0
	}
	repeats, l.suppressed, l.logged = l.suppressed, 0, now
	return true, repeats, before
}
