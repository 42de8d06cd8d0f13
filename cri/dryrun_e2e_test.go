package cri_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/cri"
	"github.com/armorshim/armorshim/shim"
)

// The AppArmor policy's rules in warn and audit mode, end to end, with
// what a real kubelet sent for the AppArmor tutorial's pods and the Pod
// Security tutorial's nginx (no profile).

const (
	helloRecord  = "default_hello-apparmor-armorshim-guest_hello_0.json"   // localhost/k8s-apparmor-example-deny-write, loaded
	hello2Record = "default_hello-apparmor-2-armorshim-guest_hello_0.json" // localhost/k8s-apparmor-example-allow-write, not loaded
	nginxRecord  = "example_nginx-armorshim-guest_nginx_0.json"            // asks for no profile
	nginxProfile = "k8s-nginx"                                             // loaded in complain mode
)

// dryRunEnv is armorshim in front of the fake runtime with the tutorial's
// profile loaded, k8s-nginx in complain mode, metrics and an audit log.
type dryRunEnv struct {
	backend  *backend
	sysfs    *fakeSysfs
	shim     *armorshim
	through  *grpc.ClientConn
	runtime  runtimeapi.RuntimeServiceClient
	metrics  string
	auditLog string
}

func newDryRunEnv(t *testing.T, be *backend, policy shim.PolicyConfig, reload func(*shim.Config) (*shim.Config, error)) *dryRunEnv {
	t.Helper()
	if be == nil {
		be = startBackend(t)
	}
	e := &dryRunEnv{backend: be, metrics: freeAddr(t), auditLog: filepath.Join(t.TempDir(), "audit.log")}
	e.sysfs = newFakeSysfs(t, "Y", denyWrite+" (enforce)", nginxProfile+" (complain)")
	e.shim = startArmorshimReloading(t, be.sock, e.sysfs, func(c *shim.Config) {
		c.MetricsAddress = e.metrics
		c.PodSecurity.AuditLog.Path = e.auditLog
		c.Policy = policy
	}, reload)
	e.through = dial(t, e.shim.sock)
	e.runtime = runtimeapi.NewRuntimeServiceClient(e.through)
	return e
}

// create replays a recorded CreateContainer in its recorded sandbox, as
// bytes: it returns what the backend received (nil if nothing), the bytes
// sent and the status.
func (e *dryRunEnv) create(t *testing.T, record string) (got, sent []byte, st *status.Status) {
	t.Helper()
	ctx := ctxTimeout(t, 10*time.Second)
	req := &runtimeapi.CreateContainerRequest{}
	if readRecord(t, record, req) == nil {
		t.Fatalf("no recorded request %s", record)
	}
	sb := &runtimeapi.RunPodSandboxRequest{}
	if readRecord(t, strings.TrimSuffix(record, "_"+req.GetConfig().GetMetadata().GetName()+"_0.json")+"_sandbox.json", sb) == nil {
		t.Fatalf("no recorded sandbox for %s", record)
	}
	resp, err := e.runtime.RunPodSandbox(ctx, sb)
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	req.PodSandboxId = resp.PodSandboxId
	sent, err = proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return e.send(t, sent)
}

// send sends a CreateContainer request's bytes and returns what the backend
// received (nil if nothing) and the status.
func (e *dryRunEnv) send(t *testing.T, sent []byte) (got, _ []byte, st *status.Status) {
	t.Helper()
	_, before := e.backend.createRequests()
	_, st = rawUnary(ctxTimeout(t, 10*time.Second), e.through, cri.CreateContainerMethod, sent)
	if _, raws := e.backend.createRequests(); len(raws) > len(before) {
		got = raws[len(raws)-1]
	}
	return got, sent, st
}

