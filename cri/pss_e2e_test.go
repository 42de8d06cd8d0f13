package cri_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/cri"
	"github.com/armorshim/armorshim/shim"
)

// seedPSS is the seed's cluster-level-pss.yaml, verbatim.
var seedPSS = mustRead("../pss/testdata/cluster-level-pss.yaml")

const seedRestrictedWarning = `would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "nginx" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "nginx" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "nginx" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")`

// pssEnv is the chain with Pod Security configured from the seed's file,
// an audit log and metrics.
type pssEnv struct {
	*env
	auditLog, metrics string
	cfgFile           string
}

func newPSSEnv(t *testing.T, reload func(*shim.Config) (*shim.Config, error)) *pssEnv {
	t.Helper()
	dir := t.TempDir()
	pe := &pssEnv{env: &env{backend: startBackend(t)}, auditLog: filepath.Join(dir, "audit", "pss.log"), cfgFile: filepath.Join(dir, "cluster-level-pss.yaml")}
	if err := os.WriteFile(pe.cfgFile, []byte(seedPSS), 0o644); err != nil {
		t.Fatal(err)
	}
	pe.metrics = freeAddr(t)
	pe.sysfs = newFakeSysfs(t, "Y", denyWrite+" (enforce)")
	pe.shim = startArmorshimReloading(t, pe.backend.sock, pe.sysfs, func(c *shim.Config) {
		c.MetricsAddress = pe.metrics
		c.PodSecurity.ConfigFile = pe.cfgFile
		c.PodSecurity.AuditLog.Path = pe.auditLog
		c.PodSecurity.Namespaces = map[string]map[string]string{"legacy": {"pod-security.kubernetes.io/enforce": "privileged"}}
	}, reload)
	pe.direct = dial(t, pe.backend.sock)
	pe.through = dial(t, pe.shim.sock)
	pe.runtime = runtimeapi.NewRuntimeServiceClient(pe.through)
	pe.image = runtimeapi.NewImageServiceClient(pe.through)
	return pe
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (pe *pssEnv) scrape(t *testing.T) string {
	t.Helper()
	resp, err := http.Get("http://" + pe.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

func (pe *pssEnv) auditRecords(t *testing.T) []cri.AuditRecord {
	t.Helper()
	return readAuditRecords(t, pe.auditLog)
}

// readAuditRecords reads every record of the audit log at path.
func readAuditRecords(t *testing.T, path string) []cri.AuditRecord {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []cri.AuditRecord
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r cri.AuditRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		out = append(out, r)
	}
	return out
}

// syncBuffer collects klog's output.
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

func captureKlog(t *testing.T) *syncBuffer {
	buf := &syncBuffer{}
	klog.LogToStderr(false)
	klog.SetOutput(buf)
	t.Cleanup(func() {
		klog.Flush()
		klog.SetOutput(os.Stderr)
		klog.LogToStderr(true)
	})
	return buf
}

// kubeletPod is the sandbox config the kubelet sends for a pod without a
// securityContext (seccompDefault off).
func kubeletPod(ns, name string) *runtimeapi.PodSandboxConfig {
	uid := name + "-uid"
	return &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: ns, Uid: uid},
		Labels:   map[string]string{"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": ns, "io.kubernetes.pod.uid": uid},
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER},
			Seccomp:          &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
		}},
	}
}

// kubeletContainer is the seed's nginx container as the kubelet creates it.
func kubeletContainer(pod *runtimeapi.PodSandboxConfig, name string) *runtimeapi.ContainerConfig {
	return &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: "docker.io/library/nginx:latest"},
		Labels: map[string]string{"io.kubernetes.container.name": name, "io.kubernetes.pod.name": pod.Metadata.Name,
			"io.kubernetes.pod.namespace": pod.Metadata.Namespace, "io.kubernetes.pod.uid": pod.Metadata.Uid},
		Annotations: map[string]string{"io.kubernetes.container.ports": `[{"containerPort":80,"protocol":"TCP"}]`},
		Mounts: []*runtimeapi.Mount{
			{ContainerPath: "/etc/hosts", HostPath: "/var/lib/kubelet/pods/" + pod.Metadata.Uid + "/etc-hosts"},
		},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			Seccomp:       &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
			MaskedPaths:   []string{"/proc/kcore", "/proc/keys"},
			ReadonlyPaths: []string{"/proc/sys"},
		}},
	}
}

