package cri

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/host"
)

// Containers maps a process to the container it runs in (host.Reader).
type Containers interface {
	ContainerID(pid int) (string, error)
}

// Denials attributes the kernel's AppArmor denials to containers, pods and
// namespaces, counts them and logs them at a bounded rate. It finds a
// denial's container in an index kept current from the container and
// sandbox calls the proxy relays; only a container the index does not know
// (created before armorshim started) is asked of the runtime, by a worker
// of its own with a bounded queue, so that following a log never waits on
// the runtime.
type Denials struct {
	runtime        runtimeapi.RuntimeServiceClient
	containers     Containers
	runtimeDefault string
	// learner takes the ALLOWED records of learning profiles (nil: they
	// are ignored, as every other ALLOWED record).
	learner Learner

	total    *prometheus.CounterVec
	overruns prometheus.Counter
	dropped  prometheus.Counter
	restarts *prometheus.CounterVec

	queue chan string // container IDs to ask the runtime about
	stop  context.CancelFunc
	done  chan struct{}

	mu      sync.Mutex
	idle    *sync.Cond // signalled when a lookup ends
	index   *denialIndex
	waiting map[string][]host.Denial // by the container ID looked up
	nWait   int                      // denials in waiting
	pending int                      // lookups queued or under way
	seen    recentRecords
	series  map[[5]string]bool // label sets in use, bounded
	logs    tokenBucket
}

// Bounds on memory, metric cardinality and work queued for the runtime.
const (
	maxSeries = 1000
	// maxQueuedLookups container IDs wait for a runtime lookup, and
	// maxWaitingDenials denials wait for their lookups; past either, a
	// denial is counted unattributed at once and the lookup dropped.
	maxQueuedLookups  = 128
	maxWaitingDenials = 1024
	// recordsRemembered audit record IDs are remembered, so that a record
	// read from both the kernel log and auditd's log counts once.
	recordsRemembered = 4096
	lookupTimeout     = 5 * time.Second
)

var unknownTarget = apparmor.Target{Namespace: "unknown", Pod: "unknown", Container: "unknown"}

// NewDenials returns an attributor asking the runtime at conn for the
// names of containers it was not told about. runtimeDefault is the profile
// the runtime applies for runtime/default (containerd:
// cri-containerd.apparmor.d). Close stops its lookups.
func NewDenials(conn grpc.ClientConnInterface, containers Containers, reg prometheus.Registerer, runtimeDefault string) *Denials {
	ctx, stop := context.WithCancel(context.Background())
	d := &Denials{
		runtime:        runtimeapi.NewRuntimeServiceClient(conn),
		containers:     containers,
		runtimeDefault: runtimeDefault,
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "armorshim_apparmor_denials_total",
			Help: "AppArmor denials in the kernel log or auditd's log, by namespace, pod, container, profile and operation (past 1000 label sets, namespace/pod/container are \"other\").",
		}, []string{"namespace", "pod", "container", "profile", "operation"}),
		overruns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "armorshim_kernel_log_overruns_total",
			Help: "Times the kernel log overwrote records before armorshim read them.",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "armorshim_denial_lookups_dropped_total",
			Help: "Denials counted as unknown because too many container lookups were already waiting for the runtime.",
		}),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "armorshim_denial_log_restarts_total",
			Help: "Times a log followed for denials was opened again after it failed or ended, by log (kmsg, audit).",
		}, []string{"log"}),
		queue:   make(chan string, maxQueuedLookups),
		stop:    stop,
		done:    make(chan struct{}),
		index:   newDenialIndex(),
		waiting: map[string][]host.Denial{},
		seen:    newRecentRecords(recordsRemembered),
		series:  map[[5]string]bool{},
		logs:    newTokenBucket(logsPerSecond, logBurst),
	}
	d.idle = sync.NewCond(&d.mu)
	reg.MustRegister(d.total, d.overruns, d.dropped, d.restarts)
	go d.lookups(ctx)
	return d
}

// Close stops the runtime lookups; denials waiting for them are counted
// unattributed.
func (d *Denials) Close() {
	d.stop()
	<-d.done
}

// created records a container the runtime created, with the profile it
// will run under ("" if none or unknown).
func (d *Denials) created(id, sandbox string, t apparmor.Target, profile string) {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.index.put(id, sandbox, t, profile, false, true)
}

