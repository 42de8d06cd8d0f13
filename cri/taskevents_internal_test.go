package cri

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// The starts remembered are bounded: past maxTaskStarts the oldest are
// forgotten, the newest kept.
func TestTaskEventsRemembersABoundedNumber(t *testing.T) {
	te := NewTaskEvents(nil, nil)
	const n = maxTaskStarts + 100
	for i := 0; i < n; i++ {
		te.add("c"+strconv.Itoa(i), uint32(1000+i))
	}
	if len(te.started) != maxTaskStarts {
		t.Fatalf("%d starts remembered, want %d", len(te.started), maxTaskStarts)
	}
	if _, ok := te.started["c99"]; ok {
		t.Error("the oldest start is still remembered")
	}
	if pid, ok := te.pid(context.Background(), "c"+strconv.Itoa(n-1), startWatch{}); !ok || pid != 1000+n-1 {
		t.Errorf("newest: pid %d, %v", pid, ok)
	}
	// Taken once: a second start of the same id does not reuse it.
	if _, ok := te.pid(context.Background(), "c"+strconv.Itoa(n-1), startWatch{}); ok {
		t.Error("a start's pid was given twice")
	}
}

// Without an open subscription at the start, or after it closed, there
// is no wait: the caller asks the runtime at once.
func TestTaskEventsDoesNotWaitWithoutItsSubscription(t *testing.T) {
	te := NewTaskEvents(nil, nil)
	if w := te.watch(); w.epoch != 0 {
		t.Fatalf("epoch %d before any subscription", w.epoch)
	}
	te.setLive(true)
	epoch := te.watch()
	te.setLive(false)
	te.setLive(true) // another subscription: the start's event may be lost
	begin := time.Now()
	if _, ok := te.pid(context.Background(), "x", epoch); ok {
		t.Fatal("a pid for a start never seen")
	}
	if d := time.Since(begin); d >= eventWait {
		t.Errorf("waited %v for an event of a closed subscription", d)
	}
	// On the same subscription it waits, and an event wakes it.
	epoch = te.watch()
	go func() { time.Sleep(5 * time.Millisecond); te.add("y", 7) }()
	if pid, ok := te.pid(context.Background(), "y", epoch); !ok || pid != 7 {
		t.Errorf("awaited: pid %d, %v", pid, ok)
	}
	// A subscription closing wakes the waiter at once.
	go func() { time.Sleep(5 * time.Millisecond); te.setLive(false) }()
	begin = time.Now()
	if _, ok := te.pid(context.Background(), "z", te.watch()); ok {
		t.Error("a pid for a start never seen")
	}
	if d := time.Since(begin); d >= eventWait {
		t.Errorf("waited %v after the subscription closed", d)
	}
}

// An event that arrived before the StartContainer request is not its
// start's (a container's earlier start, never taken): ignored.
func TestTaskEventsIgnoresAnEventOlderThanTheStart(t *testing.T) {
	te := NewTaskEvents(nil, nil)
	te.add("c", 41)
	w := te.watch() // no subscription: no wait either
	if _, ok := te.pid(context.Background(), "c", w); ok {
		t.Fatal("took an event older than the start")
	}
	w = te.watch()
	te.add("c", 42)
	if pid, ok := te.pid(context.Background(), "c", w); !ok || pid != 42 {
		t.Errorf("pid %d, %v; want 42 from the newer event", pid, ok)
	}
}