func hostNetwork(p *runtimeapi.PodSandboxConfig) *runtimeapi.PodSandboxConfig {
	p.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
	return p
}

func TestPodSecurityEnforce(t *testing.T) {
	pe := newPSSEnv(t, nil)
	ctx := ctxTimeout(t, 20*time.Second)

	// A static pod with hostNetwork: refused at RunPodSandbox.
	n := pe.backend.callCount()
	_, err := pe.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: hostNetwork(kubeletPod("default", "static-web"))})
	st := status.Convert(err)
	want := `Forbidden: violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true)`
	if st.Code() != codes.PermissionDenied || st.Message() != want {
		t.Fatalf("RunPodSandbox: %s, want PermissionDenied %q", statusString(st), want)
	}
	if calls := pe.backend.callsSince(n); len(calls) != 0 {
		t.Errorf("backend saw %v", calls)
	}

	// Its privileged container, created directly: refused at CreateContainer.
	pod := hostNetwork(kubeletPod("default", "static-web"))
	cc := kubeletContainer(pod, "nginx")
	cc.Linux.SecurityContext.Privileged = true
	n = pe.backend.callCount()
	_, err = pe.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: "sb", Config: cc, SandboxConfig: pod})
	st = status.Convert(err)
	want = `Forbidden: violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true), privileged (container "nginx" must not set securityContext.privileged=true)`
	if st.Code() != codes.PermissionDenied || st.Message() != want {
		t.Fatalf("CreateContainer: %s, want PermissionDenied %q", statusString(st), want)
	}
	if calls := pe.backend.callsSince(n); len(calls) != 0 {
		t.Errorf("backend saw %v", calls)
	}
	// Each refusal is audited twice: enforce (baseline) and audit (restricted).
	var modes []string
	for _, r := range pe.auditRecords(t) {
		modes = append(modes, r.Request+"/"+r.Container+"/"+r.Mode+"/"+r.Level)
	}
	if want := []string{"RunPodSandbox//enforce/baseline", "RunPodSandbox//audit/restricted", "CreateContainer/nginx/enforce/baseline", "CreateContainer/nginx/audit/restricted"}; !reflect.DeepEqual(modes, want) {
		t.Errorf("audit records %q, want %q", modes, want)
	}
	if body := pe.scrape(t); !strings.Contains(body, `armorshim_pod_security_evaluations_total{level="baseline",mode="enforce",outcome="violation"} 2`) {
		t.Errorf("metrics lack two enforce violations:\n%s", grepLines(body, "pod_security"))
	}
}

