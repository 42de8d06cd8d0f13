package shim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/internal/rawgrpc"
	"github.com/armorshim/armorshim/shim"
)

// sockDir returns a short directory for unix sockets (108-byte path limit).
func sockDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "as")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func canConnect(path string) bool {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

func TestListenModeAndGroup(t *testing.T) {
	old := syscall.Umask(0) // the most permissive umask: Listen must not follow it
	defer syscall.Umask(old)
	dir := sockDir(t)
	path := filepath.Join(dir, "sub", "dir", "armorshim.sock")
	const gid = 4242
	l, err := shim.Listen("unix://"+path, fmt.Sprint(gid))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want socket 0660", fi.Mode())
	}
	if st := fi.Sys().(*syscall.Stat_t); os.Geteuid() == 0 && st.Gid != gid {
		t.Errorf("socket group %d, want %d", st.Gid, gid)
	}
	if !canConnect(path) {
		t.Error("nobody listens on the socket")
	}

	// A bare path and no group: mode 0660, our own group.
	path2 := filepath.Join(dir, "plain.sock")
	l2, err := shim.Listen(path2, "")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	fi, err = os.Stat(path2)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Sys().(*syscall.Stat_t).Gid != uint32(os.Getegid()) {
		t.Errorf("socket %v gid %d", fi.Mode(), fi.Sys().(*syscall.Stat_t).Gid)
	}

	if _, err := shim.Listen("tcp://127.0.0.1:0", ""); err == nil {
		t.Error("a tcp endpoint was accepted")
	}
	if _, err := shim.Listen("unix://"+filepath.Join(dir, "g.sock"), "no-such-group-armorshim"); err == nil {
		t.Error("an unknown group was accepted")
	}
}

func TestListenReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(sockDir(t), "armorshim.sock")
	// A crashed armorshim: the socket file stays, nobody listens.
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	ul.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("stale socket not left behind: %v %v", fi, err)
	}
	if canConnect(path) {
		t.Fatal("the stale socket accepts connections")
	}
	l, err := shim.Listen("unix://"+path, "")
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	defer l.Close()
	if !canConnect(path) {
		t.Error("the new socket does not accept connections")
	}
}

func TestListenRefusesLiveSocket(t *testing.T) {
	path := filepath.Join(sockDir(t), "armorshim.sock")
	other, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	accepted := make(chan struct{}, 4)
	go func() {
		for {
			c, err := other.Accept()
			if err != nil {
				return
			}
			c.Close()
			accepted <- struct{}{}
		}
	}()
	before, _ := os.Lstat(path)
	l, err := shim.Listen("unix://"+path, "")
	if err == nil {
		l.Close()
		t.Fatal("a socket another process serves on was taken")
	}
	if !strings.Contains(err.Error(), "in use") {
		t.Errorf("error %q does not say the socket is in use", err)
	}
	after, err := os.Lstat(path)
	if err != nil || !os.SameFile(before, after) {
		t.Fatalf("the live socket was replaced or removed: %v", err)
	}
	if !canConnect(path) {
		t.Fatal("the live socket no longer accepts connections")
	}
	// Listen's probe and ours both reached the other server.
	for i := 0; i < 2; i++ {
		select {
		case <-accepted:
		case <-time.After(2 * time.Second):
			t.Fatal("the other server did not see its connections")
		}
	}
}

func TestListenRefusesRegularFile(t *testing.T) {
	path := filepath.Join(sockDir(t), "armorshim.sock")
	if err := os.WriteFile(path, []byte("precious"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := shim.Listen("unix://"+path, "")
	if err == nil {
		l.Close()
		t.Fatal("a regular file was replaced by a socket")
	}
	if data, err := os.ReadFile(path); err != nil || string(data) != "precious" {
		t.Errorf("the file was touched: %q, %v", data, err)
	}
}

// rawBackend is a CRI backend that hands every call to handle, as raw bytes.
func rawBackend(t *testing.T, handle func(ctx context.Context, method string, in []byte) ([]byte, error)) string {
	t.Helper()
	sock := filepath.Join(sockDir(t), "backend.sock")
	srv := grpc.NewServer(grpc.ForceServerCodecV2(rawgrpc.Codec{}), grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(ss)
		in := new(rawgrpc.Frame)
		if err := ss.RecvMsg(in); err != nil {
			return err
		}
		out, err := handle(ss.Context(), method, append([]byte(nil), in.Bytes()...))
		in.Free()
		if err != nil {
			return err
		}
		return ss.SendMsg(rawgrpc.FrameOf(out))
	}))
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return sock
}

