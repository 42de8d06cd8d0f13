package shim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/armorshim/armorshim/apparmor"
)

// Configuration file identity.
const (
	APIVersion = "armorshim.io/v1alpha1"
	Kind       = "ArmorshimConfiguration"
)

// DefaultMaxMessageSize matches the kubelet's CRI client limit.
const DefaultMaxMessageSize = 16 << 20

// DefaultMaxHeldRequestBytes bounds the requests held whole at once.
const DefaultMaxHeldRequestBytes = 64 << 20

// Config is armorshim's configuration: the YAML file, overridden by flags.
type Config struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`

	// Listen is the socket armorshim serves on: unix:///path, a bare path,
	// or fd:// for a socket passed by systemd.
	Listen string `json:"listen,omitempty"`
	// SocketGroup owns the socket (name or numeric gid); mode is 0660.
	SocketGroup string `json:"socketGroup,omitempty"`
	// RuntimeEndpoint and ImageEndpoint are the backend CRI sockets;
	// ImageEndpoint defaults to RuntimeEndpoint.
	RuntimeEndpoint string `json:"runtimeEndpoint,omitempty"`
	ImageEndpoint   string `json:"imageEndpoint,omitempty"`
	// Sysfs and Procfs are the roots of all host reads.
	Sysfs  string `json:"sysfs,omitempty"`
	Procfs string `json:"procfs,omitempty"`
	// MaxMessageSize bounds every message, both ways, in bytes as sent: a
	// compressed message of a call armorshim does not hold is bounded by
	// the kubelet's and the runtime's own limits once decompressed.
	MaxMessageSize int `json:"maxMessageSize,omitempty"`
	// MaxHeldRequestBytes bounds the bytes of the requests armorshim holds
	// whole to decide them (CreateContainer; StartContainer, RunPodSandbox
	// and the container and sandbox stop and remove calls when
	// attestation, Pod Security or denial attribution need them), across
	// all connections: past it, a new held call fails with
	// ResourceExhausted and the kubelet retries it.
	MaxHeldRequestBytes int64 `json:"maxHeldRequestBytes,omitempty"`
	// ShutdownTimeout bounds how long in-flight calls may run on shutdown.
	ShutdownTimeout Duration `json:"shutdownTimeout,omitempty"`
	// MetricsAddress serves Prometheus metrics on a loopback host:port, e.g.
	// 127.0.0.1:9753; empty turns them off.
	MetricsAddress string `json:"metricsAddress,omitempty"`
	// BackendProbe asks each backend, every few seconds, whether it answers;
	// the health service and armorshim_backend_answering follow it.
	BackendProbe BackendProbeConfig `json:"backendProbe,omitempty"`

	Policy PolicyConfig `json:"policy,omitempty"`

	Profiles     ProfilesConfig     `json:"profiles,omitempty"`
	NodeFeatures NodeFeaturesConfig `json:"nodeFeatures,omitempty"`
	Attestation  AttestationConfig  `json:"attestation,omitempty"`
	Denials      DenialsConfig      `json:"denials,omitempty"`
	PodSecurity  PodSecurityConfig  `json:"podSecurity,omitempty"`
	Learning     LearningConfig     `json:"learning,omitempty"`
}

// LearningConfig lets pods learn an AppArmor profile from what their
// containers do (the armorshim.io/learn annotation).
type LearningConfig struct {
	// Namespaces whose pods may learn; none when empty (the default).
	// SIGHUP applies a change.
	Namespaces []string `json:"namespaces,omitempty"`
	// Directory keeps what is learned and the profiles `armorshim profile
	// generate` writes: a staging directory, never the profile directory.
	Directory string `json:"directory,omitempty"`
	// MaxActive bounds the containers learning at once on the node;
	// MaxAccesses the distinct accesses kept per learned profile.
	MaxActive   int `json:"maxActive,omitempty"`
	MaxAccesses int `json:"maxAccesses,omitempty"`
}

