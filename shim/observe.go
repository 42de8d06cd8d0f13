package shim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/host"
)

// RuntimeHealthService is the health service name that follows the runtime
// backend's connection; "" follows armorshim itself.
const RuntimeHealthService = "runtime.v1.RuntimeService"

// observer holds armorshim's own metrics and health state.
type observer struct {
	reg       *prometheus.Registry
	health    *health.Server
	connected *prometheus.GaugeVec
}

func newObserver(h *host.Reader) *observer {
	o := &observer{
		reg:    prometheus.NewRegistry(),
		health: health.NewServer(),
		connected: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "armorshim_backend_connected",
			Help: "1 while the backend connection is ready, by backend (runtime, image).",
		}, []string{"backend"}),
	}
	o.reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		o.connected,
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

// watch follows a backend connection's state until ctx ends.
func (o *observer) watch(ctx context.Context, backend string, conn *grpc.ClientConn, healthService string) {
	for {
		st := conn.GetState()
		ready := st == connectivity.Ready
		o.connected.WithLabelValues(backend).Set(map[bool]float64{true: 1, false: 0}[ready])
		if healthService != "" {
			hs := healthpb.HealthCheckResponse_NOT_SERVING
			if ready {
				hs = healthpb.HealthCheckResponse_SERVING
			}
			o.health.SetServingStatus(healthService, hs)
		}
		klog.V(2).InfoS("Backend connection", "backend", backend, "state", st.String())
		if !conn.WaitForStateChange(ctx, st) {
			return
		}
	}
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
