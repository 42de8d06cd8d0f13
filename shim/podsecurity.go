package shim

import (
	"fmt"
	"os"
	"path/filepath"

	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/pss"
)

// PodSecurityConfig is node-side Pod Security Standards. It is off unless
// ConfigFile or Namespaces is set.
type PodSecurityConfig struct {
	// ConfigFile is an AdmissionConfiguration holding the PodSecurity
	// plugin's configuration, or a bare PodSecurityConfiguration: the
	// defaults and exemptions. Without it every mode defaults to
	// privileged, as in Pod Security Admission.
	ConfigFile string `json:"configFile,omitempty"`
	// Namespaces holds each namespace's pod-security.kubernetes.io/* labels;
	// a namespace without entries gets the defaults.
	Namespaces map[string]map[string]string `json:"namespaces,omitempty"`
	// KubeletRootDir is the kubelet's --root-dir: mounts from outside its
	// pods/<uid>/ directory count as hostPath volumes.
	KubeletRootDir string `json:"kubeletRootDir,omitempty"`
	// KubeletSeccompDefault: the kubelet runs with seccompDefault: true, so
	// a seccomp profile Unconfined on a request was asked for explicitly.
	KubeletSeccompDefault bool `json:"kubeletSeccompDefault,omitempty"`
	// AuditLog receives one JSON line per audit-mode violation and per
	// enforce refusal, and per request the AppArmor policy's rules in audit
	// mode would have refused (or given the default profile).
	AuditLog AuditLogConfig `json:"auditLog,omitempty"`
}

// AuditLogConfig is the audit log file, of Pod Security and of the AppArmor
// policy's rules in audit mode, and its rotation. It is opened at start
// whenever its path is set.
type AuditLogConfig struct {
	// Path of the log; empty turns the audit log off.
	Path string `json:"path,omitempty"`
	// MaxSizeMiB rotates the log when the next line would take it past
	// this size.
	MaxSizeMiB int `json:"maxSizeMiB,omitempty"`
	// MaxFiles is how many rotated files (path.1 ... path.N) are kept.
	MaxFiles int `json:"maxFiles,omitempty"`
}

// Enabled says whether Pod Security is configured.
func (c *PodSecurityConfig) Enabled() bool { return c.ConfigFile != "" || len(c.Namespaces) > 0 }

func (c *PodSecurityConfig) validate() error {
	if c.Enabled() && !filepath.IsAbs(c.KubeletRootDir) {
		return fmt.Errorf("podSecurity.kubeletRootDir: %q is not an absolute path", c.KubeletRootDir)
	}
	// The AppArmor policy audits to it too: checked with Pod Security off.
	if c.AuditLog.Path != "" {
		if !filepath.IsAbs(c.AuditLog.Path) {
			return fmt.Errorf("podSecurity.auditLog.path: %q is not an absolute path", c.AuditLog.Path)
		}
		if c.AuditLog.MaxSizeMiB < 1 {
			return fmt.Errorf("podSecurity.auditLog.maxSizeMiB: must be at least 1")
		}
		if c.AuditLog.MaxFiles < 1 {
			return fmt.Errorf("podSecurity.auditLog.maxFiles: must be at least 1")
		}
	}
	return nil
}

// Build reads the PodSecurity configuration file and returns the
// evaluator, or nil when Pod Security is off. Errors name the field.
func (c *PodSecurityConfig) Build() (*pss.Evaluator, error) {
	if !c.Enabled() {
		return nil, nil
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	pc := pss.Config{Namespaces: c.Namespaces, KubeletRootDir: c.KubeletRootDir, KubeletSeccompDefault: c.KubeletSeccompDefault}
	if c.ConfigFile != "" {
		data, err := os.ReadFile(c.ConfigFile)
		if err != nil {
			return nil, fmt.Errorf("podSecurity.configFile: %w", err)
		}
		// A plugin path is relative to the AdmissionConfiguration, as in
		// the API server.
		read := func(p string) ([]byte, error) {
			if !filepath.IsAbs(p) {
				p = filepath.Join(filepath.Dir(c.ConfigFile), p)
			}
			return os.ReadFile(p)
		}
		adm, err := pss.ParseConfiguration(data, read)
		if err != nil {
			return nil, fmt.Errorf("podSecurity.configFile: %s: %w", c.ConfigFile, err)
		}
		if err := pc.FromAdmission(adm); err != nil {
			return nil, fmt.Errorf("podSecurity.configFile: %s: %w", c.ConfigFile, err)
		}
	}
	ev, err := pss.NewEvaluator(pc)
	if err != nil {
		return nil, fmt.Errorf("podSecurity.%w", err)
	}
	return ev, nil
}

// logPodSecurity says once, at start, what is in force and what cannot be.
func logPodSecurity(ev *pss.Evaluator) {
	if ev == nil {
		return
	}
	c := ev.Config()
	klog.InfoS("Pod Security on the node", "defaults", fmt.Sprintf("enforce=%s audit=%s warn=%s", c.Defaults.Enforce, c.Defaults.Audit, c.Defaults.Warn),
		"namespaces", len(c.Namespaces), "exemptNamespaces", c.ExemptNamespaces, "exemptRuntimeClasses", c.ExemptRuntimeClasses)
	if len(c.ExemptUsernames) > 0 {
		klog.InfoS("Pod Security exemptions by username do not apply on a node: the CRI does not say who created a pod", "usernames", c.ExemptUsernames)
	}
}
