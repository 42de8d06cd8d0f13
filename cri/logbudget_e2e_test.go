package cri_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/klog/v2"
)

// A retry storm of refusals and warnings logs one line per distinct
// refusal, while metrics count every one: AppArmor (Blocked), Pod Security
// (Forbidden, and its warnings) and refused paths, each repeated; and
// every distinct pod still gets its line.
func TestRefusalLogsAreBounded(t *testing.T) {
	logs := captureKlog(t)
	pe := newPSSEnv(t, nil)
	ctx := ctxTimeout(t, 60*time.Second)
	const storm = 100

	blocked := func(name string) *runtimeapi.CreateContainerRequest {
		pod := kubeletPod("default", name)
		cc := kubeletContainer(pod, "hello")
		cc.Linux.SecurityContext.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: allowWrite}
		return &runtimeapi.CreateContainerRequest{PodSandboxId: "sb", Config: cc, SandboxConfig: pod}
	}
	// The seed's nginx: admitted (baseline), warned (restricted).
	nginx := kubeletPod("example", "nginx")
	sb, err := pe.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: nginx})
	if err != nil {
		t.Fatal(err)
	}
	warned := &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, Config: kubeletContainer(nginx, "nginx"), SandboxConfig: nginx}
	for i := 0; i < storm; i++ {
		if _, err := pe.runtime.CreateContainer(ctx, blocked("retried")); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("AppArmor refusal %d: %v", i, err)
		}
		if _, st := rawUnary(ctx, pe.through, "/runtime.v1.RuntimeService/CreateContainer", privilegedUnconfined(t)); st.Code() != codes.PermissionDenied {
			t.Fatalf("Pod Security refusal %d: %s", i, statusString(st))
		}
		if _, st := rawUnary(ctx, pe.through, "/containerd.services.tasks.v1.Tasks/Create", nil); st.Code() != codes.Unimplemented {
			t.Fatalf("path refusal %d: %s", i, statusString(st))
		}
		if _, err := pe.runtime.CreateContainer(ctx, warned); err != nil {
			t.Fatalf("warned container %d: %v", i, err)
		}
	}
	// Distinct pods, each refused a few times: a line each.
	const pods = 10
	for i := 0; i < 3*pods; i++ {
		if _, err := pe.runtime.CreateContainer(ctx, blocked(fmt.Sprintf("other-%d", i%pods))); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("AppArmor refusal of other-%d: %v", i%pods, err)
		}
	}

	klog.Flush()
	out := logs.String()
	count := func(sub string) int { return strings.Count(out, sub) }
	for sub, want := range map[string]int{
		`"Refused CreateContainer" pod="default/retried"`: 1,
		`"Refused by Pod Security" pod="default/escape"`:  1,
		`containerd.services.tasks.v1.Tasks`:              1,
		`"Pod Security warning" pod="example/nginx"`:      1,
		`"Refused CreateContainer"`:                       1 + pods,
	} {
		if got := count(sub); got != want {
			t.Errorf("%d lines with %s, want %d", got, sub, want)
		}
	}
	for i := 0; i < pods; i++ {
		if got := count(fmt.Sprintf(`"Refused CreateContainer" pod="default/other-%d"`, i)); got != 1 {
			t.Errorf("other-%d: %d lines, want 1", i, got)
		}
	}
	if t.Failed() {
		t.Logf("log:\n%s", out)
	}

	// Every refusal and warning is counted.
	body := pe.scrape(t)
	for _, want := range []string{
		fmt.Sprintf(`armorshim_create_container_decisions_total{cause="not-loaded",outcome="refused",reason="Blocked"} %d`, storm+3*pods),
		fmt.Sprintf(`armorshim_cri_requests_total{code="Unimplemented",method="unknown"} %d`, storm),
		fmt.Sprintf(`armorshim_cri_requests_total{code="PermissionDenied",method="/runtime.v1.RuntimeService/CreateContainer"} %d`, storm),
		fmt.Sprintf(`armorshim_pod_security_evaluations_total{level="restricted",mode="warn",outcome="violation"} %d`, storm),
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%s", want, grepLines(body, "armorshim_"))
		}
	}
}