// UnmarshalJSON reads the attestation section; YAML turns an unquoted
// `mode: off` into false, which means off too.
func (a *AttestationConfig) UnmarshalJSON(b []byte) error {
	type plain AttestationConfig
	v := struct {
		plain
		Mode any `json:"mode"`
	}{plain: plain(*a)}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&v); err != nil {
		return fmt.Errorf("attestation: %w", err)
	}
	*a = AttestationConfig(v.plain)
	switch m := v.Mode.(type) {
	case nil:
	case string:
		a.Mode = m
	case bool:
		if m {
			return fmt.Errorf("attestation.mode: true is not a mode: use enforce, report or off")
		}
		a.Mode = "off"
	default:
		return fmt.Errorf("attestation.mode: %v is not enforce, report or off", m)
	}
	return nil
}

// BackendProbeConfig is the active check that a backend answers: a CRI
// Version call, which any runtime answers at once. A connected backend that
// does not answer (a frozen or wedged containerd) counts as down.
type BackendProbeConfig struct {
	// Interval is how often each backend is asked.
	Interval Duration `json:"interval,omitempty"`
	// Timeout is how long an answer may take; without one by then the
	// backend counts as down until it answers again.
	Timeout Duration `json:"timeout,omitempty"`
}

// DenialsConfig is the attribution of AppArmor denials to pods. The kernel
// sends its audit records to auditd's log while auditd runs and to the
// kernel log otherwise; both are followed, and a record read from both
// counts once. With both empty, attribution is off.
type DenialsConfig struct {
	// KernelLog is followed for AppArmor audit records.
	KernelLog string `json:"kernelLog,omitempty"`
	// AuditLog is auditd's log (auditd.conf log_file), followed across
	// rotations.
	AuditLog string `json:"auditLog,omitempty"`
	// AuditNetlink also reads the kernel's audit multicast group, which
	// carries every record (the kernel log only those printk's rate limit
	// lets through, about 10 per 5 s, and none while auditd runs); it
	// needs CAP_AUDIT_READ. Learning needs it.
	AuditNetlink bool `json:"auditNetlink,omitempty"`
	// AuditBacklogLimit, if set, raises the kernel's audit backlog limit
	// to at least this many records at start (auditd's rules set 8192; the
	// kernel boots with 64 and drops records past it while its audit
	// thread catches up). It needs CAP_AUDIT_CONTROL and outlives
	// armorshim.
	AuditBacklogLimit uint32 `json:"auditBacklogLimit,omitempty"`
}

// Enabled says whether denials are attributed.
func (c DenialsConfig) Enabled() bool { return c.KernelLog != "" || c.AuditLog != "" || c.AuditNetlink }

// AttestationConfig is the check, after StartContainer, that a container's
// process runs under the confinement decided at CreateContainer.
type AttestationConfig struct {
	// Mode: enforce stops a mismatched container and fails StartContainer;
	// report only logs and counts; off skips the check.
	Mode string `json:"mode,omitempty"`
	// RuntimeDefaultProfile is the profile the runtime applies for
	// runtime/default and to containers asking nothing, unless privileged
	// (containerd: cri-containerd.apparmor.d). Attestation expects it, and
	// policy.requireEnforce refuses such containers while it is loaded in
	// another mode than enforce. Empty: not known (neither is checked). It
	// reloads with the policy.
	RuntimeDefaultProfile string `json:"runtimeDefaultProfile,omitempty"`
}

// ProfilesConfig is the profile directory armorshim keeps loaded.
type ProfilesConfig struct {
	// Directory holds AppArmor profile files; each is loaded with
	// apparmor_parser --replace at start and whenever it is added or
	// changed. Empty turns loading off.
	Directory string `json:"directory,omitempty"`
	// Parser is the apparmor_parser command.
	Parser string `json:"parser,omitempty"`
	// SyncInterval is how often the directory is checked for changes and
	// failed loads are retried (with a growing delay).
	SyncInterval Duration `json:"syncInterval,omitempty"`
	// StatusFile is where the loader's state (refused files, load errors)
	// is written for armorshim check; empty: not written.
	StatusFile string `json:"statusFile,omitempty"`
}

