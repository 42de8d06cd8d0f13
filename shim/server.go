package shim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/test/bufconn"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/cri"
	"github.com/armorshim/armorshim/cri/h2relay"
	"github.com/armorshim/armorshim/host"
	"github.com/armorshim/armorshim/systemd"
)

// Server is one armorshim instance: a listener, the relay serving it and the
// backend connections of armorshim's own calls.
type Server struct {
	cfg    *Config
	reload func() (*Config, error)
	host   *host.Reader
	proxy  *cri.Proxy
	relay  *h2relay.Relay
	// local serves armorshim's own gRPC services on localConns.
	local      *grpc.Server
	localConns *bufconn.Listener
	obs        *observer
	loader     *host.Loader
	denials    *cri.Denials
	taskEvents *cri.TaskEvents // nil without attestation
	runtime    *grpc.ClientConn
	image      *grpc.ClientConn // the runtime connection when the endpoints are one
	// auditLog is the audit log of Pod Security and of the AppArmor
	// policy, if its path is set.
	auditLog *rotatingFile
}

// New builds a Server from a completed configuration. reload, if not nil,
// returns the configuration to apply on SIGHUP. No connection is made and no
// socket is opened yet.
func New(cfg *Config, reload func() (*Config, error)) (*Server, error) {
	pol, err := cfg.Validate()
	if err != nil {
		return nil, err
	}
	ev, err := cfg.PodSecurity.Build()
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, reload: reload, host: host.NewReader(cfg.Sysfs, cfg.Procfs)}
	// Opened whenever set: a reload may turn on Pod Security or audit mode.
	if cfg.PodSecurity.AuditLog.Path != "" {
		a := cfg.PodSecurity.AuditLog
		if s.auditLog, err = openRotating(a.Path, int64(a.MaxSizeMiB)<<20, a.MaxFiles); err != nil {
			return nil, fmt.Errorf("podSecurity.auditLog.path: %w", err)
		}
	}
	if s.runtime, err = Dial(cfg.RuntimeEndpoint, cfg.MaxMessageSize); err != nil {
		s.closeAuditLog()
		return nil, fmt.Errorf("runtime endpoint: %w", err)
	}
	s.image = s.runtime
	if cfg.Image() != cfg.RuntimeEndpoint {
		if s.image, err = Dial(cfg.Image(), cfg.MaxMessageSize); err != nil {
			s.runtime.Close()
			s.closeAuditLog()
			return nil, fmt.Errorf("image endpoint: %w", err)
		}
	}
	s.obs = newObserver(s.host)
	if s.loader = newLoader(cfg.Profiles, s.host); s.loader != nil {
		registerLoaderMetrics(s.obs.reg, s.loader)
	}
	opts := []cri.Option{cri.WithMetrics(cri.NewMetrics(s.obs.reg))}
	if cfg.Denials.Enabled() {
		s.denials = cri.NewDenials(s.runtime, s.host, s.obs.reg, cfg.Attestation.RuntimeDefaultProfile)
		opts = append(opts, cri.WithDenials(s.denials))
		// Pods learn only in the namespaces the policy lists (SIGHUP).
		opts = append(opts, cri.WithLearning(&host.LearningStore{
			Dir: cfg.Learning.Directory, Parser: cfg.Profiles.Parser,
			Securityfs: filepath.Join(cfg.Sysfs, "kernel", "security", "apparmor"),
			MaxActive:  cfg.Learning.MaxActive, MaxAccesses: cfg.Learning.MaxAccesses,
		}))
	}
	if cfg.Attestation.Mode != "off" {
		s.taskEvents = cri.NewTaskEvents(s.runtime, s.obs.reg)
		opts = append(opts, cri.WithAttestation(cri.Attestation{
			Mode: cfg.Attestation.Mode, Processes: s.host, Events: s.taskEvents,
		}))
	}
	if s.auditLog != nil {
		opts = append(opts, cri.WithAuditLog(s.auditLog))
	}
	if ev != nil {
		opts = append(opts, cri.WithPodSecurity(ev, nil))
		logPodSecurity(ev)
	}
	logPolicyModes(pol)
	// armorshim's own health service is a gRPC server of its own, reached
	// through an in-memory connection like any backend.
	s.local = grpc.NewServer()
	healthpb.RegisterHealthServer(s.local, s.obs.health)
	s.localConns = bufconn.Listen(64 << 10)
	backends := cri.Backends{
		Runtime:     socketBackend("runtime", cfg.RuntimeEndpoint),
		Local:       &h2relay.Backend{Name: "health service", Dial: s.localConns.DialContext},
		RuntimeConn: s.runtime,
		ImageConn:   s.image,
	}
	backends.Image = backends.Runtime
	if cfg.Image() != cfg.RuntimeEndpoint {
		backends.Image = socketBackend("image service", cfg.Image())
	}
	s.proxy = cri.New(backends, s.host, pol, opts...)
	s.relay = h2relay.New(h2relay.Config{Hooks: s.proxy, MaxMessageSize: cfg.MaxMessageSize, MaxHeldBytes: cfg.MaxHeldRequestBytes})
	return s, nil
}

