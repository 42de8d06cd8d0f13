package cri_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/internal/psafixtures"
	"github.com/armorshim/armorshim/shim"
)

// kubeletDir holds the CRI calls a real kubelet v1.37 made in the
// integration guest (make record-kubelet): one JSON file per
// RunPodSandbox (<ns>_<pod>_sandbox.json), CreateContainer
// (<ns>_<pod>_<container>_<attempt>.json) and ImageStatus (image_<ref>.json),
// and outcomes.json, what the kubelet and containerd reported per fixture.
const kubeletDir = "testdata/kubelet"

// kubeletRecord is one recorded call (integration/crirecord's Record).
type kubeletRecord struct {
	Method   string          `json:"method"`
	Request  json.RawMessage `json:"request"`
	Response json.RawMessage `json:"response"`
	Code     string          `json:"code"`
	Message  string          `json:"message"`
}

// kubeletOutcome is what the guest saw of one fixture.
type kubeletOutcome struct {
	Outcome   string `json:"outcome"`
	Container string `json:"container"`
	Message   string `json:"message"`
}

func readRecord(t *testing.T, name string, req proto.Message) *kubeletRecord {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(kubeletDir, name))
	if err != nil {
		return nil
	}
	rec := &kubeletRecord{}
	if err := json.Unmarshal(b, rec); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if err := protojson.Unmarshal(rec.Request, req); err != nil {
		t.Fatalf("%s: request: %v", name, err)
	}
	return rec
}

// recordedImages answers ImageStatus as containerd answered the kubelet.
func recordedImages(t *testing.T) map[string]*runtimeapi.ImageStatusResponse {
	t.Helper()
	names, _ := filepath.Glob(filepath.Join(kubeletDir, "image_*.json"))
	out := map[string]*runtimeapi.ImageStatusResponse{}
	for _, n := range names {
		req := &runtimeapi.ImageStatusRequest{}
		rec := readRecord(t, filepath.Base(n), req)
		resp := &runtimeapi.ImageStatusResponse{}
		if err := protojson.Unmarshal(rec.Response, resp); err != nil {
			t.Fatalf("%s: response: %v", n, err)
		}
		// the kubelet asks by name; a CreateContainer names the image by
		// the ID the kubelet resolved, which armorshim asks for
		out[req.GetImage().GetImage()] = resp
		out[resp.GetImage().GetId()] = resp
		for _, ref := range append(resp.GetImage().GetRepoTags(), resp.GetImage().GetRepoDigests()...) {
			out[ref] = resp
		}
	}
	return out
}

// TestKubeletPodSecurityParity replays what a real kubelet sent for every
// Pod Security Admission fixture of baseline and restricted through
// armorshim enforcing the fixture's level, and compares armorshim's
// verdict and words with upstream's on the fixture's pod spec
// (psafixtures.Compare: equal, or a documented blind spot).
func TestKubeletPodSecurityParity(t *testing.T) {
	dir, err := psafixtures.Dir()
	if err != nil {
		t.Fatal(err)
	}
	fixtures, err := psafixtures.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var outcomes map[string]kubeletOutcome
	b, err := os.ReadFile(filepath.Join(kubeletDir, "outcomes.json"))
	if err != nil {
		t.Fatalf("no recorded kubelet requests (make record-kubelet): %v", err)
	}
	if err := json.Unmarshal(b, &outcomes); err != nil {
		t.Fatal(err)
	}

	images := recordedImages(t)
	be := startBackend(t)
	be.onUnary("/runtime.v1.ImageService/ImageStatus", func(_ context.Context, req any, _ grpc.UnaryHandler) (any, error) {
		ref := req.(*runtimeapi.ImageStatusRequest).GetImage().GetImage()
		if r, ok := images[ref]; ok {
			return r, nil
		}
		return nil, status.Errorf(codes.NotFound, "image %q was not recorded", ref)
	})
	// what the guest had loaded: the fixtures' "foo" and the tutorial's
	sysfs := newFakeSysfs(t, "Y", "foo (enforce)", denyWrite+" (enforce)")
	sh := startArmorshim(t, be.sock, sysfs, func(c *shim.Config) {
		c.PodSecurity.Namespaces = map[string]map[string]string{}
		for _, l := range psafixtures.Levels {
			c.PodSecurity.Namespaces["psa-"+string(l)] = map[string]string{"pod-security.kubernetes.io/enforce": string(l)}
		}
	})
	rs := runtimeapi.NewRuntimeServiceClient(dial(t, sh.sock))

	counts := map[string]int{}
	for _, f := range fixtures {
		if _, ok := outcomes[f.Path]; !ok {
			counts["not recorded"]++
			continue
		}
		t.Run(f.Path, func(t *testing.T) {
			node := replayFixture(t, rs, f, outcomes[f.Path])
			class, detail := psafixtures.Compare(f, node, psafixtures.BlindSpots)
			counts[class]++
			if class == "difference" {
				t.Errorf("%s", detail)
			}
		})
	}
	t.Logf("%d fixtures: %d recorded (%d equal, %d blind spots, %d differences), %d not recorded yet",
		len(fixtures), len(fixtures)-counts["not recorded"], counts["equal"], counts["blind spot"], counts["difference"], counts["not recorded"])
	if len(fixtures) == counts["not recorded"] {
		t.Fatal("no fixture recorded")
	}
}

