package cri

import (
	"context"
	"errors"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/host"
)

// Learner loads learning profiles and keeps what they allowed
// (host.LearningStore).
type Learner interface {
	Start(ctx context.Context, l apparmor.Learning, t apparmor.Target) error
	Stop(profile string) error
	Record(label string, a apparmor.Access, at time.Time) (bool, error)
}

// WithLearning lets pods of the namespaces the policy lists learn a profile
// (apparmor.LearnAnnotation): their containers run under learning profiles
// l loads, and the kernel's ALLOWED records of those profiles go to l. It
// needs WithDenials (the kernel log is followed there) and holds
// RemoveContainer to remove a container's learning profile.
func WithLearning(l Learner) Option {
	return func(p *Proxy) {
		p.learning = &learning{Learner: l, byContainer: map[string]learningContainer{}, loading: map[string]time.Time{}}
	}
}

type learning struct {
	Learner
	mu          sync.Mutex
	byContainer map[string]learningContainer
	// loading: learning profiles loaded for a CreateContainer whose answer
	// has not come back (by when they were loaded). An answer the relay
	// never gets (the call aborted) would leave one loaded for good: past
	// orphanAfter it is removed.
	loading map[string]time.Time
}

// orphanAfter is how long a learning profile may wait for its container.
const orphanAfter = 5 * time.Minute

// learningContainer is a container that runs under a learning profile.
type learningContainer struct {
	profile, sandbox string
}

// maxLearningContainers bounds byContainer (the store bounds the profiles
// loaded at once far below it).
const maxLearningContainers = 4096

// startLearning loads the learning profile of a container about to be
// created, or refuses it.
func (p *Proxy) startLearning(ctx context.Context, l apparmor.Learning, req *runtimeapi.CreateContainerRequest) error {
	t := apparmor.TargetOf(req)
	if p.learning == nil || p.denials == nil {
		return status.Errorf(codes.PermissionDenied, "Forbidden: %s: this node's armorshim does not follow the kernel log (denials), so it cannot learn", apparmor.LearnAnnotation)
	}
	if snap := p.host.Snapshot(); snap.Err != nil || !snap.Enabled {
		return status.Errorf(codes.FailedPrecondition, "Blocked: Cannot enforce AppArmor: AppArmor is not enabled on the host, so the pod cannot learn profile %q", l.Name)
	}
	p.learning.sweep()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := p.learning.Start(ctx, l, t); err != nil {
		if errors.Is(err, host.ErrTooManyLearning) {
			return status.Errorf(codes.ResourceExhausted, "Forbidden: %s: %v", apparmor.LearnAnnotation, err)
		}
		return status.Errorf(codes.Unavailable, "Blocked: cannot load the learning profile %q: %v", l.Profile.Name, err)
	}
	p.learning.mu.Lock()
	p.learning.loading[l.Profile.Name] = time.Now()
	p.learning.mu.Unlock()
	p.logs.InfoS("Container learning a profile", "pod", klog.KRef(t.Namespace, t.Pod), "container", t.Container,
		"profile", l.Name, "learningProfile", l.Profile.Name)
	return nil
}

// created remembers a learning container's profile, to remove it with the
// container (RemoveContainer) or its pod (RemovePodSandbox removes the
// containers left in it).
func (l *learning) created(id, profile, sandbox string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.byContainer) >= maxLearningContainers {
		for k := range l.byContainer {
			delete(l.byContainer, k)
			break
		}
	}
	l.byContainer[id] = learningContainer{profile: profile, sandbox: sandbox}
	delete(l.loading, profile)
}

// sweep removes the learning profiles whose CreateContainer never came
// back (see loading).
func (l *learning) sweep() {
	var orphans []string
	l.mu.Lock()
	for profile, at := range l.loading {
		if time.Since(at) > orphanAfter {
			orphans = append(orphans, profile)
			delete(l.loading, profile)
		}
	}
	l.mu.Unlock()
	for _, profile := range orphans {
		l.abandon(profile)
	}
}

// abandon removes a learning profile loaded for a container the runtime
// did not create, unless a container created earlier (the same pod,
// container and attempt) runs under it.
func (l *learning) abandon(profile string) {
	l.mu.Lock()
	delete(l.loading, profile)
	for _, c := range l.byContainer {
		if c.profile == profile {
			l.mu.Unlock()
			return
		}
	}
	l.mu.Unlock()
	if err := l.Stop(profile); err != nil {
		klog.ErrorS(err, "Removing a learning profile failed", "learningProfile", profile)
	}
}

// removed removes the learning profiles of a removed container, or of the
// containers of a removed sandbox, from the kernel.
func (l *learning) removed(method, id string) {
	var gone map[string]string // container ID -> profile
	l.mu.Lock()
	for cid, c := range l.byContainer {
		if method == removeContainerMethod && cid == id || method == removePodSandboxMethod && c.sandbox == id {
			if gone == nil {
				gone = map[string]string{}
			}
			gone[cid] = c.profile
			delete(l.byContainer, cid)
		}
	}
	l.mu.Unlock()
	for cid, profile := range gone {
		if err := l.Stop(profile); err != nil {
			klog.ErrorS(err, "Removing a learning profile failed", "containerID", cid, "learningProfile", profile)
			continue
		}
		klog.InfoS("Learning profile removed with its container", "containerID", cid, "learningProfile", profile)
	}
}