type running struct {
	sock   string
	cancel context.CancelFunc
	done   chan error
	srv    *shim.Server
}

func serve(t *testing.T, cfg *shim.Config, reload func() (*shim.Config, error)) *running {
	t.Helper()
	srv, err := shim.New(cfg, reload)
	if err != nil {
		t.Fatal(err)
	}
	l, err := shim.Listen(cfg.Listen, cfg.SocketGroup)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{sock: strings.TrimPrefix(cfg.Listen, "unix://"), cancel: cancel, done: make(chan error, 1), srv: srv}
	go func() { r.done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return")
		}
	})
	return r
}

func testConfig(t *testing.T, backendSock string) *shim.Config {
	cfg := shim.DefaultConfig()
	cfg.Listen = "unix://" + filepath.Join(sockDir(t), "armorshim.sock")
	cfg.RuntimeEndpoint = "unix://" + backendSock
	cfg.Sysfs = t.TempDir()
	cfg.Procfs = t.TempDir()
	// Never touch the host's profile directory or NFD's features.d.
	cfg.Profiles.Directory = ""
	cfg.NodeFeatures.Directory = ""
	cfg.Denials.KernelLog, cfg.Denials.AuditLog = "", ""
	return cfg
}

func dial(t *testing.T, sock string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawgrpc.Codec{})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func rawCall(ctx context.Context, conn *grpc.ClientConn, method string, in []byte) ([]byte, error) {
	out := new(rawgrpc.Frame)
	if err := conn.Invoke(ctx, method, rawgrpc.FrameOf(in), out); err != nil {
		return nil, err
	}
	return append([]byte(nil), out.Bytes()...), nil
}

const slowMethod = "/runtime.v1.RuntimeService/ListContainers"

// During the drain the socket stays: new connections get Unavailable, calls
// in flight finish, and the socket goes once they have.
func TestServeDrainsInFlightCalls(t *testing.T) {
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	backend := rawBackend(t, func(ctx context.Context, method string, in []byte) ([]byte, error) {
		if method == slowMethod {
			entered <- struct{}{}
			start := time.Now()
			<-release
			if d := 300*time.Millisecond - time.Since(start); d > 0 {
				time.Sleep(d) // a slow runtime: at least 300ms
			}
		}
		return append([]byte("done:"), in...), nil
	})
	cfg := testConfig(t, backend)
	cfg.ShutdownTimeout = shim.Duration(10 * time.Second)
	r := serve(t, cfg, nil)
	conn := dial(t, r.sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := rawCall(ctx, conn, "/runtime.v1.RuntimeService/Version", nil); err != nil {
		t.Fatalf("not serving: %v", err)
	}

	type result struct {
		out []byte
		err error
		at  time.Time
	}
	resc := make(chan result, 1)
	go func() {
		out, err := rawCall(ctx, conn, slowMethod, []byte("x"))
		resc <- result{out, err, time.Now()}
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the slow call did not reach the backend")
	}
	r.cancel()
	// A kubelet reconnecting while the call is still in flight finds the
	// socket and is answered Unavailable (it retries), not "no such file"
	// or "connection refused".
	var (
		mu       sync.Mutex
		dialErrs []error
	)
	failedDials := func() []error {
		mu.Lock()
		defer mu.Unlock()
		return append([]error(nil), dialErrs...)
	}
	fresh := func() *grpc.ClientConn {
		conn, err := grpc.NewClient("unix://"+r.sock, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawgrpc.Codec{})),
			grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
				c, err := (&net.Dialer{}).DialContext(ctx, "unix", r.sock)
				if err != nil {
					mu.Lock()
					dialErrs = append(dialErrs, err)
					mu.Unlock()
				}
				return c, err
			}))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	turnedAway := func(err error) bool {
		return status.Code(err) == codes.Unavailable && status.Convert(err).Message() == shim.DrainMessage
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		callCtx, callCancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := rawCall(callCtx, fresh(), "/runtime.v1.RuntimeService/Version", nil)
		callCancel()
		if turnedAway(err) {
			break
		}
		if err != nil || len(failedDials()) > 0 {
			t.Fatalf("a new client while draining: %v (dial errors %v), want Unavailable %q", err, failedDials(), shim.DrainMessage)
		}
		if time.Now().After(deadline) {
			t.Fatal("new calls are still served 5s after the drain began")
		}
		time.Sleep(10 * time.Millisecond)
	}
	refusedAt := time.Now()
	if fi, err := os.Lstat(r.sock); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("the socket is gone while draining: %v", err)
	}
	// The kubelet's own connection was told to go away: its next call
	// reconnects and is turned away too, while its in-flight call goes on.
	if _, err := rawCall(ctx, conn, "/runtime.v1.RuntimeService/Version", nil); !turnedAway(err) {
		t.Errorf("a new call on the draining connection: %v, want Unavailable %q", err, shim.DrainMessage)
	}
	hc, err := healthpb.NewHealthClient(dialTyped(t, r.sock)).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || hc.Status != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("health while draining: %v %v, want NOT_SERVING", hc, err)
	}
	for i := 0; i < 3; i++ {
		if _, err := rawCall(ctx, fresh(), "/runtime.v1.RuntimeService/Version", nil); !turnedAway(err) {
			t.Errorf("new client %d while draining: %v, want Unavailable %q", i, err, shim.DrainMessage)
		}
	}
	if errs := failedDials(); len(errs) > 0 {
		t.Errorf("connecting while draining failed: %v", errs)
	}
	select {
	case res := <-resc:
		t.Fatalf("the in-flight call ended before the backend answered: %q %v", res.out, res.err)
	case err := <-r.done:
		t.Fatalf("Serve returned before the in-flight call ended: %v", err)
	default:
	}
	close(release)
	res := <-resc
	if res.err != nil || string(res.out) != "done:x" {
		t.Fatalf("in-flight call during drain: %q, %v", res.out, res.err)
	}
	if !res.at.After(refusedAt) {
		t.Error("the call ended before new calls were turned away")
	}
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
		r.done <- nil // for the cleanup
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the drain")
	}
	if _, err := os.Lstat(r.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind after shutdown: %v", err)
	}
}

