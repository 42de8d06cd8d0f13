package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/shim"
)

func TestParseSamples(t *testing.T) {
	text := `# HELP armorshim_start_attestations_total StartContainer confinement attestations.
# TYPE armorshim_start_attestations_total counter
armorshim_start_attestations_total{outcome="attested"} 1520
armorshim_start_attestations_total{outcome="unverified"} 3
armorshim_cri_requests_total{code="OK",method="/runtime.v1.RuntimeService/Version"} 12
armorshim_start_attestation_pids_total{source="event"} 1500
armorshim_start_attestation_pids_total{source="status"} 23
`
	got, err := parseSamples(strings.NewReader(text), `armorshim_start_attestations_total{outcome="`)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["attested"] != 1520 || got["unverified"] != 3 {
		t.Errorf("outcomes = %v", got)
	}
	got, err = parseSamples(strings.NewReader(text), `armorshim_start_attestation_pids_total{source="`)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got["event"] != 1500 || got["status"] != 23 {
		t.Errorf("pid sources = %v", got)
	}
}

// The configuration files the bench writes load, with the mode asked for
// (an unquoted off would be YAML's false) and the kernel log off.
func TestShimConfig(t *testing.T) {
	for _, mode := range []string{"enforce", "off"} {
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := writeShimConfig(path, mode); err != nil {
			t.Fatal(err)
		}
		cfg, err := shim.LoadConfig(path)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Attestation.Mode != mode || cfg.Denials.Enabled() || cfg.Attestation.RuntimeDefaultProfile != runtimeDefaultProfile {
			t.Errorf("mode %s: attestation %+v, denials %+v", mode, cfg.Attestation, cfg.Denials)
		}
	}
}

// The verbose info is containerd's shape, with a pid the fake procfs has
// and a config that asks no profile, so armorshim expects the runtime's
// default, which the fake process runs under.
func TestVerboseInfo(t *testing.T) {
	f := newFakeRuntime(10)
	c := f.containers[7]
	info, err := f.verboseInfo(c, f.statusByID[c.Id])
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		SandboxID   string                      `json:"sandboxID"`
		Pid         int                         `json:"pid"`
		Config      *runtimeapi.ContainerConfig `json:"config"`
		RuntimeSpec json.RawMessage             `json:"runtimeSpec"`
	}
	if err := json.Unmarshal([]byte(info), &v); err != nil {
		t.Fatal(err)
	}
	if v.SandboxID != c.PodSandboxId || v.Pid != fakePid(7) || v.Config.GetMetadata().GetName() != c.Metadata.Name {
		t.Errorf("info: sandbox %q pid %d config %v", v.SandboxID, v.Pid, v.Config.GetMetadata())
	}
	if n := len(v.RuntimeSpec); n < 2<<10 || n > 16<<10 {
		t.Errorf("runtimeSpec is %d bytes, want a few KB", n)
	}
	prof, _, err := apparmor.Resolve(&runtimeapi.CreateContainerRequest{Config: v.Config})
	if err != nil {
		t.Fatal(err)
	}
	exp, ok := apparmor.Expect(prof, false, &apparmor.Policy{RuntimeDefault: runtimeDefaultProfile})
	if !ok || exp.Check(runtimeDefaultProfile+" (enforce)", nil) != "" {
		t.Errorf("expectation %v (%v) does not accept the fake process's label", exp, ok)
	}

	procfs, err := writeProcfs(t.TempDir(), 10)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := readTimes(procfs, 10, 20); err != nil {
		t.Fatal(err)
	}
	if _, err := decodeTimes(info, 3); err != nil {
		t.Fatal(err)
	}
}
