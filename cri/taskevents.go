package cri

import (
	"context"
	"strings"
	"sync"
	"time"

	eventtypes "github.com/containerd/containerd/api/events"
	eventsapi "github.com/containerd/containerd/api/services/events/v1"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"k8s.io/klog/v2"
)

// TaskEvents follows containerd's task start events, which carry the
// process id of every container containerd starts, so that attestation
// needs no ContainerStatus round trip to learn it. It subscribes on the
// runtime connection armorshim already holds (containerd serves its event
// service on the CRI socket); armorshim's own socket still refuses
// containerd's API, so only a client of containerd's socket itself (root on
// the node) could publish such an event.
//
// Where the runtime serves no events (not containerd), while the
// subscription is down, or when a start's event does not arrive within
// eventWait of its answer, attestation asks ContainerStatus as before.
type TaskEvents struct {
	conn    grpc.ClientConnInterface
	pids    *prometheus.CounterVec
	up      prometheus.Gauge
	mu      sync.Mutex
	epoch   uint64 // increases with each subscription
	live    bool   // a subscription is open
	started map[string]startedTask
	ring    [maxTaskStarts]string // ids in arrival order, to bound started
	next    int
	waiting map[string]chan struct{}
}

type startedTask struct {
	pid uint32
	seq int // its slot's use in ring, so a recycled slot forgets only its own
}

// criNamespace is the containerd namespace of the CRI plugin's containers.
const criNamespace = "k8s.io"

// taskStartFilter selects the start of a task in the CRI's namespace.
const taskStartFilter = `topic=="/tasks/start",namespace=="` + criNamespace + `"`

// maxTaskStarts bounds the starts remembered and not yet taken (those not
// started through armorshim are only forgotten when newer ones push them
// out).
const maxTaskStarts = 4096

// eventWait is how long an attestation waits for a start's event that has
// not arrived when the runtime answered, before asking ContainerStatus.
const eventWait = 50 * time.Millisecond

// Pid sources, the values of the metric's source label.
const (
	pidFromEvent        = "event"         // the event was there when StartContainer was answered
	pidFromAwaitedEvent = "awaited-event" // it arrived within eventWait after
	pidFromStatus       = "status"        // a verbose ContainerStatus
)

// NewTaskEvents returns a follower of conn's task start events, counted
// in reg. It does nothing until Run.
func NewTaskEvents(conn grpc.ClientConnInterface, reg prometheus.Registerer) *TaskEvents {
	t := &TaskEvents{
		conn:    conn,
		started: map[string]startedTask{},
		waiting: map[string]chan struct{}{},
		pids: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "armorshim_start_attestation_pids_total",
			Help: "Where start attestation took the container's process id from: event (containerd's task start event, there when StartContainer was answered), awaited-event (arrived shortly after), status (a verbose ContainerStatus: no event stream, or the event late).",
		}, []string{"source"}),
		up: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "armorshim_runtime_task_events_up",
			Help: "1 while armorshim follows containerd's task start events, 0 while it cannot (attestation then asks ContainerStatus).",
		}),
	}
	for _, s := range []string{pidFromEvent, pidFromAwaitedEvent, pidFromStatus} {
		t.pids.WithLabelValues(s)
	}
	if reg != nil {
		reg.MustRegister(t.pids, t.up)
	}
	return t
}