// NodeFeaturesConfig is the node-feature-discovery feature file.
type NodeFeaturesConfig struct {
	// Directory is NFD's features.d; empty turns the file off.
	Directory string `json:"directory,omitempty"`
	// Expiry is how long NFD keeps the labels if armorshim stops
	// refreshing them; armorshim rewrites the file at half of it.
	Expiry Duration `json:"expiry,omitempty"`
}

// PolicyConfig is the node's AppArmor policy as written in the file.
type PolicyConfig struct {
	// Enabled: false switches AppArmor off on this node: containers asking
	// for any profile are refused (Forbidden). Default true.
	Enabled *bool `json:"enabled,omitempty"`
	// DefaultProfile applies to containers that ask for no profile.
	DefaultProfile string `json:"defaultProfile,omitempty"`
	// AllowedProfiles, when set, lists the only profiles containers may use:
	// a YAML list, a comma-separated string, or both mixed.
	AllowedProfiles *StringList `json:"allowedProfiles,omitempty"`
	// RequireEnforce refuses localhost profiles not loaded in enforce mode
	// and, for runtime/default and containers asking nothing, the
	// runtime's default profile (attestation.runtimeDefaultProfile) loaded
	// in another mode; attestation then requires enforce mode.
	RequireEnforce bool `json:"requireEnforce,omitempty"`
	// Mode is how allowedProfiles, defaultProfile and requireEnforce
	// apply: enforce (the default); warn, to log and count what enforcing
	// them would do and forward the request as if they did not exist;
	// audit, the same to the audit log; or [warn, audit]. enabled: false
	// and the host's checks (a profile not loaded) are always enforced.
	Mode PolicyMode `json:"mode,omitempty"`
	// RuleModes sets the mode of single rules, over Mode.
	RuleModes RuleModesConfig `json:"ruleModes,omitempty"`
}

// RuleModesConfig sets the mode of single policy rules; a rule not set
// here takes policy.mode.
type RuleModesConfig struct {
	AllowedProfiles *PolicyMode `json:"allowedProfiles,omitempty"`
	DefaultProfile  *PolicyMode `json:"defaultProfile,omitempty"`
	RequireEnforce  *PolicyMode `json:"requireEnforce,omitempty"`
}

// modes returns each rule's mode as written: policy.mode, or its own.
func (pc *PolicyConfig) modes() map[apparmor.Rule]PolicyMode {
	out := map[apparmor.Rule]PolicyMode{}
	for r, own := range pc.ownModes() {
		out[r] = pc.Mode
		if own != nil {
			out[r] = *own
		}
	}
	return out
}

// ownModes returns the rules' own modes, nil where ruleModes sets none.
func (pc *PolicyConfig) ownModes() map[apparmor.Rule]*PolicyMode {
	return map[apparmor.Rule]*PolicyMode{
		apparmor.RuleAllowedProfiles: pc.RuleModes.AllowedProfiles,
		apparmor.RuleDefaultProfile:  pc.RuleModes.DefaultProfile,
		apparmor.RuleRequireEnforce:  pc.RuleModes.RequireEnforce,
	}
}

// auditField names the field that puts a rule in audit mode, or "".
func (pc *PolicyConfig) auditField() string {
	own := pc.ownModes()
	modes := pc.modes()
	for _, r := range apparmor.Rules {
		if apparmor.RuleMode(modes[r])&apparmor.Audit == 0 {
			continue
		}
		if own[r] == nil {
			return "policy.mode" // the rule takes policy.mode
		}
		return "policy.ruleModes." + string(r)
	}
	return ""
}