// lifecycle applies one relayed container or sandbox call that succeeded.
func (d *Denials) lifecycle(method, id string) {
	if d == nil || id == "" {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	switch method {
	case StartContainerMethod:
		d.index.started(id)
	case stopContainerMethod:
		d.index.stopped(id)
	case removeContainerMethod:
		d.index.remove(id)
	case stopPodSandboxMethod:
		d.index.sandboxStopped(id)
	case removePodSandboxMethod:
		d.index.sandboxRemoved(id)
	}
}

// attested records what attestation read of a started container: the
// profile its process runs under and, for a container created before
// armorshim started, its names from the runtime's copy of its config.
func (d *Denials) attested(id string, t apparmor.Target, profile string) {
	if d == nil {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if c, ok := d.index.get(id); ok && c.named {
		d.index.put(id, c.sandbox, c.target, profile, true, true)
		return
	}
	d.index.put(id, "", t, profile, true, true) // created before armorshim started
}

// Run follows r (the kernel log, or auditd's) until ctx ends or r fails
// or ends.
func (d *Denials) Run(ctx context.Context, r io.Reader) error {
	_, err := d.run(ctx, r)
	return err
}

// run is Run that also tells how many records it read.
func (d *Denials) run(ctx context.Context, r io.Reader) (uint64, error) {
	var stats host.FollowStats
	var seen uint64
	err := host.FollowDenials(ctx, r, &stats, func(den host.Denial) {
		if stats.Overruns > seen {
			d.overruns.Add(float64(stats.Overruns - seen))
			seen = stats.Overruns
		}
		d.Handle(ctx, den)
	})
	if stats.Overruns > seen {
		d.overruns.Add(float64(stats.Overruns - seen))
	}
	return stats.Records, err
}

// Follow reads the denials of a log until ctx ends: open opens the log
// (what it returns must also stop reading when the context it is given
// ends), and whenever the log fails, ends or cannot be opened, Follow
// counts a restart of it, waits wait(ctx, failures) — failures counts the
// failures in a row, reset by a run that read records — and opens it
// again. A nil wait backs off from 1s to a minute. name labels the log in
// metrics and logs.
func (d *Denials) Follow(ctx context.Context, name, path string, open func(context.Context) (io.ReadCloser, error), wait func(ctx context.Context, failures int) error) {
	if wait == nil {
		wait = backoffWait
	}
	failures := 0
	for {
		runCtx, cancel := context.WithCancel(ctx)
		r, err := open(runCtx)
		if err == nil {
			var records uint64
			records, err = d.run(runCtx, r)
			if err == nil {
				err = io.EOF
			}
			if records > 0 {
				failures = 0
			}
			r.Close()
		}
		cancel()
		if ctx.Err() != nil {
			return
		}
		failures++
		if failures == 1 {
			klog.ErrorS(err, "Following a log for AppArmor denials failed; opening it again with backoff", "log", name, "path", path)
		}
		if err := wait(ctx, failures); err != nil || ctx.Err() != nil {
			return
		}
		d.restarts.WithLabelValues(name).Inc()
	}
}

// restartDelay is the pause before reopening a log after failures in a row.
func restartDelay(failures int) time.Duration {
	delay := time.Second
	for i := 1; i < failures && delay < time.Minute; i++ {
		delay *= 2
	}
	return min(delay, time.Minute)
}

func backoffWait(ctx context.Context, failures int) error {
	t := time.NewTimer(restartDelay(failures))
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Handle attributes and records one denial. A record already seen (in the
// other log) is skipped.
func (d *Denials) Handle(ctx context.Context, den host.Denial) {
	if den.Allowed {
		if d.learner != nil {
			if _, err := d.learner.Record(den.Profile, den.Access(), time.Now()); err != nil {
				klog.ErrorS(err, "Recording what a learning profile allowed failed", "profile", den.Profile)
			}
		}
		return
	}
	id, err := d.containers.ContainerID(den.Pid)
	d.mu.Lock()
	if !d.seen.add(den.Record) {
		d.mu.Unlock()
		return
	}
	if err == nil && id != "" {
		if c, ok := d.index.get(id); ok {
			if c.named && c.profile == "" {
				// Running before armorshim started: its process is confined by den.Profile.
				d.index.put(id, c.sandbox, c.target, den.Profile, true, true)
			}
			d.mu.Unlock()
			if !c.named {
				d.record(den, unknownTarget, "none") // not a CRI container
				return
			}
			d.record(den, c.target, "cgroup")
			return
		}
		if d.wait(id, den) {
			d.mu.Unlock()
			return
		}
		d.mu.Unlock()
		d.dropped.Inc()
		d.record(den, unknownTarget, "none")
		return
	}
	c, ok := d.index.only(den.Profile)
	d.mu.Unlock()
	if ok {
		d.record(den, c.target, "profile")
		return
	}
	d.record(den, unknownTarget, "none")
}

// wait queues den until the runtime tells the names of container id, and
// reports false if the queue is full. d.mu is held.
func (d *Denials) wait(id string, den host.Denial) bool {
	if d.nWait >= maxWaitingDenials {
		return false
	}
	if dens, queued := d.waiting[id]; queued {
		d.waiting[id] = append(dens, den)
		d.nWait++
		return true
	}
	select {
	case d.queue <- id:
	default:
		return false
	}
	d.waiting[id] = []host.Denial{den}
	d.nWait++
	d.pending++
	return true
}

// lookups asks the runtime for the containers queued, one at a time, and
// records the denials that waited for them.
func (d *Denials) lookups(ctx context.Context) {
	defer close(d.done)
	for {
		select {
		case <-ctx.Done():
			d.mu.Lock()
			waiting := d.waiting
			d.waiting, d.nWait, d.pending = map[string][]host.Denial{}, 0, 0
			d.idle.Broadcast()
			d.mu.Unlock()
			for _, dens := range waiting {
				for _, den := range dens {
					d.record(den, unknownTarget, "none")
				}
			}
			return
		case id := <-d.queue:
			t, known := d.lookup(ctx, id)
			how := "cgroup"
			d.mu.Lock()
			dens := d.waiting[id]
			if known {
				profile := "" // the first denial says what confines it
				if len(dens) > 0 {
					profile = dens[0].Profile
				}
				d.index.put(id, "", t, profile, true, true)
			} else {
				how = "none" // remembered: its next denials ask nothing
				d.index.put(id, "", unknownTarget, "", false, false)
			}
			delete(d.waiting, id)
			d.nWait -= len(dens)
			d.mu.Unlock()
			for _, den := range dens {
				d.record(den, t, how)
			}
			d.mu.Lock()
			d.pending--
			d.idle.Broadcast()
			d.mu.Unlock()
		}
	}
}

// lookup asks the runtime for a container's names.
func (d *Denials) lookup(ctx context.Context, id string) (apparmor.Target, bool) {
	ctx, cancel := context.WithTimeout(ctx, lookupTimeout)
	defer cancel()
	resp, err := d.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		klog.V(2).InfoS("Cannot attribute a denial: no container status", "containerID", id, "err", err)
		return unknownTarget, false
	}
	return targetOfStatus(resp.GetStatus()), true
}

// targetOfConfig reads the kubelet's labels of a container's config (nil:
// no names).
func targetOfConfig(cfg *runtimeapi.ContainerConfig) apparmor.Target {
	return targetOfLabels(cfg.GetLabels(), cfg.GetMetadata().GetName())
}

// targetOfStatus reads the kubelet's labels of a container's status.
func targetOfStatus(st *runtimeapi.ContainerStatus) apparmor.Target {
	return targetOfLabels(st.GetLabels(), st.GetMetadata().GetName())
}

// targetOfLabels names a container by the kubelet's labels, or by name
// when they do not.
func targetOfLabels(l map[string]string, name string) apparmor.Target {
	t := apparmor.Target{Namespace: l["io.kubernetes.pod.namespace"], Pod: l["io.kubernetes.pod.name"], Container: l["io.kubernetes.container.name"]}
	if t.Container == "" {
		t.Container = name
	}
	return t
}

// record counts and logs one attributed denial.
func (d *Denials) record(den host.Denial, t apparmor.Target, how string) {
	labels := [5]string{t.Namespace, t.Pod, t.Container, den.Profile, den.Operation}
	d.mu.Lock()
	if !d.series[labels] {
		if len(d.series) >= maxSeries {
			labels[0], labels[1], labels[2] = "other", "other", "other"
		}
		d.series[labels] = true
	}
	log, dropped := d.logs.allow(time.Now())
	d.mu.Unlock()
	d.total.WithLabelValues(labels[:]...).Inc()
	if log {
		klog.InfoS("AppArmor denial", "pod", klog.KRef(t.Namespace, t.Pod), "container", t.Container,
			"profile", den.Profile, "operation", den.Operation, "name", den.Name, "comm", den.Comm,
			"pid", den.Pid, "attributedBy", how, "suppressedBefore", dropped)
	}
}

// recentRecords remembers the last n audit record IDs.
type recentRecords struct {
	ids  map[string]struct{}
	ring []string
	next int
}

func newRecentRecords(n int) recentRecords {
	return recentRecords{ids: make(map[string]struct{}, n), ring: make([]string, n)}
}

// add reports whether id is new; "" always is.
func (r *recentRecords) add(id string) bool {
	if id == "" {
		return true
	}
	if _, seen := r.ids[id]; seen {
		return false
	}
	if old := r.ring[r.next]; old != "" {
		delete(r.ids, old)
	}
	r.ring[r.next] = id
	r.ids[id] = struct{}{}
	r.next = (r.next + 1) % len(r.ring)
	return true
}

// profileOf returns the profile a container created by req with profile
// prof runs under, as the kernel names it in a denial; "" for none.
func (d *Denials) profileOf(prof apparmor.Profile, req *runtimeapi.CreateContainerRequest, pol *apparmor.Policy) string {
	if pol == nil {
		pol = &apparmor.Policy{RuntimeDefault: d.runtimeDefault}
	}
	exp, ok := apparmor.Expect(prof, req.GetConfig().GetLinux().GetSecurityContext().GetPrivileged(), pol)
	if !ok || exp.Profile == apparmor.UnconfinedRef {
		return ""
	}
	return exp.Profile
}
