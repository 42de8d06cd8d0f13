package cri

import "time"

// Log lines armorshim repeats on events it does not control (kernel
// denials, a kubelet retrying a refused pod) are bounded: at most
// logsPerSecond lines a second, bursts of logBurst; the next line logged
// says how many were suppressed.
const (
	logsPerSecond = 5
	logBurst      = 20
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
func (b *tokenBucket) allow(now time.Time) (bool, int) {
	if !b.last.IsZero() {
		b.tokens += now.Sub(b.last).Seconds() * b.rate
		if b.tokens > b.burst {
			b.tokens = b.burst
		}
	}
	b.last = now
	if b.tokens < 1 {
		b.dropped++
		return false, 0
	}
	b.tokens--
	dropped := b.dropped
	b.dropped = 0
	return true, dropped
}