// PolicyMode is a policy rule's mode as written: enforce, warn, audit, or
// a list of warn and audit.
type PolicyMode apparmor.RuleMode

func (m PolicyMode) MarshalJSON() ([]byte, error) {
	if w := apparmor.RuleMode(m).Words(); len(w) != 1 {
		return json.Marshal(w)
	}
	return json.Marshal(apparmor.RuleMode(m).String())
}

func (m *PolicyMode) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var words []string
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		words = []string{one}
	} else if err := json.Unmarshal(b, &words); err != nil {
		// A type error lets encoding/json name the field.
		return &json.UnmarshalTypeError{Value: "is a " + valueKind(b) + ", want enforce, warn, audit or [warn, audit]", Type: reflect.TypeFor[PolicyMode]()}
	}
	mode, err := apparmor.ParseRuleMode(words)
	if err != nil {
		return &json.UnmarshalTypeError{Value: err.Error(), Type: reflect.TypeFor[PolicyMode]()}
	}
	*m = PolicyMode(mode)
	return nil
}

// DefaultConfig returns the configuration used when no file is given.
func DefaultConfig() *Config {
	return &Config{
		APIVersion:          APIVersion,
		Kind:                Kind,
		Listen:              "unix:///run/armorshim/armorshim.sock",
		RuntimeEndpoint:     "unix:///run/containerd/containerd.sock",
		Sysfs:               "/sys",
		Procfs:              "/proc",
		MaxMessageSize:      DefaultMaxMessageSize,
		MaxHeldRequestBytes: DefaultMaxHeldRequestBytes,
		ShutdownTimeout:     Duration(30 * time.Second),
		BackendProbe: BackendProbeConfig{
			Interval: Duration(3 * time.Second),
			Timeout:  Duration(2 * time.Second),
		},
		Profiles: ProfilesConfig{
			Directory:    "/etc/armorshim/profiles.d",
			Parser:       "apparmor_parser",
			SyncInterval: Duration(2 * time.Second),
			StatusFile:   "/run/armorshim/profiles.json",
		},
		NodeFeatures: NodeFeaturesConfig{
			Directory: "/etc/kubernetes/node-feature-discovery/features.d",
			Expiry:    Duration(time.Hour),
		},
		Attestation: AttestationConfig{
			Mode:                  "enforce",
			RuntimeDefaultProfile: "cri-containerd.apparmor.d",
		},
		Learning: LearningConfig{
			Directory:   "/var/lib/armorshim/learning",
			MaxActive:   32,
			MaxAccesses: 20000,
		},
		Denials: DenialsConfig{KernelLog: "/dev/kmsg", AuditLog: "/var/log/audit/audit.log"},
		PodSecurity: PodSecurityConfig{
			KubeletRootDir: "/var/lib/kubelet",
			AuditLog:       AuditLogConfig{MaxSizeMiB: 100, MaxFiles: 5},
		},
	}
}

