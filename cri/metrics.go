package cri

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
)

// Metrics counts the proxy's calls and decisions. Method labels are bounded:
// methods cri-api does not know are counted as "unknown".
type Metrics struct {
	pss       *podSecurityMetrics
	calls     *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	decisions *prometheus.CounterVec
	dryRuns   *prometheus.CounterVec
	attests   *prometheus.CounterVec
}

// NewMetrics registers the proxy's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "armorshim_cri_requests_total",
			Help: "CRI calls handled, by full method name and gRPC status code.",
		}, []string{"method", "code"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "armorshim_cri_request_duration_seconds",
			Help:    "Time from receiving a CRI call to its end, by method (streams: their whole life).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10, 60},
		}, []string{"method"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "armorshim_create_container_decisions_total",
			Help: "CreateContainer AppArmor decisions, by outcome (forwarded, refused), reason (Blocked, Forbidden, InvalidProfile) and cause (of a refusal; for a forwarded call, the profile type).",
		}, []string{"outcome", "reason", "cause"}),
		dryRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "armorshim_apparmor_policy_dry_run_total",
			Help: "CreateContainer calls forwarded that the AppArmor policy with every rule enforced would have refused, or run with its default profile, by the rule in dry run (allowedProfiles, defaultProfile, requireEnforce), its mode (warn, audit: a rule in both counts in both), and the reason (Blocked, Forbidden) and cause of the refusal (cause default: the default profile would have been applied).",
		}, []string{"rule", "mode", "reason", "cause"}),
		attests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "armorshim_start_attestations_total",
			Help: "StartContainer confinement attestations, by outcome: attested, mismatch, unverified (the container could not be read; never stopped), skipped (AppArmor off, nothing to expect).",
		}, []string{"outcome"}),
	}
	reg.MustRegister(m.calls, m.latency, m.decisions, m.dryRuns, m.attests)
	m.pss = newPodSecurityMetrics(reg)
	return m
}

func (m *Metrics) observeCall(method string, code codes.Code, d time.Duration) {
	if m == nil {
		return
	}
	if _, known := Methods[method]; !known {
		method = "unknown"
	}
	m.calls.WithLabelValues(method, code.String()).Inc()
	m.latency.WithLabelValues(method).Observe(d.Seconds())
}

func (m *Metrics) observeDecision(outcome, reason, cause string) {
	if m == nil {
		return
	}
	m.decisions.WithLabelValues(outcome, reason, cause).Inc()
}

func (m *Metrics) observeDryRun(rule, mode, reason, cause string) {
	if m == nil {
		return
	}
	m.dryRuns.WithLabelValues(rule, mode, reason, cause).Inc()
}

func (m *Metrics) observeAttestation(outcome string) {
	if m == nil {
		return
	}
	m.attests.WithLabelValues(outcome).Inc()
}
