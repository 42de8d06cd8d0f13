package shim_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"

	"github.com/armorshim/armorshim/host"
	"github.com/armorshim/armorshim/shim"
)

func freeLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func scrape(t *testing.T, addr string) string {
	t.Helper()
	var body []byte
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil {
				return string(body)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("scrape %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func fakeHost(t *testing.T, profiles string) string {
	t.Helper()
	sys := t.TempDir()
	for path, data := range map[string]string{
		"module/apparmor/parameters/enabled": "Y\n",
		"kernel/security/apparmor/profiles":  profiles,
		"kernel/security/apparmor/revision":  "1\n",
	} {
		p := filepath.Join(sys, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return sys
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMetricsAndHealth drives calls through a running server and reads them
// back from /metrics and the health service.
func TestMetricsAndHealth(t *testing.T) {
	backendSock := filepath.Join(sockDir(t), "containerd.sock")
	rt := fake.NewFakeRemoteRuntime()
	if err := rt.Start("unix://" + backendSock); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t, backendSock)
	cfg.Sysfs = fakeHost(t, "k8s-apparmor-example-deny-write (enforce)\ndocker-default (enforce)\n")
	cfg.MetricsAddress = freeLoopbackAddr(t)
	features := filepath.Join(t.TempDir(), "features.d")
	if err := os.Mkdir(features, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg.NodeFeatures.Directory = features
	r := serve(t, cfg, nil)

	conn := dialTyped(t, r.sock)
	client := runtimeapi.NewRuntimeServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	health := healthpb.NewHealthClient(conn)
	waitFor(t, "runtime health SERVING", func() bool {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: shim.RuntimeHealthService})
		return err == nil && resp.Status == healthpb.HealthCheckResponse_SERVING
	})
	if resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("armorshim health = %v %v", resp, err)
	}

	for i := 0; i < 3; i++ {
		if _, err := client.Version(ctx, &runtimeapi.VersionRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	sandbox := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "hello-apparmor-2", Namespace: "default", Uid: "u2"},
		Annotations: map[string]string{
			"container.apparmor.security.beta.kubernetes.io/hello": "localhost/k8s-apparmor-example-allow-write",
		},
	}
	_, err := client.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: "x", SandboxConfig: sandbox,
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "hello"}, Image: &runtimeapi.ImageSpec{Image: "busybox"}}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("CreateContainer: %v", err)
	}

	body := scrape(t, cfg.MetricsAddress)
	for _, want := range []string{
		`armorshim_cri_requests_total{code="OK",method="/runtime.v1.RuntimeService/Version"} 3`,
		`armorshim_cri_requests_total{code="FailedPrecondition",method="/runtime.v1.RuntimeService/CreateContainer"} 1`,
		`armorshim_create_container_decisions_total{cause="not-loaded",outcome="refused",reason="Blocked"} 1`,
		`armorshim_cri_request_duration_seconds_count{method="/runtime.v1.RuntimeService/Version"} 3`,
		`armorshim_backend_connected{backend="runtime"} 1`,
		`armorshim_apparmor_profiles_loaded 2`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
	if strings.Contains(body, `method="unknown"`) { // the health checks are armorshim's own
		t.Errorf("health checks counted as CRI calls:\n%s", body)
	}

	// The node features follow the loaded profiles.
	waitFor(t, "the NFD feature file", func() bool {
		b, _ := os.ReadFile(filepath.Join(features, host.FeatureFileName))
		return strings.Contains(string(b), "apparmor.armorshim.io/k8s-apparmor-example-deny-write=enforce\n")
	})
	if err := os.WriteFile(filepath.Join(cfg.Sysfs, "kernel/security/apparmor/profiles"), []byte("k8s-nginx (complain)\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.Sysfs, "kernel/security/apparmor/revision"), []byte("2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the NFD file to follow the new revision", func() bool {
		b, _ := os.ReadFile(filepath.Join(features, host.FeatureFileName))
		return strings.Contains(string(b), "apparmor.armorshim.io/k8s-nginx=complain\n") && !strings.Contains(string(b), "deny-write")
	})

	// Containerd goes away: the runtime health and the gauge follow.
	rt.Stop()
	waitFor(t, "runtime health NOT_SERVING", func() bool {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: shim.RuntimeHealthService})
		return err == nil && resp.Status == healthpb.HealthCheckResponse_NOT_SERVING
	})
	if body := scrape(t, cfg.MetricsAddress); !strings.Contains(body, `armorshim_backend_connected{backend="runtime"} 0`+"\n") {
		t.Error("backend_connected did not drop to 0")
	}
}