func (e *dryRunEnv) scrape(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + e.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (e *dryRunEnv) auditRecords(t *testing.T) []cri.AuditRecord {
	t.Helper()
	if _, err := os.Stat(e.auditLog); os.IsNotExist(err) {
		return nil
	}
	return readAuditRecords(t, e.auditLog)
}

// enforcedMessage is what armorshim enforcing policy answers the recorded
// request: the words a dry run must use.
func enforcedMessage(t *testing.T, be *backend, policy shim.PolicyConfig, record string) *status.Status {
	t.Helper()
	policy.Mode, policy.RuleModes = 0, shim.RuleModesConfig{}
	e := newDryRunEnv(t, be, policy, nil)
	_, _, st := e.create(t, record)
	return st
}

// mode is a policy mode as the configuration writes it.
func mode(words ...string) *shim.PolicyMode {
	b, _ := json.Marshal(words)
	m := new(shim.PolicyMode)
	if err := m.UnmarshalJSON(b); err != nil {
		panic(err)
	}
	return m
}

// allowedProfiles in warn: the kubelet's hello-apparmor pod, whose profile
// is not in the list, is forwarded byte for byte, logged in the words
// enforce refuses it with, and counted; the profile that is not loaded is
// refused as always.
func TestPolicyWarnForwardsUnchanged(t *testing.T) {
	logs := captureKlog(t)
	be := startBackend(t)
	policy := shim.PolicyConfig{
		AllowedProfiles: &shim.StringList{"runtime/default"},
		RuleModes:       shim.RuleModesConfig{AllowedProfiles: mode("warn")},
	}
	e := newDryRunEnv(t, be, policy, nil)

	got, sent, st := e.create(t, helloRecord)
	if st.Code() != codes.OK {
		t.Fatalf("hello-apparmor: %s, want forwarded", statusString(st))
	}
	if !bytes.Equal(got, sent) {
		t.Errorf("hello-apparmor was not forwarded byte for byte")
	}
	enforced := enforcedMessage(t, be, policy, helloRecord)
	const want = `Forbidden: AppArmor profile "localhost/k8s-apparmor-example-deny-write" is not allowed on this node; allowed profiles: [runtime/default]`
	if enforced.Code() != codes.PermissionDenied || enforced.Message() != want {
		t.Fatalf("enforced: %s, want PermissionDenied %q", statusString(enforced), want)
	}
	klog.Flush()
	line := `"Would refuse CreateContainer" pod="default/hello-apparmor-armorshim-guest" container="hello" profile="localhost/k8s-apparmor-example-deny-write" rule="allowedProfiles" reason="Forbidden" cause="not-allowed" message=` + strconvQuote(enforced.Message())
	if out := logs.String(); !strings.Contains(out, line) {
		t.Errorf("no line\n%s\nin:\n%s", line, out)
	}
	// The retry of the kubelet is not logged again within the minute, and
	// still counted.
	e.create(t, helloRecord)
	klog.Flush()
	if n := strings.Count(logs.String(), `"Would refuse CreateContainer"`); n != 1 {
		t.Errorf("%d warning lines for one pod retried, want 1", n)
	}

	// Not loaded: refused as the kubelet saw it, warn or not.
	rec := readRecord(t, hello2Record, &runtimeapi.CreateContainerRequest{})
	got, _, st = e.create(t, hello2Record)
	if st.Code().String() != rec.Code || st.Message() != rec.Message || got != nil {
		t.Errorf("hello-apparmor-2: %s (reached the backend: %t), want %s %q", statusString(st), got != nil, rec.Code, rec.Message)
	}

	body := e.scrape(t)
	for _, m := range []string{
		`armorshim_apparmor_policy_dry_run_total{cause="not-allowed",mode="warn",reason="Forbidden",rule="allowedProfiles"} 2`,
		`armorshim_create_container_decisions_total{cause="localhost",outcome="forwarded",reason=""} 2`,
		`armorshim_create_container_decisions_total{cause="not-loaded",outcome="refused",reason="Blocked"} 1`,
	} {
		if !strings.Contains(body, m) {
			t.Errorf("metrics lack %s:\n%s", m, grepLines(body, "armorshim_apparmor_policy_dry_run_total")+"\n"+grepLines(body, "decisions_total"))
		}
	}
	if strings.Contains(body, `mode="audit"`) {
		t.Errorf("warn counted as audit:\n%s", grepLines(body, "dry_run"))
	}
	if recs := e.auditRecords(t); len(recs) != 0 {
		t.Errorf("warn wrote audit records: %+v", recs)
	}
}

// The whole policy in audit, requireEnforce in warn and audit: each
// forwarded request the policy enforced would refuse, or give the default
// profile, is one audit record in enforce's words; nothing is logged for
// audit alone.
func TestPolicyAuditRecords(t *testing.T) {
	logs := captureKlog(t)
	be := startBackend(t)
	policy := shim.PolicyConfig{
		DefaultProfile:  "runtime/default",
		AllowedProfiles: &shim.StringList{"runtime/default", "localhost/" + nginxProfile},
		RequireEnforce:  true,
		Mode:            *mode("audit"),
		RuleModes:       shim.RuleModesConfig{RequireEnforce: mode("warn", "audit")},
	}
	e := newDryRunEnv(t, be, policy, nil)

	// hello-apparmor: outside the list.
	got, sent, st := e.create(t, helloRecord)
	if st.Code() != codes.OK || !bytes.Equal(got, sent) {
		t.Fatalf("hello-apparmor: %s, forwarded unchanged: %t", statusString(st), bytes.Equal(got, sent))
	}
	// nginx asks for nothing: forwarded without the default profile.
	got, sent, st = e.create(t, nginxRecord)
	if st.Code() != codes.OK || !bytes.Equal(got, sent) {
		t.Fatalf("nginx: %s, forwarded unchanged: %t", statusString(st), bytes.Equal(got, sent))
	}
	// A container asking for k8s-nginx, loaded in complain mode.
	pod := kubeletPod("default", "web")
	sb, err := e.runtime.RunPodSandbox(ctxTimeout(t, 10*time.Second), &runtimeapi.RunPodSandboxRequest{Config: pod})
	if err != nil {
		t.Fatal(err)
	}
	cc := kubeletContainer(pod, "nginx")
	cc.Linux.SecurityContext.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: nginxProfile}
	cc.Linux.SecurityContext.ApparmorProfile = "localhost/" + nginxProfile
	complainReq, _ := proto.Marshal(&runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: cc, SandboxConfig: pod})
	got, sent, st = e.send(t, complainReq)
	if st.Code() != codes.OK || !bytes.Equal(got, sent) {
		t.Fatalf("k8s-nginx in complain mode: %s, forwarded unchanged: %t", statusString(st), bytes.Equal(got, sent))
	}
	// Not loaded: refused, and not audited.
	rec := readRecord(t, hello2Record, &runtimeapi.CreateContainerRequest{})
	if got, _, st := e.create(t, hello2Record); st.Message() != rec.Message || got != nil {
		t.Errorf("hello-apparmor-2: %s, want %q", statusString(st), rec.Message)
	}

	enforcedHello := enforcedMessage(t, be, policy, helloRecord).Message()
	enforcedComplain := func() string {
		policy := policy
		policy.Mode, policy.RuleModes = 0, shim.RuleModesConfig{}
		en := newDryRunEnv(t, be, policy, nil)
		_, _, st := en.send(t, complainReq)
		return st.Message()
	}()
	if !strings.HasPrefix(enforcedHello, "Forbidden: ") || !strings.HasPrefix(enforcedComplain, "Blocked: ") {
		t.Fatalf("enforced: %q, %q", enforcedHello, enforcedComplain)
	}
	type want struct{ pod, container, rule, profile, reason, cause, message string }
	wants := []want{
		{"hello-apparmor-armorshim-guest", "hello", "allowedProfiles", "localhost/" + denyWrite, "Forbidden", "not-allowed", enforcedHello},
		{"nginx-armorshim-guest", "nginx", "defaultProfile", "runtime/default", "", "default",
			`AppArmor profile "runtime/default" would be applied (defaultProfile): the container asks for none`},
		{"web", "nginx", "requireEnforce", "localhost/" + nginxProfile, "Blocked", "not-enforce", enforcedComplain},
	}
	recs := e.auditRecords(t)
	if len(recs) != len(wants) {
		t.Fatalf("audit records %+v, want %d", recs, len(wants))
	}
	for i, w := range wants {
		r := recs[i]
		if r.Policy != cri.AuditAppArmor || r.Request != "CreateContainer" || r.Mode != "audit" || r.Time.IsZero() ||
			r.Pod != w.pod || r.Container != w.container || r.Rule != w.rule || r.Profile != w.profile ||
			r.Reason != w.reason || r.Cause != w.cause || r.Message != w.message || r.Level != "" || r.Violations != nil {
			t.Errorf("audit record %d:\n got %+v\nwant %+v", i, r, w)
		}
	}
	if ns := recs[1].Namespace; ns != "example" {
		t.Errorf("nginx's namespace %q", ns)
	}
	// The record as written: the policy named, no Pod Security fields.
	b, _ := os.ReadFile(e.auditLog)
	if first := strings.SplitN(string(b), "\n", 2)[0]; !strings.Contains(first, `"policy":"AppArmor"`) || strings.Contains(first, `"level"`) {
		t.Errorf("audit line %s", first)
	}

	klog.Flush()
	out := logs.String()
	if n := strings.Count(out, `"Would refuse CreateContainer"`); n != 1 || !strings.Contains(out, `rule="requireEnforce"`) {
		t.Errorf("%d warning lines, want one, of requireEnforce (in warn and audit):\n%s", n, out)
	}
	if strings.Contains(out, "Would apply the default AppArmor profile") {
		t.Errorf("defaultProfile in audit was logged:\n%s", out)
	}
	body := e.scrape(t)
	for _, m := range []string{
		`armorshim_apparmor_policy_dry_run_total{cause="not-allowed",mode="audit",reason="Forbidden",rule="allowedProfiles"} 1`,
		`armorshim_apparmor_policy_dry_run_total{cause="default",mode="audit",reason="",rule="defaultProfile"} 1`,
		`armorshim_apparmor_policy_dry_run_total{cause="not-enforce",mode="audit",reason="Blocked",rule="requireEnforce"} 1`,
		`armorshim_apparmor_policy_dry_run_total{cause="not-enforce",mode="warn",reason="Blocked",rule="requireEnforce"} 1`,
		`armorshim_create_container_decisions_total{cause="not-loaded",outcome="refused",reason="Blocked"} 1`,
	} {
		if !strings.Contains(body, m) {
			t.Errorf("metrics lack %s:\n%s", m, grepLines(body, "dry_run"))
		}
	}
}

