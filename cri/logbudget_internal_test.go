package cri

import (
	"testing"
	"time"
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
