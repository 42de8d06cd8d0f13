package cri

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/cri/h2relay"
)

// Attestation modes.
const (
	AttestEnforce = "enforce" // a mismatch stops the container and fails StartContainer
	AttestReport  = "report"  // a mismatch is logged and counted only
)

// Processes reads the confinement of a started container's process
// (host.Reader).
type Processes interface {
	StartedConfinement(pid int) (string, error)
}

// Attestation configures start attestation. The runtime's default profile
// is the policy's (apparmor.Policy.RuntimeDefault).
type Attestation struct {
	Mode      string
	Processes Processes
	// Events, if not nil, gives the process ids of started containers
	// without a ContainerStatus call (see TaskEvents).
	Events *TaskEvents
}

// WithAttestation checks, when StartContainer succeeds and before it
// returns, that the container's process runs under the confinement decided
// at CreateContainer.
func WithAttestation(a Attestation) Option {
	return func(p *Proxy) { p.attest = &attestor{Attestation: a, expect: map[string]apparmor.Expectation{}} }
}

// maxRemembered bounds the expectations of created, not yet started
// containers; past it one is forgotten and derived again from the runtime.
const maxRemembered = 10000

type attestor struct {
	Attestation
	mu     sync.Mutex
	expect map[string]apparmor.Expectation
}

// remember keeps what container id must run under once started; an empty
// Expectation says there is nothing to expect.
func (a *attestor) remember(id string, p apparmor.Profile, req *runtimeapi.CreateContainerRequest, pol *apparmor.Policy) {
	if id == "" {
		return
	}
	exp, _ := apparmor.Expect(p, req.GetConfig().GetLinux().GetSecurityContext().GetPrivileged(), pol)
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.expect) >= maxRemembered {
		for k := range a.expect { // forget an arbitrary one: derived again at its start
			delete(a.expect, k)
			break
		}
	}
	a.expect[id] = exp
}

func (a *attestor) take(id string) (apparmor.Expectation, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	exp, ok := a.expect[id]
	delete(a.expect, id)
	return exp, ok
}

// inspectStart holds StartContainer's answer: once the runtime started the
// container, its confinement is attested before the caller hears of it.
// Without attestation it only tells the denial index that the container
// runs.
func (p *Proxy) inspectStart(_ context.Context, in []byte) h2relay.Verdict {
	req := &runtimeapi.StartContainerRequest{}
	if err := proto.Unmarshal(in, req); err != nil {
		if p.attest == nil {
			return h2relay.Verdict{} // the runtime answers it
		}
		return refusal(status.Errorf(codes.InvalidArgument, "armorshim: cannot decode StartContainerRequest: %v", err))
	}
	var w startWatch // the task events known before the start
	if p.attest != nil {
		w = p.attest.Events.watch()
	}
	return h2relay.Verdict{Response: func(ctx context.Context, _ []byte, st *status.Status) *status.Status {
		if st.Code() != codes.OK {
			return nil
		}
		p.denials.lifecycle(StartContainerMethod, req.ContainerId)
		if p.attest == nil {
			return nil
		}
		return p.attestStarted(ctx, req.ContainerId, w)
	}}
}

// Attestation outcomes, the values of the metric's outcome label.
const (
	// outcomeAttested: the process runs under the expected confinement.
	outcomeAttested = "attested"
	// outcomeMismatch: it does not; enforce mode stops the container.
	outcomeMismatch = "mismatch"
	// outcomeUnverified: attestation applies but the container could not
	// be read (no status, no process, the process gone, its label
	// unreadable). The container is never stopped for it.
	outcomeUnverified = "unverified"
	// outcomeSkipped: attestation does not apply: AppArmor is off on the
	// host, or nothing is known to expect.
	outcomeSkipped = "skipped"
)

// attestation is what attesting one container found.
type attestation struct {
	outcome string
	// detail is the mismatch, why the container was unverified or
	// skipped, or, attested, why it is confined more than decided; label
	// is the process's label when read.
	detail, label string
}

// attestStarted attests a started container; in enforce mode a mismatch
// stops it and becomes StartContainer's answer.
func (p *Proxy) attestStarted(ctx context.Context, id string, w startWatch) *status.Status {
	a := p.attestStart(ctx, id, w)
	p.metrics.observeAttestation(a.outcome)
	switch a.outcome {
	case outcomeAttested:
		if a.detail != "" {
			p.logs.InfoS("Container confined more than decided", "containerID", id, "confinement", a.label, "reason", a.detail)
			return nil
		}
		klog.V(2).InfoS("Container confinement attested", "containerID", id, "confinement", a.label)
		return nil
	case outcomeSkipped:
		klog.V(2).InfoS("Container confinement not attested", "containerID", id, "reason", a.detail)
		return nil
	case outcomeUnverified:
		p.logs.InfoS("Container confinement unverified", "containerID", id, "reason", a.detail)
		return nil
	}
	p.logs.InfoS("Container confinement mismatch", "containerID", id, "mode", p.attest.Mode, "mismatch", a.detail)
	if p.attest.Mode != AttestEnforce {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	if _, err := runtimeapi.NewRuntimeServiceClient(p.runtime).StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id}); err != nil {
		klog.ErrorS(err, "Stopping the mismatched container failed", "containerID", id)
	}
	return status.New(codes.FailedPrecondition, "Blocked: AppArmor confinement mismatch: "+a.detail)
}

