package cri

import (
	"io"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/cri/h2relay"
	"github.com/armorshim/armorshim/pss"
)

// localServicePrefix is armorshim's own gRPC health service.
const localServicePrefix = "/grpc.health.v1.Health/"

// Backends are where the proxy sends calls.
type Backends struct {
	// Runtime and Image receive the relayed calls (the same Backend when
	// the endpoints are one); Local, if not nil, serves armorshim's own
	// gRPC health service.
	Runtime, Image, Local *h2relay.Backend
	// RuntimeConn and ImageConn carry the calls armorshim makes itself
	// (Pod Security lookups, attestation).
	RuntimeConn, ImageConn grpc.ClientConnInterface
}

// Proxy decides the calls the relay holds for it.
type Proxy struct {
	backends Backends
	runtime  grpc.ClientConnInterface
	image    grpc.ClientConnInterface
	host     apparmor.Host
	policy   atomic.Pointer[apparmor.Policy]
	metrics  *Metrics
	attest   *attestor
	denials  *Denials
	learning *learning // nil: no pod may learn
	// podSecurity is nil while Pod Security is off.
	podSecurity atomic.Pointer[pss.Evaluator]
	audit       io.Writer
	// auditFailing: the last audit record could not be written.
	auditFailing atomic.Bool
	// logs bounds the lines logged for refusals and warnings.
	logs *repeatLog
}

// Option configures a Proxy.
type Option func(*Proxy)

// WithMetrics counts calls and decisions in m.
func WithMetrics(m *Metrics) Option { return func(p *Proxy) { p.metrics = m } }

// WithDenials keeps d's index of containers current: the proxy then also
// holds StartContainer, StopContainer, RemoveContainer, StopPodSandbox and
// RemovePodSandbox, and tells d what each created container is and runs
// under.
func WithDenials(d *Denials) Option { return func(p *Proxy) { p.denials = d } }

// New returns a Proxy relaying CRI v1's RuntimeService to the runtime
// backend and its ImageService to the image backend; other services are
// refused. host feeds the
// AppArmor decision; pol may be nil for the default policy.
func New(b Backends, host apparmor.Host, pol *apparmor.Policy, opts ...Option) *Proxy {
	p := &Proxy{backends: b, runtime: b.RuntimeConn, image: b.ImageConn, host: host, logs: newRepeatLog()}
	for _, o := range opts {
		o(p)
	}
	if p.learning != nil && p.denials != nil {
		p.denials.learner = p.learning.Learner
	}
	p.SetPolicy(pol)
	return p
}

// SetPolicy replaces the node policy for the calls that start after it.
func (p *Proxy) SetPolicy(pol *apparmor.Policy) {
	if pol == nil {
		pol = &apparmor.Policy{}
	}
	p.policy.Store(pol)
}

// Route is the relay's hook: it sends armorshim's own health service to the
// local backend, CRI v1's image service to the image backend and its runtime
// service to the runtime, and holds the calls armorshim decides on. Every
// other path is refused (see pathRefusal): containerd's own API would
// create containers past the checks, and a non-canonical CRI path would
// reach a CRI call undecided.
func (p *Proxy) Route(method string) (*h2relay.Backend, h2relay.Inspector) {
	switch method {
	case CreateContainerMethod:
		return p.backends.Runtime, p.inspectCreate
	case RunPodSandboxMethod:
		if p.podSecurity.Load() != nil {
			return p.backends.Runtime, p.inspectSandbox
		}
	case StartContainerMethod:
		if p.attest != nil || p.denials != nil {
			return p.backends.Runtime, p.inspectStart
		}
	case stopContainerMethod, removeContainerMethod, stopPodSandboxMethod, removePodSandboxMethod:
		// Held only while denials are attributed: they keep its index current.
		if p.denials != nil {
			return p.backends.Runtime, p.inspectLifecycle(method)
		}
	}
	if p.backends.Local != nil && isLocalMethod(method) {
		return p.backends.Local, nil
	}
	if st := pathRefusal(method); st != nil {
		return p.refusePath(st), nil
	}
	if isImageMethod(method) {
		return p.backends.Image, nil
	}
	return p.backends.Runtime, nil
}

// isLocalMethod reports whether method is a method of armorshim's own health
// service.
func isLocalMethod(method string) bool {
	m, ok := strings.CutPrefix(method, localServicePrefix)
	return ok && isMethodName(m)
}

// Done is the relay's hook for an ended call. armorshim's own health calls
// are not CRI calls and are not counted.
func (p *Proxy) Done(method string, code codes.Code, elapsed time.Duration) {
	if isLocalMethod(method) {
		return
	}
	p.metrics.observeCall(method, code, elapsed)
}

// refusal converts an error of armorshim's into the status answering a call.
func refusal(err error) h2relay.Verdict {
	return h2relay.Verdict{Status: status.Convert(err)}
}