func dialTyped(t *testing.T, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// metricLine reports whether the scraped metrics hold the line want.
func metricLine(body, want string) bool { return strings.Contains(body, want+"\n") }

// A backend that is connected but does not answer (a frozen containerd) is
// not SERVING, within the probe's interval and timeout, and is again once it
// answers; armorshim_backend_answering follows while
// armorshim_backend_connected still says the connection is up.
func TestHealthFollowsWhetherBackendAnswers(t *testing.T) {
	var (
		mu   sync.Mutex
		thaw chan struct{} // not nil while frozen
	)
	backend := rawBackend(t, func(ctx context.Context, method string, in []byte) ([]byte, error) {
		mu.Lock()
		gate := thaw
		mu.Unlock()
		if gate != nil {
			select {
			case <-gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return nil, nil
	})
	cfg := testConfig(t, backend)
	cfg.MetricsAddress = freeLoopbackAddr(t)
	const interval, timeout = 100 * time.Millisecond, 200 * time.Millisecond
	cfg.BackendProbe = shim.BackendProbeConfig{Interval: shim.Duration(interval), Timeout: shim.Duration(timeout)}
	r := serve(t, cfg, nil)
	health := healthpb.NewHealthClient(dialTyped(t, r.sock))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	runtimeStatus := func() healthpb.HealthCheckResponse_ServingStatus {
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: shim.RuntimeHealthService})
		if err != nil {
			t.Fatalf("health check: %v", err)
		}
		return resp.Status
	}
	// bound is how long a change may take to show: a probe interval and a
	// timeout, with room for a loaded machine.
	const bound = interval + timeout + 2*time.Second
	within := func(what string, cond func() bool) {
		t.Helper()
		start := time.Now()
		waitFor(t, what, cond)
		if took := time.Since(start); took > bound {
			t.Errorf("%s took %v, want at most %v", what, took, bound)
		}
	}
	within("runtime health SERVING", func() bool { return runtimeStatus() == healthpb.HealthCheckResponse_SERVING })

	for round := 0; round < 2; round++ {
		mu.Lock()
		thaw = make(chan struct{})
		gate := thaw
		mu.Unlock()
		within("runtime health NOT_SERVING while the backend does not answer", func() bool {
			return runtimeStatus() == healthpb.HealthCheckResponse_NOT_SERVING
		})
		body := scrape(t, cfg.MetricsAddress)
		if !metricLine(body, `armorshim_backend_answering{backend="runtime"} 0`) || !metricLine(body, `armorshim_backend_connected{backend="runtime"} 1`) {
			t.Errorf("frozen backend: want answering 0 and connected 1, got:\n%s", grepLines(body, "armorshim_backend_"))
		}
		// armorshim itself still serves.
		if resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || resp.Status != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("armorshim health = %v %v", resp, err)
		}

		mu.Lock()
		thaw = nil
		mu.Unlock()
		close(gate)
		within("runtime health SERVING once the backend answers again", func() bool {
			return runtimeStatus() == healthpb.HealthCheckResponse_SERVING
		})
		if body := scrape(t, cfg.MetricsAddress); !metricLine(body, `armorshim_backend_answering{backend="runtime"} 1`) {
			t.Errorf("recovered backend: want answering 1, got:\n%s", grepLines(body, "armorshim_backend_"))
		}
	}
}

// A backend that restarts (a new process on the same socket) is SERVING
// again without any CRI call going through armorshim.
func TestHealthRecoversAfterBackendRestart(t *testing.T) {
	sock := filepath.Join(sockDir(t), "containerd.sock")
	start := func() *grpc.Server {
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		runtimeapi.RegisterRuntimeServiceServer(srv, fake.NewFakeRemoteRuntime())
		go srv.Serve(l)
		return srv
	}
	backend := start()
	cfg := testConfig(t, sock)
	cfg.BackendProbe = shim.BackendProbeConfig{Interval: shim.Duration(100 * time.Millisecond), Timeout: shim.Duration(200 * time.Millisecond)}
	r := serve(t, cfg, nil)
	health := healthpb.NewHealthClient(dialTyped(t, r.sock))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	is := func(want healthpb.HealthCheckResponse_ServingStatus) func() bool {
		return func() bool {
			resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: shim.RuntimeHealthService})
			return err == nil && resp.Status == want
		}
	}
	waitFor(t, "runtime health SERVING", is(healthpb.HealthCheckResponse_SERVING))
	backend.Stop()
	waitFor(t, "runtime health NOT_SERVING once the backend is gone", is(healthpb.HealthCheckResponse_NOT_SERVING))
	backend = start()
	t.Cleanup(backend.Stop)
	waitFor(t, "runtime health SERVING after the backend restarted", is(healthpb.HealthCheckResponse_SERVING))
}

func grepLines(body, prefix string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
