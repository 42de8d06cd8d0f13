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
// namespaces, counts them and logs them at a bounded rate.
type Denials struct {
	runtime    runtimeapi.RuntimeServiceClient
	containers Containers

	total    *prometheus.CounterVec
	overruns prometheus.Counter

	mu      sync.Mutex
	targets map[string]apparmor.Target // container ID -> names, bounded
	series  map[[5]string]bool         // label sets in use, bounded
	byProf  map[string]map[string]bool // profile -> IDs of containers confined by it
	logs    tokenBucket
}

// Bounds on memory and metric cardinality.
const (
	maxTargets = 4096
	maxSeries  = 1000
)

// NewDenials returns an attributor asking the runtime at conn for
// container names.
func NewDenials(conn grpc.ClientConnInterface, containers Containers, reg prometheus.Registerer) *Denials {
	d := &Denials{
		runtime:    runtimeapi.NewRuntimeServiceClient(conn),
		containers: containers,
		total: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "armorshim_apparmor_denials_total",
			Help: "AppArmor denials in the kernel log, by namespace, pod, container, profile and operation (past 1000 label sets, namespace/pod/container are \"other\").",
		}, []string{"namespace", "pod", "container", "profile", "operation"}),
		overruns: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "armorshim_kernel_log_overruns_total",
			Help: "Times the kernel log overwrote records before armorshim read them.",
		}),
		targets: map[string]apparmor.Target{},
		series:  map[[5]string]bool{},
		byProf:  map[string]map[string]bool{},
		logs:    newTokenBucket(logsPerSecond, logBurst),
	}
	reg.MustRegister(d.total, d.overruns)
	return d
}

// Confined records that container id runs under profile, so a denial whose
// process is already gone can still be attributed when exactly one running
// container uses that profile.
func (d *Denials) Confined(id, profile string) {
	if d == nil || id == "" || profile == "" || profile == apparmor.UnconfinedRef {
		return
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	ids := d.byProf[profile]
	if ids == nil {
		ids = map[string]bool{}
		d.byProf[profile] = ids
	}
	if len(ids) < maxTargets {
		ids[id] = true
	}
}

// Run follows r (the kernel log) until ctx ends or r fails.
func (d *Denials) Run(ctx context.Context, r io.Reader) error {
	var stats host.FollowStats
	var seen uint64
	return host.FollowDenials(ctx, r, &stats, func(den host.Denial) {
		if stats.Overruns > seen {
			d.overruns.Add(float64(stats.Overruns - seen))
			seen = stats.Overruns
		}
		d.Handle(ctx, den)
	})
}

// Handle attributes and records one denial.
func (d *Denials) Handle(ctx context.Context, den host.Denial) {
	t, how := d.attribute(ctx, den)
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

// attribute finds the container of a denial: by the process's cgroup, else
// by its profile when exactly one running container uses it.
func (d *Denials) attribute(ctx context.Context, den host.Denial) (apparmor.Target, string) {
	if id, err := d.containers.ContainerID(den.Pid); err == nil && id != "" {
		if t, ok := d.target(ctx, id); ok {
			return t, "cgroup"
		}
	}
	d.mu.Lock()
	var ids []string
	for id := range d.byProf[den.Profile] {
		ids = append(ids, id)
	}
	d.mu.Unlock()
	var found []apparmor.Target
	for _, id := range ids {
		t, running := d.running(ctx, id)
		if !running {
			d.mu.Lock()
			delete(d.byProf[den.Profile], id)
			d.mu.Unlock()
			continue
		}
		found = append(found, t)
	}
	if len(found) == 1 {
		return found[0], "profile"
	}
	return apparmor.Target{Namespace: "unknown", Pod: "unknown", Container: "unknown"}, "none"
}

// target returns the names of container id, from the cache or the runtime.
func (d *Denials) target(ctx context.Context, id string) (apparmor.Target, bool) {
	d.mu.Lock()
	t, ok := d.targets[id]
	d.mu.Unlock()
	if ok {
		return t, true
	}
	t, running := d.running(ctx, id)
	if !running && t.Container == "" {
		return t, false
	}
	d.mu.Lock()
	if len(d.targets) >= maxTargets {
		for k := range d.targets { // evict an arbitrary entry
			delete(d.targets, k)
			break
		}
	}
	d.targets[id] = t
	d.mu.Unlock()
	return t, true
}

// running asks the runtime for a container's names and whether it runs.
func (d *Denials) running(ctx context.Context, id string) (apparmor.Target, bool) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := d.runtime.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
	if err != nil {
		return apparmor.Target{}, false
	}
	st := resp.GetStatus()
	l := st.GetLabels()
	t := apparmor.Target{Namespace: l["io.kubernetes.pod.namespace"], Pod: l["io.kubernetes.pod.name"], Container: l["io.kubernetes.container.name"]}
	if t.Container == "" {
		t.Container = st.GetMetadata().GetName()
	}
	return t, st.GetState() == runtimeapi.ContainerState_CONTAINER_RUNNING
}