// socketBackend relays to a CRI socket (an endpoint socketPath accepts).
func socketBackend(name, endpoint string) *h2relay.Backend {
	path, _ := socketPath(endpoint) // checked by Dial
	return &h2relay.Backend{Name: name, Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
}

// Dial opens a long-lived connection to a backend CRI socket. It does not
// wait for the backend: calls fail fast with Unavailable while it is down,
// and the connection comes back within about a second once it is up.
func Dial(endpoint string, maxMessageSize int) (*grpc.ClientConn, error) {
	path, err := socketPath(endpoint)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(maxMessageSize),
			grpc.MaxCallSendMsgSize(maxMessageSize),
		),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
		grpc.WithIdleTimeout(0), // one connection for the life of the process
	)
	if err != nil {
		return nil, err
	}
	conn.Connect()
	return conn, nil
}

// Serve serves on l until ctx ends, then drains: existing connections are
// told to open no new calls (GOAWAY), in-flight calls may finish for at most
// ShutdownTimeout, and new connections are still accepted but every call on
// them is answered with Unavailable (DrainMessage), so that a client
// reconnecting meanwhile is told to retry rather than that the socket is
// gone. Then it closes the listener (which removes a socket armorshim
// created).
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	defer s.closeBackends()
	h := newHandoff(l)
	defer h.Close()
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go s.obs.follow(watchCtx, "runtime", s.runtime, RuntimeHealthService, s.cfg.BackendProbe)
	if s.image != s.runtime {
		go s.obs.follow(watchCtx, "image", s.image, "", s.cfg.BackendProbe)
	}
	if s.loader != nil {
		go s.loader.Run(watchCtx, time.Duration(s.cfg.Profiles.SyncInterval))
	}
	if s.cfg.NodeFeatures.Directory != "" {
		w := &featureWriter{cfg: s.cfg.NodeFeatures, host: s.host}
		go w.run(watchCtx, 2*time.Second)
	}
	if s.denials != nil {
		s.followDenials(watchCtx)
	}
	if s.taskEvents != nil {
		go s.taskEvents.Run(watchCtx)
	}
	if s.cfg.MetricsAddress != "" {
		if err := s.obs.serveMetrics(watchCtx, s.cfg.MetricsAddress); err != nil {
			return err
		}
	}
	go s.local.Serve(s.localConns)
	defer s.local.Stop()
	errc := make(chan error, 1)
	go func() { errc <- s.relay.Serve(h.relay) }()
	klog.InfoS("Serving", "listen", l.Addr().String(), "runtimeEndpoint", s.cfg.RuntimeEndpoint, "imageEndpoint", s.cfg.Image())
	s.logAbsentEndpoints()
	systemd.Notify(systemd.Ready, systemd.Status("Serving CRI on "+l.Addr().String()))

	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	systemd.Notify(systemd.Stopping, systemd.Status("Draining in-flight calls; new calls get Unavailable"))
	s.obs.health.Shutdown()
	klog.InfoS("Shutting down: draining in-flight calls, answering new ones with Unavailable", "timeout", time.Duration(s.cfg.ShutdownTimeout))
	stopDrain := serveDrain(h.startDrain(), s.obs.health)
	drain, cancel := context.WithTimeout(context.Background(), time.Duration(s.cfg.ShutdownTimeout))
	defer cancel()
	if err := s.relay.Shutdown(drain); err != nil {
		klog.InfoS("Shutdown timeout reached: ended the remaining calls")
	}
	<-errc
	// The socket goes first, then the connections of the drain server.
	h.Close()
	stopDrain()
	return nil
}

