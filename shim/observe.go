package shim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/host"
	"google.golang.org/grpc/metadata"
)

// ProbeMetadataKey marks armorshim's backend probes (CRI Version calls), so
// that they can be told from the kubelet's calls.
const ProbeMetadataKey = "armorshim-probe"

// RuntimeHealthService is the health service name that follows whether the
// runtime backend answers; "" follows armorshim itself.
const RuntimeHealthService = "runtime.v1.RuntimeService"

// observer holds armorshim's own metrics and health state.
type observer struct {
	reg       *prometheus.Registry
	health    *health.Server
	connected *prometheus.GaugeVec
	answering *prometheus.GaugeVec
}

func newObserver(h *host.Reader) *observer {
	o := &observer{
		reg:    prometheus.NewRegistry(),
		health: health.NewServer(),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "armorshim_backend_connected",
			Help: "1 while armorshim's connection to the backend is established, by backend (runtime, image); a frozen backend stays connected: see armorshim_backend_answering.",
		}, []string{"backend"}),
		answering: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "armorshim_backend_answering",
			Help: "1 while the backend is connected and answered armorshim's last probe (a CRI Version call) within backendProbe.timeout, by backend (runtime, image); the runtime's health status follows it.",
		}, []string{"backend"}),
	}
	o.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		o.connected,
		o.answering,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "armorshim_apparmor_profiles_loaded",
			Help: "AppArmor profiles loaded on the host (-1 when AppArmor is off or unreadable).",
		}, func() float64 {
			snap := h.Snapshot()
			if snap.Err != nil || !snap.Enabled {
				return -1
			}
			return float64(len(snap.Profiles))
		}),
	)
	o.health.SetServingStatus(RuntimeHealthService, healthpb.HealthCheckResponse_NOT_SERVING)
	return o
}

// backendState is what armorshim knows of one backend.
type backendState struct {
	name    string
	service string // the health service that follows it, if any
	timeout time.Duration

	mu        sync.Mutex
	ready     bool // the connection is established
	answering bool // the last probe since then was answered in time
	serving   bool // whether it served when last logged
	published bool // whether anything was logged yet
}

// follow keeps a backend's gauges and health status until ctx ends: the
// backend serves while its connection is established and it answered the
// last probe within the timeout. A connection that is lost makes it stop
// serving at once; one that comes back is probed at once.
func (o *observer) follow(ctx context.Context, backend string, conn *grpc.ClientConn, healthService string, probe BackendProbeConfig) {
	b := &backendState{name: backend, service: healthService, timeout: time.Duration(probe.Timeout)}
	kick := make(chan struct{}, 1)
	go o.watch(ctx, b, conn, kick)
	client := runtimeapi.NewRuntimeServiceClient(conn)
	next := time.NewTimer(0)
	defer next.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-next.C:
		case <-kick:
		}
		pctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(ctx, ProbeMetadataKey, "1"), b.timeout)
		_, err := client.Version(pctx, &runtimeapi.VersionRequest{})
		cancel()
		if ctx.Err() != nil {
			return
		}
		o.probed(b, err)
		next.Reset(time.Duration(probe.Interval))
	}
}

// answered reports whether a probe got an answer: any status the backend
// sends counts (an image service may not implement Version); no answer in
// time or no connection does not.
func answered(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
		return false
	}
	return true
}

// watch follows a backend connection's state until ctx ends.
func (o *observer) watch(ctx context.Context, b *backendState, conn *grpc.ClientConn, kick chan<- struct{}) {
	for {
		st := conn.GetState()
		ready := st == connectivity.Ready
		b.mu.Lock()
		b.ready = ready
		b.answering = false // until a probe on this connection says otherwise
		o.publish(b, false, nil)
		b.mu.Unlock()
		if ready {
			select {
			case kick <- struct{}{}:
			default:
			}
		}
		klog.V(2).InfoS("Backend connection", "backend", b.name, "state", st.String())
		if !conn.WaitForStateChange(ctx, st) {
			return
		}
	}
}

func (o *observer) probed(b *backendState, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.answering = answered(err)
	o.publish(b, true, err)
}

// publish sets the gauges and the health status (b.mu held) and logs when
// whether the backend serves changes; before the first probe nothing is
// known yet. err is the probe's, if probed.
func (o *observer) publish(b *backendState, probed bool, err error) {
	serving := b.ready && b.answering
	o.connected.WithLabelValues(b.name).Set(gauge(b.ready))
	o.answering.WithLabelValues(b.name).Set(gauge(serving))
	if b.service != "" {
		hs := healthpb.HealthCheckResponse_NOT_SERVING
		if serving {
			hs = healthpb.HealthCheckResponse_SERVING
		}
		o.health.SetServingStatus(b.service, hs)
	}
	if b.published && serving == b.serving || !b.published && !probed {
		return
	}
	switch {
	case serving:
		klog.InfoS("Backend answers", "backend", b.name)
	case !probed:
		klog.InfoS("Backend connection lost", "backend", b.name)
	default:
		klog.InfoS("Backend does not answer", "backend", b.name, "timeout", b.timeout, "err", err)
	}
	b.serving, b.published = serving, true
}

func gauge(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// serveMetrics serves /metrics on a loopback address until ctx ends.
func (o *observer) serveMetrics(ctx context.Context, addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics address: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.ErrorS(err, "Metrics server stopped")
		}
	}()
	klog.InfoS("Serving metrics", "address", "http://"+l.Addr().String()+"/metrics")
	return nil
}

// checkLoopback accepts only host:port addresses on the loopback interface.
func checkLoopback(addr string) error {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if h == "localhost" {
		return nil
	}
	if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("%q is not a loopback address: metrics are served on 127.0.0.1 or [::1] only", addr)
}