func TestPodSecurityWarnAndAudit(t *testing.T) {
	logs := captureKlog(t)
	pe := newPSSEnv(t, nil)
	ctx := ctxTimeout(t, 20*time.Second)

	// The seed's nginx pod in namespace example: admitted (baseline), warned
	// and audited (restricted).
	pod := kubeletPod("example", "nginx")
	sb, err := pe.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pod})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v", err)
	}
	if _, err := pe.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: kubeletContainer(pod, "nginx"), SandboxConfig: pod}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	klog.Flush()
	if out := logs.String(); !strings.Contains(out, `"Pod Security warning" pod="example/nginx" container="nginx" request="CreateContainer" warning=`+strconvQuote(seedRestrictedWarning)) {
		t.Errorf("no warning line with the seed's text in:\n%s", out)
	}
	recs := pe.auditRecords(t)
	if len(recs) != 1 {
		t.Fatalf("audit records %+v, want one", recs)
	}
	r := recs[0]
	wantViolations := []string{
		`allowPrivilegeEscalation != false (container "nginx" must set securityContext.allowPrivilegeEscalation=false)`,
		`unrestricted capabilities (container "nginx" must set securityContext.capabilities.drop=["ALL"])`,
		`runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true)`,
		`seccompProfile (pod or container "nginx" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")`,
	}
	if r.Policy != cri.AuditPodSecurity || r.Mode != "audit" || r.Namespace != "example" || r.Pod != "nginx" || r.Container != "nginx" || r.Level != "restricted" || r.Version != "latest" ||
		r.Request != "CreateContainer" || r.Message != seedRestrictedWarning || !reflect.DeepEqual(r.Violations, wantViolations) || r.Time.IsZero() {
		t.Errorf("audit record %+v", r)
	}
	body := pe.scrape(t)
	for _, m := range []string{
		`armorshim_pod_security_evaluations_total{level="restricted",mode="warn",outcome="violation"} 1`,
		`armorshim_pod_security_evaluations_total{level="restricted",mode="audit",outcome="violation"} 1`,
		`armorshim_pod_security_evaluations_total{level="baseline",mode="enforce",outcome="allowed"} 2`,
	} {
		if !strings.Contains(body, m) {
			t.Errorf("metrics lack %s:\n%s", m, grepLines(body, "pod_security"))
		}
	}

	// An image that runs as uid 101 and a container that drops everything:
	// restricted passes, nothing more is audited.
	pe.backend.fake.ImageService.Lock()
	pe.backend.fake.ImageService.Images["registry.example/app:1"] = &runtimeapi.Image{Id: "app", Uid: &runtimeapi.Int64Value{Value: 101}}
	pe.backend.fake.ImageService.Unlock()
	cc := kubeletContainer(pod, "app")
	cc.Image.Image = "registry.example/app:1"
	cc.Linux.SecurityContext.NoNewPrivs = true
	cc.Linux.SecurityContext.Capabilities = &runtimeapi.Capability{DropCapabilities: []string{"ALL"}}
	cc.Linux.SecurityContext.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
	if _, err := pe.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: cc, SandboxConfig: pod}); err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	if recs := pe.auditRecords(t); len(recs) != 1 {
		t.Errorf("audit records %+v, want still one", recs)
	}
}

func TestPodSecurityExemptNamespacePassesUntouched(t *testing.T) {
	pe := newPSSEnv(t, nil)
	ctx := ctxTimeout(t, 20*time.Second)
	for _, ns := range []string{"kube-system"} {
		pod := hostNetwork(kubeletPod(ns, "kube-proxy-m6hwf"))
		raw, err := proto.Marshal(&runtimeapi.RunPodSandboxRequest{Config: pod})
		if err != nil {
			t.Fatal(err)
		}
		// An unknown field: any re-encoding would move or drop it.
		raw = append(raw, 0xf8, 0x3e, 0x01)
		before := len(pe.backend.sandboxRawCopy())
		if _, st := rawUnary(ctx, pe.through, cri.RunPodSandboxMethod, raw); st.Code() != codes.OK {
			t.Fatalf("%s: RunPodSandbox: %s", ns, statusString(st))
		}
		got := pe.backend.sandboxRawCopy()
		if len(got) != before+1 || !bytes.Equal(got[before], raw) {
			t.Errorf("%s: the backend did not receive the request byte for byte", ns)
		}
		cc := kubeletContainer(pod, "kube-proxy")
		cc.Linux.SecurityContext.Privileged = true
		craw, _ := proto.Marshal(&runtimeapi.CreateContainerRequest{PodSandboxId: "sb", Config: cc, SandboxConfig: pod})
		if _, st := rawUnary(ctx, pe.through, cri.CreateContainerMethod, craw); st.Code() != codes.OK {
			t.Fatalf("%s: CreateContainer: %s", ns, statusString(st))
		}
		_, raws := pe.backend.createRequests()
		if !bytes.Equal(raws[len(raws)-1], craw) {
			t.Errorf("%s: CreateContainer was not forwarded byte for byte", ns)
		}
	}
	if body := pe.scrape(t); !strings.Contains(body, `armorshim_pod_security_exemptions_total{reason="namespace"} 2`) {
		t.Errorf("metrics lack the sandbox's and the container's namespace exemptions:\n%s", grepLines(body, "pod_security"))
	}
	if _, err := os.Stat(pe.auditLog); err != nil {
		t.Errorf("audit log: %v", err)
	} else if recs := pe.auditRecords(t); len(recs) != 0 {
		t.Errorf("audit records for exempt pods: %+v", recs)
	}
}