// Enforce, written out, decides as before: refused, the default applied,
// nothing reported as a dry run.
func TestPolicyEnforceUnchanged(t *testing.T) {
	logs := captureKlog(t)
	policy := shim.PolicyConfig{
		DefaultProfile:  "runtime/default",
		AllowedProfiles: &shim.StringList{"runtime/default"},
		Mode:            *mode("enforce"),
		RuleModes:       shim.RuleModesConfig{AllowedProfiles: mode("enforce")},
	}
	e := newDryRunEnv(t, nil, policy, nil)
	if got, _, st := e.create(t, helloRecord); st.Code() != codes.PermissionDenied || got != nil ||
		st.Message() != `Forbidden: AppArmor profile "localhost/k8s-apparmor-example-deny-write" is not allowed on this node; allowed profiles: [runtime/default]` {
		t.Errorf("hello-apparmor: %s", statusString(st))
	}
	got, _, st := e.create(t, nginxRecord)
	if st.Code() != codes.OK || got == nil {
		t.Fatalf("nginx: %s", statusString(st))
	}
	if sc := mustUnmarshalCreate(t, got).GetConfig().GetLinux().GetSecurityContext(); sc.GetApparmorProfile() != "runtime/default" {
		t.Errorf("nginx forwarded with %q, want the default runtime/default", sc.GetApparmorProfile())
	}
	klog.Flush()
	if out := logs.String(); strings.Contains(out, "Would ") || !strings.Contains(out, `"Refused CreateContainer"`) {
		t.Errorf("log:\n%s", out)
	}
	if body := e.scrape(t); strings.Contains(body, "armorshim_apparmor_policy_dry_run_total{") {
		t.Errorf("dry run counted under enforce:\n%s", grepLines(body, "dry_run"))
	}
	if recs := e.auditRecords(t); len(recs) != 0 {
		t.Errorf("audit records under enforce: %+v", recs)
	}
}