func TestServeCutsCallsAfterShutdownTimeout(t *testing.T) {
	entered := make(chan struct{}, 1)
	backendEnded := make(chan error, 1)
	backend := rawBackend(t, func(ctx context.Context, method string, in []byte) ([]byte, error) {
		if method != slowMethod {
			return nil, nil
		}
		entered <- struct{}{}
		select {
		case <-ctx.Done():
			backendEnded <- ctx.Err()
			return nil, ctx.Err()
		case <-time.After(20 * time.Second):
			backendEnded <- errors.New("never cut")
			return nil, nil
		}
	})
	cfg := testConfig(t, backend)
	cfg.ShutdownTimeout = shim.Duration(300 * time.Millisecond)
	r := serve(t, cfg, nil)
	conn := dial(t, r.sock)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := rawCall(ctx, conn, slowMethod, nil)
		errc <- err
	}()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the slow call did not reach the backend")
	}
	start := time.Now()
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
		r.done <- nil
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not stop after the shutdown timeout")
	}
	took := time.Since(start)
	if took < 250*time.Millisecond || took > 3*time.Second {
		t.Errorf("shutdown took %v with a 300ms timeout", took)
	}
	select {
	case err := <-errc:
		if err == nil {
			t.Error("the call that outlived the shutdown timeout succeeded")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the call was not cut")
	}
	select {
	case err := <-backendEnded:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("backend call ended with %v, want cancelled", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the backend call was not cancelled")
	}
	if _, err := os.Lstat(r.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind after shutdown: %v", err)
	}
}

func writeConfig(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

const header = "apiVersion: armorshim.io/v1alpha1\nkind: ArmorshimConfiguration\n"

func TestLoadConfig(t *testing.T) {
	dir := t.TempDir()
	deny := apparmor.Profile{Type: apparmor.Localhost, Name: "k8s-apparmor-example-deny-write"}
	rd := apparmor.Profile{Type: apparmor.RuntimeDefault}

	for _, tc := range []struct {
		name, body string
		check      func(t *testing.T, cfg *shim.Config, pol *apparmor.Policy)
		wantErr    []string // substrings; the file path is always expected
	}{
		{name: "minimal", body: header, check: func(t *testing.T, cfg *shim.Config, pol *apparmor.Policy) {
			def := shim.DefaultConfig()
			if cfg.Listen != def.Listen || cfg.RuntimeEndpoint != def.RuntimeEndpoint || cfg.Image() != def.RuntimeEndpoint ||
				cfg.MaxMessageSize != 16<<20 || cfg.Sysfs != "/sys" || cfg.Procfs != "/proc" || time.Duration(cfg.ShutdownTimeout) <= 0 {
				t.Errorf("defaults not kept: %+v", cfg)
			}
			if pol.Disabled || pol.Allowed != nil || pol.Default.Type != apparmor.None || pol.RuntimeDefault != "cri-containerd.apparmor.d" {
				t.Errorf("policy %+v", pol)
			}
		}},
		// The policy knows the runtime's default profile, for requireEnforce.
		{name: "runtime default profile", body: header + "attestation:\n  mode: report\n  runtimeDefaultProfile: crio-default\n", check: func(t *testing.T, cfg *shim.Config, pol *apparmor.Policy) {
			if pol.RuntimeDefault != "crio-default" {
				t.Errorf("policy %+v", pol)
			}
		}},
		{name: "full with list", body: header + `listen: unix:///run/x/armorshim.sock
socketGroup: "4242"
runtimeEndpoint: unix:///run/containerd/containerd.sock
imageEndpoint: unix:///run/images.sock
sysfs: /host/sys
procfs: /host/proc
maxMessageSize: 33554432
shutdownTimeout: 10s
policy:
  defaultProfile: runtime/default
  allowedProfiles:
  - runtime/default
  - localhost/k8s-apparmor-example-deny-write
  requireEnforce: true
`, check: func(t *testing.T, cfg *shim.Config, pol *apparmor.Policy) {
			if cfg.Listen != "unix:///run/x/armorshim.sock" || cfg.SocketGroup != "4242" || cfg.ImageEndpoint != "unix:///run/images.sock" ||
				cfg.Sysfs != "/host/sys" || cfg.Procfs != "/host/proc" || cfg.MaxMessageSize != 32<<20 || time.Duration(cfg.ShutdownTimeout) != 10*time.Second {
				t.Errorf("config %+v", cfg)
			}
			if pol.Default != rd || len(pol.Allowed) != 2 || pol.Allowed[0] != rd || pol.Allowed[1] != deny || !pol.RequireEnforce {
				t.Errorf("policy %+v", pol)
			}
		}},
		{name: "allowed as comma string", body: header + `policy:
  allowedProfiles: "runtime/default, localhost/k8s-apparmor-example-deny-write"
`, check: func(t *testing.T, cfg *shim.Config, pol *apparmor.Policy) {
			if len(pol.Allowed) != 2 || pol.Allowed[0] != rd || pol.Allowed[1] != deny {
				t.Errorf("allowed %+v", pol.Allowed)
			}
		}},
		{name: "disabled", body: header + "policy:\n  enabled: false\n", check: func(t *testing.T, cfg *shim.Config, pol *apparmor.Policy) {
			if !pol.Disabled {
				t.Errorf("policy %+v", pol)
			}
		}},
		{name: "unknown field", body: header + "listenn: unix:///x.sock\n", wantErr: []string{"listenn"}},
		{name: "unknown policy field", body: header + "policy:\n  defaultProfil: runtime/default\n", wantErr: []string{"defaultProfil"}},
		{name: "wrong kind", body: "apiVersion: armorshim.io/v1alpha1\nkind: KubeletConfiguration\n", wantErr: []string{"KubeletConfiguration", "ArmorshimConfiguration"}},
		{name: "wrong apiVersion", body: "apiVersion: armorshim.io/v9\nkind: ArmorshimConfiguration\n", wantErr: []string{"armorshim.io/v9"}},
		{name: "no header", body: "listen: unix:///x.sock\n", wantErr: []string{"apiVersion"}},
		{name: "invalid defaultProfile", body: header + "policy:\n  defaultProfile: foo/bar\n", wantErr: []string{"defaultProfile", "foo/bar"}},
		{name: "invalid allowed profile", body: header + "policy:\n  allowedProfiles: [runtime/default, 'localhost/ padded']\n", wantErr: []string{"allowedProfiles"}},
		{name: "default not allowed", body: header + `policy:
  defaultProfile: localhost/k8s-apparmor-example-allow-write
  allowedProfiles: [runtime/default, localhost/k8s-apparmor-example-deny-write]
`, wantErr: []string{"k8s-apparmor-example-allow-write", "allowedProfiles"}},
		{name: "bad duration", body: header + "shutdownTimeout: 30\n", wantErr: []string{"shutdownTimeout", "30s"}},
		{name: "bad nested duration", body: header + "profiles:\n  syncInterval: 2x\n", wantErr: []string{"profiles.syncInterval", `"2x"`}},
		{name: "probe interval too short", body: header + "backendProbe:\n  interval: 10ms\n", wantErr: []string{"backendProbe.interval", "100ms"}},
		{name: "probe without timeout", body: header + "backendProbe:\n  timeout: 0s\n", wantErr: []string{"backendProbe.timeout"}},
		{name: "probe", body: header + "backendProbe:\n  interval: 10s\n  timeout: 4s\n", check: func(t *testing.T, cfg *shim.Config, _ *apparmor.Policy) {
			if cfg.BackendProbe != (shim.BackendProbeConfig{Interval: shim.Duration(10 * time.Second), Timeout: shim.Duration(4 * time.Second)}) {
				t.Errorf("backendProbe %+v", cfg.BackendProbe)
			}
		}},
		{name: "small maxMessageSize", body: header + "maxMessageSize: 1024\n", wantErr: []string{"maxMessageSize"}},
		{name: "small maxHeldRequestBytes", body: header + "maxHeldRequestBytes: 1048576\n", wantErr: []string{"maxHeldRequestBytes"}},
		{name: "maxHeldRequestBytes without room for the prefix", body: header + "maxMessageSize: 16777216\nmaxHeldRequestBytes: 16777220\n", wantErr: []string{"maxHeldRequestBytes: 16777220 is below maxMessageSize + 5 (16777221)"}},
		{name: "not yaml", body: header + "policy: [\n", wantErr: []string{}},
		{name: "policy modes", body: header + `policy:
  allowedProfiles: [runtime/default]
  requireEnforce: true
  mode: warn
  ruleModes:
    requireEnforce: [warn, audit]
    defaultProfile: enforce
podSecurity:
  auditLog:
    path: /var/log/armorshim/audit.log
`, check: func(t *testing.T, cfg *shim.Config, pol *apparmor.Policy) {
			want := map[apparmor.Rule]apparmor.RuleMode{apparmor.RuleAllowedProfiles: apparmor.Warn, apparmor.RuleRequireEnforce: apparmor.Warn | apparmor.Audit}
			if !reflect.DeepEqual(pol.Modes, want) {
				t.Errorf("modes %v, want %v", pol.Modes, want)
			}
			// Written back as read: a word, or a list.
			b, err := json.Marshal(cfg.Policy)
			var back shim.PolicyConfig
			if err != nil || json.Unmarshal(b, &back) != nil || !reflect.DeepEqual(back, cfg.Policy) ||
				!strings.Contains(string(b), `"mode":"warn"`) || !strings.Contains(string(b), `"requireEnforce":["warn","audit"]`) {
				t.Errorf("policy as JSON %s (%v) reads back as %+v", b, err, back)
			}
		}},
		{name: "policy mode enforce is no dry run", body: header + "policy:\n  mode: enforce\n  ruleModes: {allowedProfiles: [enforce]}\n", check: func(t *testing.T, cfg *shim.Config, pol *apparmor.Policy) {
			if pol.Modes != nil || pol.DryRuns() {
				t.Errorf("modes %v", pol.Modes)
			}
		}},
		{name: "audit without an audit log", body: header + "policy:\n  ruleModes:\n    defaultProfile: audit\n",
			wantErr: []string{"policy.ruleModes.defaultProfile: audit writes to the audit log, and podSecurity.auditLog.path is not set"}},
		{name: "whole policy audit without an audit log", body: header + "policy:\n  mode: [warn, audit]\n", wantErr: []string{"policy.mode: audit"}},
		{name: "policy mode audit overridden by every rule needs no audit log", body: header + "policy:\n  mode: audit\n  ruleModes: {allowedProfiles: warn, defaultProfile: warn, requireEnforce: enforce}\n", check: func(t *testing.T, cfg *shim.Config, pol *apparmor.Policy) {
			if pol.Mode(apparmor.RuleAllowedProfiles) != apparmor.Warn || pol.Mode(apparmor.RuleRequireEnforce) != apparmor.Enforce {
				t.Errorf("modes %v", pol.Modes)
			}
		}},
		{name: "default outside the allowed list", body: header + "policy:\n  defaultProfile: runtime/default\n  allowedProfiles: [localhost/k8s-apparmor-example-deny-write]\n",
			wantErr: []string{`policy.defaultProfile: "runtime/default" is not in allowedProfiles [localhost/k8s-apparmor-example-deny-write]`}},
		{name: "audit log checked without Pod Security", body: header + "policy:\n  mode: audit\npodSecurity:\n  auditLog: {path: audit.log}\n", wantErr: []string{"podSecurity.auditLog.path"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".yaml")
			writeConfig(t, path, tc.body)
			cfg, err := shim.LoadConfig(path)
			if tc.wantErr != nil {
				if err == nil {
					t.Fatalf("no error; config %+v", cfg)
				}
				for _, want := range append(tc.wantErr, path) {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not mention %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			pol, err := cfg.Validate()
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, cfg, pol)
		})
	}
	if _, err := shim.LoadConfig(filepath.Join(dir, "missing.yaml")); err == nil || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("missing file: %v", err)
	}
}

// A reload with a bad configuration keeps the policy in force; a good one
// replaces it. Observed through CreateContainer decisions of the running
// server, against the cri-client fake runtime.
func TestReloadKeepsPolicyOnBadConfig(t *testing.T) {
	backend := filepath.Join(sockDir(t), "backend.sock")
	f := fake.NewFakeRemoteRuntime()
	if err := f.Start("unix://" + backend); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Stop)

	sysfs := t.TempDir()
	for rel, data := range map[string]string{
		"module/apparmor/parameters/enabled": "Y\n",
		"kernel/security/apparmor/profiles":  "k8s-apparmor-example-deny-write (enforce)\nk8s-apparmor-example-allow-write (enforce)\n",
		"kernel/security/apparmor/revision":  "1\n",
	} {
		p := filepath.Join(sysfs, rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		writeConfig(t, p, data)
	}
	listen := "unix://" + filepath.Join(sockDir(t), "armorshim.sock")
	base := header + fmt.Sprintf("listen: %s\nruntimeEndpoint: unix://%s\nsysfs: %s\nprocfs: %s\n", listen, backend, sysfs, t.TempDir()) +
		// Never touch the host's profile directory or NFD's features.d.
		"profiles:\n  directory: \"\"\nnodeFeatures:\n  directory: \"\"\n"
	path := filepath.Join(t.TempDir(), "armorshim.yaml")
	writeConfig(t, path, base+"policy:\n  allowedProfiles: [localhost/k8s-apparmor-example-deny-write]\n")
	cfg, err := shim.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	var reloadFrom func() (*shim.Config, error) // nil: the file
	r := serve(t, cfg, func() (*shim.Config, error) {
		if reloadFrom != nil {
			return reloadFrom()
		}
		return shim.LoadConfig(path)
	})
	rt := runtimeapi.NewRuntimeServiceClient(dial(t, r.sock))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	pod := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "hello-apparmor", Namespace: "default"}}
	sb, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pod})
	if err != nil {
		t.Fatal(err)
	}
	create := func(profile string) error {
		_, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: sb.PodSandboxId, SandboxConfig: pod,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: "hello"},
				Image:    &runtimeapi.ImageSpec{Image: "busybox"},
				Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
					Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: profile},
				}},
			},
		})
		return err
	}
	expectOldPolicy := func(when string) {
		t.Helper()
		if err := create("k8s-apparmor-example-deny-write"); err != nil {
			t.Errorf("%s: allowed profile refused: %v", when, err)
		}
		if err := create("k8s-apparmor-example-allow-write"); status.Code(err) != codes.PermissionDenied || !strings.HasPrefix(status.Convert(err).Message(), "Forbidden: ") {
			t.Errorf("%s: profile outside allowedProfiles: %v, want PermissionDenied Forbidden", when, err)
		}
	}
	expectOldPolicy("before reload")

	for name, body := range map[string]string{
		"unknown field":       base + "policy:\n  allowedProfile: [localhost/k8s-apparmor-example-allow-write]\n",
		"default not allowed": base + "policy:\n  defaultProfile: localhost/k8s-apparmor-example-allow-write\n  allowedProfiles: [localhost/k8s-apparmor-example-deny-write]\n",
		"invalid profile":     base + "policy:\n  allowedProfiles: [foo/bar]\n",
		"wrong kind":          strings.Replace(base, "ArmorshimConfiguration", "Other", 1),
		"unknown mode":        base + "policy:\n  mode: dryrun\n  allowedProfiles: [localhost/k8s-apparmor-example-allow-write]\n",
		"audit without a log": base + "policy:\n  mode: audit\n  allowedProfiles: [localhost/k8s-apparmor-example-allow-write]\n",
		// The audit log is opened at start only.
		"audit with a new log": base + "podSecurity:\n  auditLog: {path: " + filepath.Join(t.TempDir(), "audit.log") + "}\npolicy:\n  mode: audit\n  allowedProfiles: [localhost/k8s-apparmor-example-allow-write]\n",
	} {
		writeConfig(t, path, body)
		if err := r.srv.Reload(); err == nil {
			t.Errorf("reload with %s: no error", name)
		}
		expectOldPolicy("after a reload with " + name)
	}

	// A configuration that loads but does not validate (Reload must check
	// it itself, not trust its source).
	reloadFrom = func() (*shim.Config, error) {
		bad := *cfg
		bad.Policy = shim.PolicyConfig{DefaultProfile: "foo/bar"}
		return &bad, nil
	}
	if err := r.srv.Reload(); err == nil {
		t.Error("reload with an invalid policy object: no error")
	}
	expectOldPolicy("after a reload with an invalid policy object")
	reloadFrom = nil

	// A good file takes effect without a restart.
	writeConfig(t, path, base+"policy:\n  allowedProfiles: [localhost/k8s-apparmor-example-allow-write]\n")
	if err := r.srv.Reload(); err != nil {
		t.Fatalf("good reload: %v", err)
	}
	if err := create("k8s-apparmor-example-allow-write"); err != nil {
		t.Errorf("after a good reload: %v", err)
	}
	if err := create("k8s-apparmor-example-deny-write"); status.Code(err) != codes.PermissionDenied {
		t.Errorf("after a good reload: %v, want PermissionDenied", err)
	}
	n := 0
	for _, c := range f.RuntimeService.GetCalls() {
		if c == "CreateContainer" {
			n++
		}
	}
	if want := 10; n != want { // nine accepted before and after the bad reloads, one after the good
		t.Errorf("the fake runtime got %d CreateContainer calls, want %d", n, want)
	}
}

