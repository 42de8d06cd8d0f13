package cri_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/containerd/containerd/api/types"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// fakeEvents is containerd's event service on the backend's socket: it
// publishes a task start event when a container starts, as containerd's
// shim does, on every subscription.
type fakeEvents struct {
	mu      sync.Mutex
	subs    map[chan *types.Envelope]bool
	filters [][]string
	// how StartContainer publishes: "before" its answer, "after" it
	// (by delay), "none", or in another "namespace"; "race": at once,
	// as containerd does.
	how   string
	delay time.Duration
	// pidOf is the pid the event reports.
	pidOf     func(id string) int
	subscribe chan struct{}
}

const subscribePath = "/containerd.services.events.v1.Events/Subscribe"

// withEvents makes a's backend serve containerd's event service and waits
// until armorshim subscribed.
func withEvents(t *testing.T, a *attestEnv, how string) *fakeEvents {
	t.Helper()
	f := &fakeEvents{subs: map[chan *types.Envelope]bool{}, how: how, subscribe: make(chan struct{}, 16)}
	f.pidOf = func(id string) int {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.pids[id]
	}
	a.backend.onStream(subscribePath, func(ss grpc.ServerStream, _ grpc.StreamHandler) error {
		req := &eventsapi.SubscribeRequest{}
		if err := ss.RecvMsg(req); err != nil {
			return err
		}
		ch := make(chan *types.Envelope, 64)
		f.mu.Lock()
		f.subs[ch] = true
		f.filters = append(f.filters, req.Filters)
		f.mu.Unlock()
		defer func() {
			f.mu.Lock()
			delete(f.subs, ch)
			f.mu.Unlock()
		}()
		f.subscribe <- struct{}{}
		for {
			select {
			case <-ss.Context().Done():
				return nil
			case env := <-ch:
				if err := ss.SendMsg(env); err != nil {
					return err
				}
			}
		}
	})
	a.backend.onUnary("/runtime.v1.RuntimeService/StartContainer", func(ctx context.Context, req any, handler grpc.UnaryHandler) (any, error) {
		id := req.(*runtimeapi.StartContainerRequest).ContainerId
		switch f.how {
		case "before": // and answer once armorshim surely has it
			f.publish(t, "k8s.io", id)
			time.Sleep(20 * time.Millisecond)
		case "race":
			f.publish(t, "k8s.io", id)
		case "namespace":
			f.publish(t, "default", id)
		case "after":
			time.AfterFunc(f.delay, func() { f.publish(t, "k8s.io", id) })
		}
		return handler(ctx, req)
	})
	select {
	case <-f.subscribe:
	case <-time.After(10 * time.Second):
		t.Fatal("armorshim did not subscribe to the runtime's events")
	}
	return f
}

// publish sends a task start event for id to every subscriber.
func (f *fakeEvents) publish(t *testing.T, namespace, id string) {
	ev, err := anypb.New(&eventtypes.TaskStart{ContainerID: id, Pid: uint32(f.pidOf(id))})
	if err != nil {
		t.Error(err)
		return
	}
	ev.TypeUrl = "containerd.events.TaskStart" // as containerd's typeurl names it
	env := &types.Envelope{Namespace: namespace, Topic: "/tasks/start", Event: ev}
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.subs {
		ch <- env
	}
}

// metric returns the value of one series of armorshim's metrics, "" if
// absent.
func (a *attestEnv) metric(t *testing.T, series string) string {
	t.Helper()
	for _, line := range a.scrape(t) {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			return v
		}
	}
	return ""
}

// statusCalls counts the ContainerStatus calls the backend received.
func (a *attestEnv) statusCalls() int {
	n := 0
	for _, c := range a.backend.callsSince(0) {
		if c.Method == "/runtime.v1.RuntimeService/ContainerStatus" {
			n++
		}
	}
	return n
}