// A reload switches modes for the calls after it: warn, then enforce.
func TestPolicyModeReload(t *testing.T) {
	var mu sync.Mutex
	next := *mode("warn")
	policy := shim.PolicyConfig{AllowedProfiles: &shim.StringList{"runtime/default"}, Mode: next}
	e := newDryRunEnv(t, nil, policy, func(c *shim.Config) (*shim.Config, error) {
		mu.Lock()
		defer mu.Unlock()
		c.Policy.Mode = next
		return c, nil
	})
	if _, _, st := e.create(t, helloRecord); st.Code() != codes.OK {
		t.Fatalf("in warn: %s", statusString(st))
	}
	mu.Lock()
	next = *mode("enforce")
	mu.Unlock()
	if err := e.shim.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if got, _, st := e.create(t, helloRecord); st.Code() != codes.PermissionDenied || got != nil {
		t.Errorf("after the reload to enforce: %s", statusString(st))
	}
	mu.Lock()
	next = *mode("audit")
	mu.Unlock()
	if err := e.shim.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if _, _, st := e.create(t, helloRecord); st.Code() != codes.OK {
		t.Errorf("after the reload to audit: %s", statusString(st))
	}
	if recs := e.auditRecords(t); len(recs) != 1 || recs[0].Rule != "allowedProfiles" {
		t.Errorf("audit records after the reload to audit: %+v", recs)
	}
}