// YAML reads an unquoted `off` as false: it still means off.
func TestAttestationModeOff(t *testing.T) {
	dir := t.TempDir()
	header := "apiVersion: armorshim.io/v1alpha1\nkind: ArmorshimConfiguration\n"
	for body, want := range map[string]string{
		"attestation:\n  mode: off\n":     "off",
		"attestation:\n  mode: \"off\"\n": "off",
		"attestation:\n  mode: report\n":  "report",
		"attestation: {}\n":               "enforce",
	} {
		path := filepath.Join(dir, "c.yaml")
		writeConfig(t, path, header+body)
		cfg, err := shim.LoadConfig(path)
		if err != nil {
			t.Errorf("%q: %v", body, err)
		} else if cfg.Attestation.Mode != want {
			t.Errorf("%q: mode %q, want %q", body, cfg.Attestation.Mode, want)
		}
	}
	for body, wantErr := range map[string]string{
		"attestation:\n  mode: on\n":   "attestation.mode: true",
		"attestation:\n  mode: 3\n":    "attestation.mode: 3",
		"attestation:\n  bogus: x\n":   "attestation.bogus: unknown field",
		"attestation:\n  mode: loud\n": `"loud" is not enforce, report or off`,
	} {
		path := filepath.Join(dir, "c.yaml")
		writeConfig(t, path, header+body)
		if _, err := shim.LoadConfig(path); err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%q: err %v, want %q", body, err, wantErr)
		}
	}
}

