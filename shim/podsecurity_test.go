package shim_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/armorshim/armorshim/shim"
)

// seedPSS is the seed's cluster-level-pss.yaml, verbatim.
var seedPSS = mustRead("../pss/testdata/cluster-level-pss.yaml")

func TestLoadConfigPodSecurity(t *testing.T) {
	dir := t.TempDir()
	pssFile := filepath.Join(dir, "cluster-level-pss.yaml")
	writeConfig(t, pssFile, seedPSS)
	badPSS := filepath.Join(dir, "bad-pss.yaml")
	writeConfig(t, badPSS, strings.Replace(seedPSS, `enforce: "baseline"`, `enforce: "strict"`, 1))

	path := filepath.Join(dir, "config.yaml")
	writeConfig(t, path, header+`podSecurity:
  configFile: `+pssFile+`
  namespaces:
    example:
      pod-security.kubernetes.io/enforce: baseline
      pod-security.kubernetes.io/warn: restricted
  auditLog:
    path: /var/log/armorshim/pod-security.log
`)
	cfg, err := shim.LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := cfg.PodSecurity.Build()
	if err != nil || ev == nil {
		t.Fatalf("Build: %v %v", ev, err)
	}
	if p := ev.Policy("example"); p.Enforce.String() != "baseline:latest" || p.Warn.String() != "restricted:latest" || p.Audit.String() != "restricted:latest" {
		t.Errorf("example: %v", p.String())
	}
	if ev.Exemption("kube-system", "") == "" || ev.Config().KubeletRootDir != "/var/lib/kubelet" {
		t.Errorf("exemptions or kubelet root lost: %+v", ev.Config())
	}
	if cfg.PodSecurity.AuditLog.MaxSizeMiB != 100 || cfg.PodSecurity.AuditLog.MaxFiles != 5 {
		t.Errorf("audit log defaults: %+v", cfg.PodSecurity.AuditLog)
	}

	// Off unless configured.
	writeConfig(t, path, header)
	if cfg, err := shim.LoadConfig(path); err != nil {
		t.Fatal(err)
	} else if ev, err := cfg.PodSecurity.Build(); ev != nil || err != nil {
		t.Errorf("unconfigured: %v %v", ev, err)
	}

	for name, tc := range map[string]struct{ body, want string }{
		"unknown field":       {"podSecurity:\n  configPath: x\n", "configPath"},
		"missing file":        {"podSecurity:\n  configFile: " + filepath.Join(dir, "absent.yaml") + "\n", "podSecurity.configFile"},
		"bad level in file":   {"podSecurity:\n  configFile: " + badPSS + "\n", "podSecurity.configFile: " + badPSS},
		"bad namespace label": {"podSecurity:\n  namespaces:\n    example:\n      pod-security.kubernetes.io/enforce: strict\n", "podSecurity.namespaces.example"},
		"unknown label":       {"podSecurity:\n  namespaces:\n    example:\n      pod-security.kubernetes.io/enforced: baseline\n", "podSecurity.namespaces.example"},
		"relative root":       {"podSecurity:\n  namespaces: {example: {pod-security.kubernetes.io/enforce: baseline}}\n  kubeletRootDir: var/lib/kubelet\n", "podSecurity.kubeletRootDir"},
		"relative audit log":  {"podSecurity:\n  namespaces: {example: {pod-security.kubernetes.io/enforce: baseline}}\n  auditLog: {path: pss.log}\n", "podSecurity.auditLog.path"},
		"no rotation":         {"podSecurity:\n  namespaces: {example: {pod-security.kubernetes.io/enforce: baseline}}\n  auditLog: {path: /var/log/pss.log, maxFiles: 0}\n", "podSecurity.auditLog.maxFiles"},
	} {
		t.Run(name, func(t *testing.T) {
			writeConfig(t, path, header+tc.body)
			_, err := shim.LoadConfig(path)
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %s and %q", err, path, tc.want)
			}
		})
	}
	if _, err := os.Stat(badPSS); err != nil {
		t.Fatal(err)
	}
}

func mustRead(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	return string(b)
}