// LoadConfig reads a configuration file over the defaults. Unknown or
// repeated fields, a wrong apiVersion or kind and invalid values are errors
// naming the file, the field's YAML path and, where known, its line. An
// empty file (or one of comments only) is the defaults.
func LoadConfig(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	cfg := DefaultConfig()
	root, err := checkYAML(data, reflect.TypeOf(cfg))
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if root == nil {
		return cfg, nil // empty or comments only: every field is optional
	}
	cfg.APIVersion, cfg.Kind = "", ""
	if err := yaml.UnmarshalStrict(data, cfg); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, typeError(err, root))
	}
	if cfg.APIVersion != APIVersion || cfg.Kind != Kind {
		return nil, fmt.Errorf("config %s: apiVersion/kind is %q/%q, want %q/%q", path, cfg.APIVersion, cfg.Kind, APIVersion, Kind)
	}
	if _, err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if _, err := cfg.PodSecurity.Build(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

// Image returns the image service endpoint: ImageEndpoint, or the runtime's.
func (c *Config) Image() string {
	if c.ImageEndpoint == "" {
		return c.RuntimeEndpoint
	}
	return c.ImageEndpoint
}

// Validate checks the configuration and returns the AppArmor policy it
// describes.
func (c *Config) Validate() (*apparmor.Policy, error) {
	for field, v := range map[string]string{"listen": c.Listen, "runtimeEndpoint": c.RuntimeEndpoint, "sysfs": c.Sysfs, "procfs": c.Procfs} {
		if v == "" {
			return nil, fmt.Errorf("%s: must not be empty", field)
		}
	}
	if c.MaxMessageSize < 4<<20 {
		return nil, fmt.Errorf("maxMessageSize: %d is below 4 MiB", c.MaxMessageSize)
	}
	// A held request is its message and gRPC's 5-byte length prefix.
	if c.MaxHeldRequestBytes < int64(c.MaxMessageSize)+5 {
		return nil, fmt.Errorf("maxHeldRequestBytes: %d is below maxMessageSize + 5 (%d): the largest request, with its 5-byte gRPC prefix, could never be held", c.MaxHeldRequestBytes, int64(c.MaxMessageSize)+5)
	}
	if c.MetricsAddress != "" {
		if err := checkLoopback(c.MetricsAddress); err != nil {
			return nil, fmt.Errorf("metricsAddress: %w", err)
		}
	}
	if c.Profiles.Directory != "" && c.Profiles.SyncInterval < Duration(100*time.Millisecond) {
		return nil, fmt.Errorf("profiles.syncInterval: must be at least 100ms")
	}
	if c.NodeFeatures.Directory != "" && c.NodeFeatures.Expiry < Duration(time.Minute) {
		return nil, fmt.Errorf("nodeFeatures.expiry: must be at least 1m")
	}
	switch c.Attestation.Mode {
	case "enforce", "report", "off":
	default:
		return nil, fmt.Errorf("attestation.mode: %q is not enforce, report or off", c.Attestation.Mode)
	}
	if c.BackendProbe.Interval < Duration(100*time.Millisecond) {
		return nil, fmt.Errorf("backendProbe.interval: must be at least 100ms")
	}
	if c.BackendProbe.Timeout < Duration(10*time.Millisecond) {
		return nil, fmt.Errorf("backendProbe.timeout: must be at least 10ms")
	}
	if c.ShutdownTimeout < 0 {
		return nil, fmt.Errorf("shutdownTimeout: must not be negative")
	}
	if err := c.PodSecurity.validate(); err != nil {
		return nil, err
	}
	pol, err := c.Policy.Build()
	if err != nil {
		return nil, err
	}
	pol.RuntimeDefault = c.Attestation.RuntimeDefaultProfile
	if err := c.Learning.validate(c); err != nil {
		return nil, err
	}
	pol.LearnNamespaces = c.Learning.Namespaces
	if f := c.Policy.auditField(); f != "" && c.PodSecurity.AuditLog.Path == "" {
		return nil, fmt.Errorf("%s: audit writes to the audit log, and podSecurity.auditLog.path is not set", f)
	}
	return pol, nil
}

// Build turns the policy section into an apparmor.Policy.
func (pc *PolicyConfig) Build() (*apparmor.Policy, error) {
	pol := &apparmor.Policy{
		Disabled:       pc.Enabled != nil && !*pc.Enabled,
		RequireEnforce: pc.RequireEnforce,
	}
	if pc.DefaultProfile != "" {
		p, err := apparmor.ParseReference(pc.DefaultProfile)
		if err != nil {
			return nil, fmt.Errorf("policy.defaultProfile: %w", err)
		}
		pol.Default = p
	}
	if pc.AllowedProfiles != nil {
		allowed, err := apparmor.ParseProfileList(*pc.AllowedProfiles)
		if err != nil {
			return nil, fmt.Errorf("policy.allowedProfiles: %w", err)
		}
		if len(allowed) == 0 {
			return nil, fmt.Errorf("policy.allowedProfiles: the list is empty; remove the field to allow every profile")
		}
		pol.Allowed = allowed
	}
	for r, m := range pc.modes() {
		if !apparmor.RuleMode(m).Enforced() {
			if pol.Modes == nil {
				pol.Modes = map[apparmor.Rule]apparmor.RuleMode{}
			}
			pol.Modes[r] = apparmor.RuleMode(m)
		}
	}
	if err := pol.Validate(); err != nil {
		return nil, fmt.Errorf("policy.%w", err)
	}
	return pol, nil
}

// Duration is a time.Duration written as "30s" in the file.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		// A type error lets encoding/json name the field.
		return &json.UnmarshalTypeError{Value: string(b) + " is not a duration: write it like \"30s\"", Type: reflect.TypeFor[Duration]()}
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return &json.UnmarshalTypeError{Value: fmt.Sprintf("%q is not a duration (%v)", s, err), Type: reflect.TypeFor[Duration]()}
	}
	*d = Duration(v)
	return nil
}