// With containerd's events, the pid comes from the task start event: no
// ContainerStatus is asked, and the verdict is the same (a swapped profile
// is still stopped).
func TestAttestationTakesThePidFromTheStartEvent(t *testing.T) {
	a := newAttestEnv(t, "enforce", nil)
	f := withEvents(t, a, "before")
	id := a.run(t, "hello-apparmor", "localhost/"+denyWrite, denyWrite+" (enforce)", 4242)
	if err := a.start(t, id); err != nil {
		t.Fatalf("attested start failed: %v", err)
	}
	bad := a.run(t, "swapped", "localhost/"+denyWrite, "k8s-nginx (complain)", 4243)
	if err := a.start(t, bad); err == nil || !strings.Contains(err.Error(), "Blocked: AppArmor confinement mismatch") {
		t.Fatalf("swapped profile: %v, want the mismatch", err)
	}
	if n := a.statusCalls(); n != 0 {
		t.Errorf("%d ContainerStatus calls, want none: the events gave the pids", n)
	}
	if s := a.stopped(); len(s) != 1 || s[0] != bad {
		t.Errorf("stopped %v, want [%s]", s, bad)
	}
	if got := a.metric(t, `armorshim_start_attestation_pids_total{source="event"}`); got != "2" {
		t.Errorf("pids from events %q, want 2", got)
	}
	if got := a.metric(t, "armorshim_runtime_task_events_up"); got != "1" {
		t.Errorf("events up %q, want 1", got)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.filters) == 0 || strings.Join(f.filters[0], ";") != `topic=="/tasks/start",namespace=="k8s.io"` {
		t.Errorf("subscription filters %q", f.filters)
	}
}

// The event may arrive after the runtime answered: it is awaited.
func TestAttestationAwaitsALateStartEvent(t *testing.T) {
	a := newAttestEnv(t, "enforce", nil)
	f := withEvents(t, a, "after")
	f.delay = 10 * time.Millisecond
	id := a.run(t, "hello-apparmor", "localhost/"+denyWrite, denyWrite+" (enforce)", 4242)
	if err := a.start(t, id); err != nil {
		t.Fatalf("attested start failed: %v", err)
	}
	if n := a.statusCalls(); n != 0 {
		t.Errorf("%d ContainerStatus calls, want none", n)
	}
	if got := a.metric(t, `armorshim_start_attestation_pids_total{source="awaited-event"}`); got != "1" {
		t.Errorf("awaited events %q, want 1", got)
	}
}

// No event (none published, or one of another namespace): after a short
// wait, ContainerStatus gives the pid, and a mismatch is still caught.
func TestAttestationFallsBackWithoutItsEvent(t *testing.T) {
	for _, how := range []string{"none", "namespace"} {
		t.Run(how, func(t *testing.T) {
			a := newAttestEnv(t, "enforce", nil)
			withEvents(t, a, how)
			bad := a.run(t, "swapped", "localhost/"+denyWrite, "unconfined", 4243)
			if err := a.start(t, bad); err == nil || !strings.Contains(err.Error(), "Blocked: AppArmor confinement mismatch") {
				t.Fatalf("swapped profile: %v, want the mismatch", err)
			}
			if n := a.statusCalls(); n != 1 {
				t.Errorf("%d ContainerStatus calls, want 1", n)
			}
			if got := a.metric(t, `armorshim_start_attestation_pids_total{source="status"}`); got != "1" {
				t.Errorf("pids from status %q, want 1", got)
			}
		})
	}
}

// A runtime without containerd's event service (CRI-O, the tests' fake) is
// attested through ContainerStatus, and the gauge says the events are not
// followed.
func TestAttestationWithoutAnEventService(t *testing.T) {
	a := newAttestEnv(t, "enforce", nil)
	id := a.run(t, "hello-apparmor", "localhost/"+denyWrite, denyWrite+" (enforce)", 4242)
	if err := a.start(t, id); err != nil {
		t.Fatalf("attested start failed: %v", err)
	}
	if n := a.statusCalls(); n != 1 {
		t.Errorf("%d ContainerStatus calls, want 1", n)
	}
	if got := a.metric(t, "armorshim_runtime_task_events_up"); got != "0" {
		t.Errorf("events up %q, want 0", got)
	}
}

// When the runtime restarts, armorshim subscribes again and takes pids from
// the events again.
func TestAttestationSubscribesAgain(t *testing.T) {
	a := newAttestEnv(t, "enforce", nil)
	f := withEvents(t, a, "race")
	a.backend.stop()
	a.backend.start()
	select {
	case <-f.subscribe:
	case <-time.After(10 * time.Second):
		t.Fatal("armorshim did not subscribe again")
	}
	id := a.run(t, "hello-apparmor", "localhost/"+denyWrite, denyWrite+" (enforce)", 4242)
	if err := a.start(t, id); err != nil {
		t.Fatalf("attested start failed: %v", err)
	}
	ev, awaited := a.metric(t, `armorshim_start_attestation_pids_total{source="event"}`), a.metric(t, `armorshim_start_attestation_pids_total{source="awaited-event"}`)
	if ev+awaited != "10" && ev+awaited != "01" || a.statusCalls() != 0 {
		t.Errorf("pids from events %s, awaited %s, %d ContainerStatus calls: want the event's pid", ev, awaited, a.statusCalls())
	}
}