// Configuration errors speak YAML: the field's path and line, not Go's or
// JSON's names.
func TestLoadConfigErrorsInYAMLTerms(t *testing.T) {
	dir := t.TempDir()
	for name, tc := range map[string]struct{ body, want string }{
		"unknown nested":     {header + "policy:\n  defaultProfile: runtime/default\n  requireEnforcement: true\n", "line 5: policy.requireEnforcement: unknown field"},
		"unknown top":        {header + "listen: unix:///x.sock\nmetricsAdress: 127.0.0.1:9753\n", "line 4: metricsAdress: unknown field"},
		"repeated":           {header + "listen: unix:///a.sock\nlisten: unix:///b.sock\n", "line 4: listen: repeated field (first on line 3)"},
		"string for int":     {header + "maxMessageSize: 16Mi\n", "line 3: maxMessageSize: is a string, want an integer"},
		"list for bool":      {header + "policy:\n  requireEnforce: [yes]\n", "line 4: policy.requireEnforce: is a list, want a boolean"},
		"scalar for map":     {header + "policy: strict\n", "line 3: policy: is a string, want a mapping of fields"},
		"deep unknown":       {header + "podSecurity:\n  auditLog:\n    maxSize: 3\n", "line 5: podSecurity.auditLog.maxSize: unknown field"},
		"namespace label":    {header + "podSecurity:\n  namespaces:\n    a.b: {enforce: [x]}\n", `podSecurity.namespaces["a.b"].enforce`},
		"unknown rule":       {header + "policy:\n  ruleModes:\n    allowedProfile: warn\n", "line 5: policy.ruleModes.allowedProfile: unknown field"},
		"unknown mode":       {header + "policy:\n  mode: warm\n", `line 4: policy.mode: "warm" is not enforce, warn or audit`},
		"mode in a list":     {header + "policy:\n  ruleModes:\n    requireEnforce: [warn, dryrun]\n", `line 5: policy.ruleModes.requireEnforce: "dryrun" is not enforce, warn or audit`},
		"enforce and warn":   {header + "policy:\n  ruleModes:\n    defaultProfile: [enforce, warn]\n", "line 5: policy.ruleModes.defaultProfile: enforce cannot be combined with warn or audit"},
		"empty mode list":    {header + "policy:\n  mode: []\n", "line 4: policy.mode: no mode"},
		"mode mapping":       {header + "policy:\n  mode: {warn: true}\n", "line 4: policy.mode: is a mapping, want enforce, warn, audit or [warn, audit]"},
		"mode boolean":       {header + "policy:\n  ruleModes:\n    requireEnforce: off\n", "line 5: policy.ruleModes.requireEnforce: is a boolean, want enforce, warn, audit or [warn, audit]"},
		"mode number":        {header + "policy:\n  mode: 1\n", "line 4: policy.mode: is a number, want"},
		"mode list of lists": {header + "policy:\n  mode: [[warn]]\n", "line 4: policy.mode: is a list holding a non-word"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(name, " ", "-")+".yaml")
			writeConfig(t, path, tc.body)
			_, err := shim.LoadConfig(path)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
			for _, jargon := range []string{"JSON", "json", "Go struct", "unmarshal"} {
				if strings.Contains(err.Error(), jargon) {
					t.Errorf("error %q speaks %s", err, jargon)
				}
			}
		})
	}
}