// StringList accepts a YAML list of strings or a single string.
type StringList []string

func (l *StringList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*l = StringList{one}
		return nil
	}
	var many []string
	if err := json.Unmarshal(b, &many); err != nil {
		return fmt.Errorf("must be a string or a list of strings")
	}
	*l = many
	return nil
}

// valueKind names the kind of a value in YAML's words.
func valueKind(b []byte) string {
	switch {
	case bytes.HasPrefix(b, []byte("{")):
		return "mapping"
	case bytes.HasPrefix(b, []byte("[")):
		return "list holding a non-word"
	case string(b) == "true" || string(b) == "false":
		return "boolean"
	}
	return "number"
}

// socketPath returns the filesystem path of a unix:// endpoint or bare path.
func socketPath(endpoint string) (string, error) {
	switch {
	case strings.HasPrefix(endpoint, "unix://"):
		endpoint = strings.TrimPrefix(endpoint, "unix://")
	case strings.Contains(endpoint, "://"):
		return "", fmt.Errorf("endpoint %q: only unix:// sockets are supported", endpoint)
	}
	if !strings.HasPrefix(endpoint, "/") {
		return "", fmt.Errorf("endpoint %q: the socket path must be absolute", endpoint)
	}
	return endpoint, nil
}

// validate checks the learning section whether or not learning is on: a
// reload may turn it on, and the other fields need a restart.
func (l LearningConfig) validate(c *Config) error {
	if !filepath.IsAbs(l.Directory) {
		return fmt.Errorf("learning.directory: %q is not an absolute path", l.Directory)
	}
	if d := c.Profiles.Directory; d != "" {
		if within(l.Directory, d) || within(d, l.Directory) {
			return fmt.Errorf("learning.directory: %q and profiles.directory %q hold one another: learned profiles are staged, never enforced by themselves", l.Directory, d)
		}
	}
	if l.MaxActive < 1 || l.MaxAccesses < 1 {
		return fmt.Errorf("learning: maxActive and maxAccesses must be at least 1")
	}
	for _, ns := range l.Namespaces {
		if ns == "" {
			return fmt.Errorf("learning.namespaces: an empty namespace")
		}
	}
	if len(l.Namespaces) > 0 && !c.Denials.AuditNetlink {
		return fmt.Errorf("learning.namespaces: learning reads every record the kernel makes of the workload: set denials.auditNetlink: true (the kernel log drops most of them)")
	}
	return nil
}

// within says whether path is dir or below it (after resolving symbolic
// links where they exist).
func within(path, dir string) bool {
	resolve := func(p string) string {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return r
		}
		return filepath.Clean(p)
	}
	rel, err := filepath.Rel(resolve(dir), resolve(path))
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}