// Run follows the events until ctx ends, subscribing again with backoff
// whenever the stream fails. It logs when events start and stop arriving.
func (t *TaskEvents) Run(ctx context.Context) {
	const minBackoff, maxBackoff = 100 * time.Millisecond, 10 * time.Second
	backoff := minBackoff
	following, failedBefore := false, false
	for ctx.Err() == nil {
		received, err := t.follow(ctx, func() {
			if !following {
				klog.InfoS("Following containerd's task start events: attestation takes process ids from them")
				following = true
			}
		})
		if ctx.Err() != nil {
			return
		}
		if received {
			backoff = minBackoff
		}
		if following || !failedBefore {
			klog.InfoS("Not following containerd's task events: attestation asks ContainerStatus until they are back", "err", err)
			following, failedBefore = false, true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// follow holds one subscription until it fails, calling first at its
// first event; it says whether it received anything.
func (t *TaskEvents) follow(ctx context.Context, first func()) (bool, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := eventsapi.NewEventsClient(t.conn).Subscribe(ctx, &eventsapi.SubscribeRequest{Filters: []string{taskStartFilter}})
	if err != nil {
		return false, err
	}
	// Open as far as armorshim can tell: a runtime without the service
	// says so only at the first Recv.
	t.setLive(true)
	defer t.setLive(false)
	received := false
	for {
		env, err := stream.Recv()
		if err != nil {
			return received, err
		}
		if !received {
			received = true
			first()
		}
		if env.GetNamespace() != criNamespace || env.GetTopic() != "/tasks/start" || env.GetEvent() == nil {
			continue
		}
		url := env.GetEvent().GetTypeUrl()
		if url[strings.LastIndexByte(url, '/')+1:] != "containerd.events.TaskStart" {
			continue
		}
		var ev eventtypes.TaskStart
		if proto.Unmarshal(env.GetEvent().GetValue(), &ev) != nil || ev.GetContainerID() == "" || ev.GetPid() == 0 {
			continue
		}
		t.add(ev.GetContainerID(), ev.GetPid())
	}
}

func (t *TaskEvents) setLive(live bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.live = live
	if live {
		t.epoch++
		t.up.Set(1)
		return
	}
	t.up.Set(0)
	// What is waiting will not hear of its start on this subscription.
	for id, ch := range t.waiting {
		close(ch)
		delete(t.waiting, id)
	}
}

// add remembers a started container's pid and wakes whoever waits for it.
func (t *TaskEvents) add(id string, pid uint32) {
	t.mu.Lock()
	defer t.mu.Unlock()
	slot := t.next % maxTaskStarts
	if old := t.ring[slot]; old != "" {
		if s, ok := t.started[old]; ok && s.seq == t.next-maxTaskStarts {
			delete(t.started, old)
		}
	}
	t.ring[slot] = id
	t.started[id] = startedTask{pid: pid, seq: t.next}
	t.next++
	if ch, ok := t.waiting[id]; ok {
		close(ch)
		delete(t.waiting, id)
	}
}

// startWatch is what TaskEvents knew when a StartContainer request was
// held: the subscription open then (0: none), and how many starts it had
// seen, so that an event older than the request is never taken for it.
type startWatch struct {
	epoch uint64
	seq   int
}

// watch is taken when a StartContainer request is held.
func (t *TaskEvents) watch() startWatch {
	if t == nil {
		return startWatch{}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	w := startWatch{seq: t.next}
	if t.live {
		w.epoch = t.epoch
	}
	return w
}

// pid returns the process id of container id from a start event that
// arrived after w was taken, waiting up to eventWait for it while the
// subscription open then still is. False: ask the runtime (and count it).
func (t *TaskEvents) pid(ctx context.Context, id string, w startWatch) (int, bool) {
	if t == nil {
		return 0, false
	}
	t.mu.Lock()
	if pid, ok := t.takeLocked(id, w); ok {
		t.mu.Unlock()
		t.count(pidFromEvent)
		return pid, true
	}
	if w.epoch == 0 || !t.live || t.epoch != w.epoch {
		// Opened after the start began, or closed since: the event may
		// have been missed.
		t.mu.Unlock()
		return 0, false
	}
	ch, ok := t.waiting[id]
	if !ok {
		ch = make(chan struct{})
		t.waiting[id] = ch
	}
	t.mu.Unlock()

	timer := time.NewTimer(eventWait)
	defer timer.Stop()
	select {
	case <-ch:
	case <-timer.C:
	case <-ctx.Done():
	}
	t.mu.Lock()
	pid, ok := t.takeLocked(id, w)
	if c, waiting := t.waiting[id]; waiting && c == ch {
		delete(t.waiting, id)
	}
	t.mu.Unlock()
	if !ok {
		return 0, false
	}
	t.count(pidFromAwaitedEvent)
	return pid, true
}

// forget drops what is known of id's start (its attestation asked the
// runtime instead).
func (t *TaskEvents) forget(id string) {
	if t == nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.started, id)
}

// takeLocked removes id's start and returns its pid if it arrived after w.
func (t *TaskEvents) takeLocked(id string, w startWatch) (int, bool) {
	s, ok := t.started[id]
	if !ok {
		return 0, false
	}
	delete(t.started, id)
	return int(s.pid), s.seq >= w.seq
}

// count counts where an attestation took its process id from.
func (t *TaskEvents) count(source string) {
	if t != nil {
		t.pids.WithLabelValues(source).Inc()
	}
}