// An empty file, or one of comments only, is the defaults, as the shipped
// configuration file says ("every field is optional").
func TestLoadConfigEmptyIsDefaults(t *testing.T) {
	for name, body := range map[string]string{"empty": "", "comments": "# nothing set\n\n# here\n"} {
		path := filepath.Join(t.TempDir(), "config.yaml")
		writeConfig(t, path, body)
		cfg, err := shim.LoadConfig(path)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if !reflect.DeepEqual(cfg, shim.DefaultConfig()) {
			t.Errorf("%s: %+v, want the defaults", name, cfg)
		}
	}
}

// A backend socket that does not exist at start is said in the log, and
// armorshim serves anyway: containerd may start after it.
func TestAbsentBackendLoggedAtStart(t *testing.T) {
	var buf syncBuffer
	klog.LogToStderr(false)
	klog.SetOutput(&buf)
	t.Cleanup(func() { klog.SetOutput(io.Discard); klog.LogToStderr(true) })

	missing := filepath.Join(sockDir(t), "not-yet.sock")
	cfg := testConfig(t, missing)
	r := serve(t, cfg, nil)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(buf.String(), "Backend socket does not exist yet") {
		if time.Now().After(deadline) {
			t.Fatalf("no log line about %s; log:\n%s", missing, buf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(buf.String(), missing) {
		t.Errorf("the log line does not name the endpoint: %s", buf.String())
	}
	if _, err := os.Stat(r.sock); err != nil {
		t.Errorf("not serving: %v", err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