// Reload applies a new configuration's policy (with the runtime's default
// profile, attestation.runtimeDefaultProfile) and Pod Security settings. A
// configuration that fails to load keeps the one in force. Other fields
// need a restart.
func (s *Server) Reload() error {
	if s.reload == nil {
		return errors.New("no configuration file to reload")
	}
	cfg, err := s.reload()
	if err != nil {
		return err
	}
	pol, err := cfg.Validate()
	if err != nil {
		return err
	}
	ev, err := cfg.PodSecurity.Build()
	if err != nil {
		return err
	}
	if f := cfg.Policy.auditField(); f != "" && s.auditLog == nil {
		return fmt.Errorf("%s: audit writes to the audit log, which is opened at start: restart armorshim with podSecurity.auditLog.path set", f)
	}
	if restart := s.cfg.restartFields(cfg); len(restart) > 0 {
		klog.InfoS("Configuration changes that take effect only after a restart", "fields", restart)
	}
	s.proxy.SetPolicy(pol)
	s.cfg.Policy = cfg.Policy
	s.cfg.Attestation.RuntimeDefaultProfile = cfg.Attestation.RuntimeDefaultProfile
	logPolicyModes(pol)
	// Pod Security levels, namespaces and exemptions reload; the audit log
	// file needs a restart.
	s.proxy.SetPodSecurity(ev)
	auditLog := s.cfg.PodSecurity.AuditLog
	s.cfg.PodSecurity = cfg.PodSecurity
	s.cfg.PodSecurity.AuditLog = auditLog
	return nil
}

func (c *Config) restartFields(n *Config) []string {
	var out []string
	for name, changed := range map[string]bool{
		"listen":               c.Listen != n.Listen,
		"socketGroup":          c.SocketGroup != n.SocketGroup,
		"runtimeEndpoint":      c.RuntimeEndpoint != n.RuntimeEndpoint,
		"imageEndpoint":        c.Image() != n.Image(),
		"sysfs":                c.Sysfs != n.Sysfs,
		"procfs":               c.Procfs != n.Procfs,
		"maxMessageSize":       c.MaxMessageSize != n.MaxMessageSize,
		"maxHeldRequestBytes":  c.MaxHeldRequestBytes != n.MaxHeldRequestBytes,
		"shutdownTimeout":      c.ShutdownTimeout != n.ShutdownTimeout,
		"metricsAddress":       c.MetricsAddress != n.MetricsAddress,
		"backendProbe":         c.BackendProbe != n.BackendProbe,
		"profiles":             c.Profiles != n.Profiles,
		"nodeFeatures":         c.NodeFeatures != n.NodeFeatures,
		"attestation.mode":     c.Attestation.Mode != n.Attestation.Mode,
		"denials":              c.Denials != n.Denials,
		"learning.directory":   c.Learning.Directory != n.Learning.Directory,
		"learning.maxActive":   c.Learning.MaxActive != n.Learning.MaxActive,
		"learning.maxAccesses": c.Learning.MaxAccesses != n.Learning.MaxAccesses,
	} {
		if changed {
			out = append(out, name)
		}
	}
	if c.PodSecurity.AuditLog != n.PodSecurity.AuditLog {
		out = append(out, "podSecurity.auditLog")
	}
	return out
}

func (s *Server) closeBackends() {
	if s.denials != nil {
		s.denials.Close()
	}
	s.runtime.Close()
	if s.image != s.runtime {
		s.image.Close()
	}
	s.host.Close()
	s.closeAuditLog()
}

func (s *Server) closeAuditLog() {
	if s.auditLog != nil {
		s.auditLog.Close()
	}
}

// Run listens, serves and handles signals: SIGTERM and SIGINT drain and
// stop, SIGHUP reloads the configuration.
func (s *Server) Run(ctx context.Context) error {
	l, err := Listen(s.cfg.Listen, s.cfg.SocketGroup)
	if err != nil {
		s.closeBackends()
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				systemd.Notify(systemd.Reloading)
				if err := s.Reload(); err != nil {
					klog.ErrorS(err, "Configuration reload failed; keeping the configuration in force")
				} else {
					klog.InfoS("Configuration reloaded")
				}
				systemd.Notify(systemd.Ready)
			}
		}
	}()
	return s.Serve(ctx, l)
}