// replayFixture sends the fixture's recorded RunPodSandbox and then its
// containers' CreateContainer, in the kubelet's order, and says what
// armorshim did. Where the kubelet stopped before armorshim refused
// anything (it refused the pod itself, or never got to the CRI), the
// guest's outcome stands.
func replayFixture(t *testing.T, rs runtimeapi.RuntimeServiceClient, f *psafixtures.Fixture, vm kubeletOutcome) psafixtures.NodeResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	prefix := f.Namespace() + "_" + f.PodName() + "-armorshim-guest"
	sbReq := &runtimeapi.RunPodSandboxRequest{}
	sbRec := readRecord(t, prefix+"_sandbox.json", sbReq)
	if sbRec == nil {
		return psafixtures.NodeResult{Outcome: vm.Outcome, Container: vm.Container, Message: vm.Message}
	}
	if got := sbReq.GetConfig().GetAnnotations()[psafixtures.Annotation]; got != f.Path {
		t.Fatalf("the recorded sandbox is of fixture %q", got)
	}
	refused := func(err error, ctr string) psafixtures.NodeResult {
		st := status.Convert(err)
		if st.Code() == codes.PermissionDenied && strings.HasPrefix(st.Message(), "Forbidden: violates PodSecurity") {
			return psafixtures.NodeResult{Outcome: psafixtures.Refused, Container: ctr, Message: st.Message()}
		}
		return psafixtures.NodeResult{Outcome: psafixtures.Failed, Container: ctr, Message: st.Message()}
	}
	// the replay must decide as armorshim decided in the guest (other
	// errors came from containerd, which the fake runtime is not)
	decided := func(msg string) bool {
		return strings.HasPrefix(msg, "Forbidden: ") || strings.HasPrefix(msg, "Blocked: ")
	}
	same := func(rec *kubeletRecord, err error) {
		st := status.Convert(err)
		if !decided(st.Message()) && !decided(rec.Message) {
			return
		}
		if st.Code().String() != rec.Code || st.Message() != rec.Message {
			t.Errorf("%s: replayed %s %q, the guest answered %s %q", rec.Method, st.Code(), st.Message(), rec.Code, rec.Message)
		}
	}
	sb, err := rs.RunPodSandbox(ctx, sbReq)
	same(sbRec, err)
	if err != nil {
		return refused(err, "")
	}
	for _, name := range psafixtures.Containers(f.Pod) {
		req := &runtimeapi.CreateContainerRequest{}
		rec := readRecord(t, prefix+"_"+name+"_0.json", req)
		if rec == nil {
			// the kubelet stopped before this container
			return psafixtures.NodeResult{Outcome: vm.Outcome, Container: vm.Container, Message: vm.Message}
		}
		req.PodSandboxId = sb.GetPodSandboxId()
		_, err := rs.CreateContainer(ctx, req)
		same(rec, err)
		if err != nil {
			return refused(err, name)
		}
	}
	return psafixtures.NodeResult{Outcome: psafixtures.Admitted}
}