// A SIGHUP-style reload switches levels for the calls after it.
func TestPodSecurityReload(t *testing.T) {
	enforce := "privileged"
	var mu sync.Mutex
	pe := newPSSEnv(t, func(c *shim.Config) (*shim.Config, error) {
		mu.Lock()
		defer mu.Unlock()
		c.PodSecurity.Namespaces = map[string]map[string]string{"example": {"pod-security.kubernetes.io/enforce": enforce}}
		return c, nil
	})
	ctx := ctxTimeout(t, 20*time.Second)
	run := func() *status.Status {
		_, err := pe.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: hostNetwork(kubeletPod("example", "web"))})
		return status.Convert(err)
	}
	if err := pe.shim.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if st := run(); st.Code() != codes.OK {
		t.Fatalf("enforce=privileged: %s", statusString(st))
	}
	mu.Lock()
	enforce = "baseline"
	mu.Unlock()
	if err := pe.shim.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	if st := run(); st.Code() != codes.PermissionDenied || !strings.HasPrefix(st.Message(), `Forbidden: violates PodSecurity "baseline:latest": host namespaces`) {
		t.Fatalf("enforce=baseline: %s", statusString(st))
	}
	// A bad level keeps the one in force.
	mu.Lock()
	enforce = "strict"
	mu.Unlock()
	if err := pe.shim.srv.Reload(); err == nil || !strings.Contains(err.Error(), "podSecurity.namespaces.example") {
		t.Fatalf("reload of a bad level: %v", err)
	}
	if st := run(); st.Code() != codes.PermissionDenied {
		t.Fatalf("after a bad reload: %s", statusString(st))
	}
}

func (b *backend) sandboxRawCopy() [][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([][]byte(nil), b.sandboxRaw...)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && !strings.HasPrefix(l, "#") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func strconvQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// A runtime class exempt in a bare PodSecurityConfiguration: its sandboxes
// pass, and so do their containers, whose handler armorshim reads with
// PodSandboxStatus.
func TestPodSecurityExemptRuntimeClass(t *testing.T) {
	dir := t.TempDir()
	cfgFile := filepath.Join(dir, "pss.yaml")
	if err := os.WriteFile(cfgFile, []byte("apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\ndefaults:\n  enforce: baseline\nexemptions:\n  runtimeClasses: [kata]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	e := &env{backend: startBackend(t), sysfs: newFakeSysfs(t, "Y")}
	e.shim = startArmorshim(t, e.backend.sock, e.sysfs, func(c *shim.Config) { c.PodSecurity.ConfigFile = cfgFile })
	rt := runtimeapi.NewRuntimeServiceClient(dial(t, e.shim.sock))
	ctx := ctxTimeout(t, 20*time.Second)

	pod := hostNetwork(kubeletPod("default", "vm"))
	if _, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pod}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("runc sandbox: %v, want PermissionDenied", err)
	}
	sb, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pod, RuntimeHandler: "kata"})
	if err != nil {
		t.Fatalf("kata sandbox: %v", err)
	}
	cc := kubeletContainer(pod, "nginx")
	cc.Linux.SecurityContext.Privileged = true
	if _, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: cc, SandboxConfig: pod}); err != nil {
		t.Fatalf("container in the kata sandbox: %v", err)
	}
	runc, err := e.backend.fake.RuntimeService.RunPodSandbox(ctx, kubeletPod("default", "plain"), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: runc, Config: cc, SandboxConfig: pod}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("privileged container in a runc sandbox: %v, want PermissionDenied", err)
	}
}

func mustRead(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	return string(b)
}