// attestStart compares the started container's confinement with what was
// decided for it. The process id comes from the task start event that
// arrived after w, else from a verbose ContainerStatus, which also gives
// the config of a container created before armorshim started.
func (p *Proxy) attestStart(ctx context.Context, id string, w startWatch) attestation {
	exp, known := p.attest.take(id)
	snap := p.host.Snapshot()
	switch {
	case snap.Err != nil:
		return attestation{outcome: outcomeUnverified, detail: "cannot read the host's AppArmor state: " + snap.Err.Error()}
	case !snap.Enabled:
		return attestation{outcome: outcomeSkipped, detail: "AppArmor is not enabled on the host"}
	case known && exp.Profile == "":
		return attestation{outcome: outcomeSkipped, detail: noRuntimeDefault}
	}
	var pid int
	var cfg *runtimeapi.ContainerConfig
	fromEvent := false
	if known {
		pid, fromEvent = p.attest.Events.pid(ctx, id, w)
	} else {
		p.attest.Events.forget(id)
	}
	if !fromEvent {
		p.attest.Events.count(pidFromStatus)
		info, err := containerInfoJSON(ctx, p.runtime, id)
		if err != nil {
			return attestation{outcome: outcomeUnverified, detail: "no container status: " + err.Error()}
		}
		if info == nil {
			return attestation{outcome: outcomeUnverified, detail: "the runtime's verbose container status has no info (it is not containerd's)"}
		}
		// Created before armorshim started (not known): derive the
		// expectation from the runtime's copy of the container config.
		if pid, cfg, err = parseInfo(info, !known); err != nil {
			return attestation{outcome: outcomeUnverified, detail: "cannot read the runtime's container info: " + err.Error()}
		}
		if !known {
			if a, ok := p.expectFromConfig(cfg, &exp); !ok {
				return a
			}
		}
	}
	if pid <= 0 {
		return attestation{outcome: outcomeUnverified, detail: "the runtime reports no process: the container has already exited"}
	}
	label, err := p.attest.Processes.StartedConfinement(pid)
	switch {
	case errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ESRCH):
		return attestation{outcome: outcomeUnverified, detail: fmt.Sprintf("process %d is gone: the container has already exited", pid)}
	case err != nil:
		return attestation{outcome: outcomeUnverified, detail: fmt.Sprintf("cannot read the AppArmor label of process %d: %v", pid, err)}
	}
	if mismatch := exp.Check(label, snap.Profiles); mismatch != "" {
		return attestation{outcome: outcomeMismatch, detail: mismatch, label: label}
	}
	p.denials.attested(id, targetOfConfig(cfg), apparmor.LabelName(label))
	a := attestation{outcome: outcomeAttested, label: label}
	if exp.MoreConfined(label, snap.Profiles) {
		a.detail = "decided unconfined, but a profile confines it (a host profile attached by path to its command): counted as attested, not stopped"
	}
	return a
}

// noRuntimeDefault says why a container on the runtime's default profile is
// not attested.
const noRuntimeDefault = "the runtime's default profile is not known (attestation.runtimeDefaultProfile is empty)"

// expectFromConfig sets *exp from the runtime's copy of the container
// config; when it cannot, it returns the outcome instead and false.
func (p *Proxy) expectFromConfig(cfg *runtimeapi.ContainerConfig, exp *apparmor.Expectation) (attestation, bool) {
	if cfg == nil {
		return attestation{outcome: outcomeUnverified, detail: "the runtime's container info has no config"}, false
	}
	prof, _, err := apparmor.Resolve(&runtimeapi.CreateContainerRequest{Config: cfg})
	if err != nil {
		return attestation{outcome: outcomeUnverified, detail: "the runtime's copy of the container config: " + err.Error()}, false
	}
	e, ok := apparmor.Expect(prof, cfg.GetLinux().GetSecurityContext().GetPrivileged(), p.policy.Load())
	if !ok {
		return attestation{outcome: outcomeSkipped, detail: noRuntimeDefault}, false
	}
	*exp = e
	return attestation{}, true
}
