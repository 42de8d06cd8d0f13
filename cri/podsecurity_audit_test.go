package cri_test

import (
	"context"
	"io"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/cri"
	"github.com/armorshim/armorshim/cri/h2relay"
	"github.com/armorshim/armorshim/pss"
)

// failingWriter fails every write while full, as the audit log does on a
// full disk.
type failingWriter struct {
	full  bool
	lines int
}

func (w *failingWriter) Write(b []byte) (int, error) {
	if w.full {
		return 0, syscall.ENOSPC
	}
	w.lines++
	return len(b), nil
}

// Records the audit log cannot take are counted, and the failure is
// logged once per change, not once per record.
func TestPodSecurityAuditRecordsDroppedOnDiskFault(t *testing.T) {
	logs := captureKlog(t)
	// Each severity's log gets the lines of its severity and above: read
	// the INFO log only.
	for _, sev := range []string{"WARNING", "ERROR", "FATAL"} {
		klog.SetOutputBySeverity(sev, io.Discard)
	}
	ev, err := pss.NewEvaluator(pss.Config{KubeletRootDir: "/var/lib/kubelet", Namespaces: map[string]map[string]string{
		"example": {"pod-security.kubernetes.io/audit": "baseline"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	w := &failingWriter{full: true}
	reg := prometheus.NewRegistry()
	p := cri.New(cri.Backends{Runtime: &h2relay.Backend{Name: "runtime"}}, &apparmor.Snapshot{Enabled: true}, nil,
		cri.WithMetrics(cri.NewMetrics(reg)), cri.WithPodSecurity(ev, w))
	sandbox := func() {
		t.Helper()
		cfg := kubeletPod("example", "web")
		cfg.Linux.SecurityContext.NamespaceOptions = &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE} // hostNetwork
		in, _ := proto.Marshal(&runtimeapi.RunPodSandboxRequest{Config: cfg})
		_, inspect := p.Route(cri.RunPodSandboxMethod)
		if v := inspect(context.Background(), in); v.Status != nil {
			t.Fatalf("refused: %v", v.Status.Message())
		}
	}
	for range 3 {
		sandbox()
	}
	if got := metricValue(t, reg, "armorshim_pod_security_audit_records_dropped_total", nil); got != 3 {
		t.Errorf("dropped audit records = %v, want 3", got)
	}
	w.full = false
	sandbox()
	sandbox()
	if got := metricValue(t, reg, "armorshim_pod_security_audit_records_dropped_total", nil); got != 3 || w.lines != 2 {
		t.Errorf("after the disk has room: dropped %v, written %d; want 3 and 2", got, w.lines)
	}
	klog.Flush()
	out := logs.String()
	if n := strings.Count(out, "Cannot write the audit log"); n != 1 {
		t.Errorf("the write failure was logged %d times, want once:\n%s", n, out)
	}
	if n := strings.Count(out, "Writing the audit log again"); n != 1 {
		t.Errorf("the recovery was logged %d times, want once:\n%s", n, out)
	}
}

// The AppArmor policy's audit records share the audit log, and its count
// of dropped records.
func TestPolicyAuditRecordsDroppedOnDiskFault(t *testing.T) {
	captureKlog(t)
	w := &failingWriter{full: true}
	reg := prometheus.NewRegistry()
	pol := &apparmor.Policy{
		Allowed: []apparmor.Profile{{Type: apparmor.RuntimeDefault}},
		Modes:   map[apparmor.Rule]apparmor.RuleMode{apparmor.RuleAllowedProfiles: apparmor.Audit},
	}
	p := cri.New(cri.Backends{Runtime: &h2relay.Backend{Name: "runtime"}}, &apparmor.Snapshot{Enabled: true}, pol,
		cri.WithMetrics(cri.NewMetrics(reg)), cri.WithAuditLog(w))
	pod := kubeletPod("default", "web")
	cc := kubeletContainer(pod, "nginx")
	cc.Linux.SecurityContext.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
	in, _ := proto.Marshal(&runtimeapi.CreateContainerRequest{PodSandboxId: "sb", Config: cc, SandboxConfig: pod})
	create := func() {
		t.Helper()
		_, inspect := p.Route(cri.CreateContainerMethod)
		if v := inspect(context.Background(), in); v.Status != nil {
			t.Fatalf("refused: %v", v.Status.Message())
		}
	}
	create()
	create()
	w.full = false
	create()
	if got := metricValue(t, reg, "armorshim_pod_security_audit_records_dropped_total", nil); got != 2 || w.lines != 1 {
		t.Errorf("dropped %v, written %d; want 2 and 1", got, w.lines)
	}
	if got := metricValue(t, reg, "armorshim_apparmor_policy_dry_run_total", map[string]string{"rule": "allowedProfiles", "mode": "audit"}); got != 3 {
		t.Errorf("dry runs counted %v, want 3: a record not written is still counted", got)
	}
}