// logPolicyModes says which rules of the AppArmor policy are in warn or
// audit mode: what they would refuse is forwarded.
func logPolicyModes(pol *apparmor.Policy) {
	if !pol.DryRuns() {
		return
	}
	var kv []any
	for _, r := range apparmor.Rules {
		kv = append(kv, string(r), pol.Mode(r).String())
	}
	klog.InfoS("AppArmor policy rules in warn or audit mode: what enforcing them would refuse is forwarded and reported", kv...)
}

// followDenials follows the logs configured for AppArmor denials until ctx
// ends, and says whether denials can be seen in them.
func (s *Server) followDenials(ctx context.Context) {
	d := s.cfg.Denials
	if d.KernelLog != "" {
		go s.denials.Follow(ctx, "kmsg", d.KernelLog, openKernelLog(d.KernelLog), nil)
	}
	if d.AuditLog != "" {
		go s.denials.Follow(ctx, "audit", d.AuditLog, openAuditLog(d.AuditLog), nil)
	}
	if want := d.AuditBacklogLimit; want > 0 {
		if before, err := host.RaiseAuditBacklog(want); err != nil {
			klog.ErrorS(err, "Cannot read or raise the kernel's audit backlog limit: bursts of records may be lost", "want", want)
		} else if before < want && before != 0 {
			klog.InfoS("Raised the kernel's audit backlog limit", "from", before, "to", want)
		}
	}
	if d.AuditNetlink {
		go s.denials.Follow(ctx, "netlink", host.AuditNetlinkLog, openAuditNetlink, nil)
	}
	kmsg, audit := host.ProbeDenialLogs(d.KernelLog, d.AuditLog)
	auditd, err := s.host.AuditdPid()
	if err != nil {
		klog.InfoS("Cannot tell whether auditd runs", "err", err)
	}
	v := host.DenialsVisible(auditd, kmsg, audit)
	if d.AuditNetlink {
		v = host.NetlinkVisibility(host.ProbeAuditNetlink(), v)
	}
	if v.Visible {
		klog.InfoS("Attributing AppArmor denials", "log", v.Log, "because", v.Reason)
	} else {
		klog.ErrorS(nil, "AppArmor denials are NOT VISIBLE to armorshim: armorshim_apparmor_denials_total stays 0", "because", v.Reason)
	}
}

// logAbsentEndpoints says at start which backend socket does not exist yet:
// armorshim keeps serving (containerd may start later), and until it does
// every call fails with Unavailable.
func (s *Server) logAbsentEndpoints() {
	eps := []string{s.cfg.RuntimeEndpoint}
	if s.cfg.Image() != s.cfg.RuntimeEndpoint {
		eps = append(eps, s.cfg.Image())
	}
	for _, ep := range eps {
		path, err := socketPath(ep)
		if err != nil {
			continue // refused by Validate
		}
		if _, err := os.Stat(path); err != nil {
			klog.InfoS("Backend socket does not exist yet; CRI calls fail with Unavailable until it does", "endpoint", ep, "err", err)
		}
	}
}

// openKernelLog opens the kernel log for Denials.Follow; the file is
// closed when the follower's context ends, which ends a blocked read.
func openKernelLog(path string) func(context.Context) (io.ReadCloser, error) {
	return func(ctx context.Context) (io.ReadCloser, error) {
		f, err := host.OpenKmsg(path)
		if err != nil {
			return nil, err
		}
		context.AfterFunc(ctx, func() { f.Close() })
		return f, nil
	}
}

// openAuditNetlink joins the audit multicast group for Denials.Follow.
func openAuditNetlink(ctx context.Context) (io.ReadCloser, error) {
	a, err := host.OpenAuditNetlink()
	if err != nil {
		return nil, err
	}
	context.AfterFunc(ctx, func() { a.Close() })
	return a, nil
}

// openAuditLog opens auditd's log for Denials.Follow, from its end.
func openAuditLog(path string) func(context.Context) (io.ReadCloser, error) {
	return func(ctx context.Context) (io.ReadCloser, error) {
		return host.OpenTail(ctx, path, nil)
	}
}
