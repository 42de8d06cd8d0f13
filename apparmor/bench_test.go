package apparmor_test

// Benchmarks of the CreateContainer decision (issue 5, P4). Run them with
//
//	go test -run '^$' -bench . ./apparmor

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/apparmor"
)

// benchLoadedProfiles is the profile count of issue 5's P4.
const benchLoadedProfiles = 10000

// benchSnapshot is an enabled host with n profiles loaded.
func benchSnapshot(n int) *apparmor.Snapshot {
	s := &apparmor.Snapshot{Enabled: true, Revision: "1", Profiles: make(map[string]apparmor.Mode, n)}
	for i := 0; i < n; i++ {
		s.Profiles[benchProfileName(i)] = apparmor.ModeEnforce
	}
	return s
}

// benchProfileName names the i-th loaded profile.
func benchProfileName(i int) string { return fmt.Sprintf("k8s-team-%d-app-%05d", i%23, i) }

// benchCreateRequest is a CreateContainer request as a kubelet ≥ 1.30 sends
// it for a localhost profile: both fields set, so the decision changes
// nothing and armorshim forwards the original bytes.
func benchCreateRequest(profile string) *runtimeapi.CreateContainerRequest {
	labels := map[string]string{
		"io.kubernetes.container.name": "app", "io.kubernetes.pod.name": "app-0",
		"io.kubernetes.pod.namespace": "team-1", "io.kubernetes.pod.uid": "0f3c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
	}
	var envs []*runtimeapi.KeyValue
	for i := 0; i < 20; i++ {
		envs = append(envs, &runtimeapi.KeyValue{Key: fmt.Sprintf("SERVICE_%d_PORT", i), Value: []byte(fmt.Sprint(8000 + i))})
	}
	return &runtimeapi.CreateContainerRequest{
		PodSandboxId: "5f0c1c7e8b9a",
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "app"},
			Image:    &runtimeapi.ImageSpec{Image: "registry.example.com/team/app:v1.2.0"},
			Command:  []string{"/app"}, Envs: envs, Labels: labels,
			Annotations: map[string]string{"io.kubernetes.container.hash": "5f2e1d7a", "io.kubernetes.container.restartCount": "0"},
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				Apparmor:        &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: profile},
				ApparmorProfile: apparmor.LocalhostPrefix + profile,
			}},
		},
		SandboxConfig: &runtimeapi.PodSandboxConfig{
			Metadata: &runtimeapi.PodSandboxMetadata{Name: "app-0", Namespace: "team-1", Uid: labels["io.kubernetes.pod.uid"]},
			Labels:   labels,
		},
	}
}

// BenchmarkDecideLocalhost10k: the decision alone on a decoded request, the
// host snapshot given (the cached case).
func BenchmarkDecideLocalhost10k(b *testing.B) {
	snap := benchSnapshot(benchLoadedProfiles)
	req := benchCreateRequest(benchProfileName(5000))
	pol := &apparmor.Policy{}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := apparmor.Decide(req, snap, pol); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecideModifies: a request carrying only the beta annotation, so
// the decision sets both fields (armorshim then re-encodes the request). The
// time includes cloning the request, which Decide modifies.
func BenchmarkDecideModifies(b *testing.B) {
	snap := benchSnapshot(benchLoadedProfiles)
	pol := &apparmor.Policy{}
	base := benchCreateRequest(benchProfileName(5000))
	base.Config.Linux.SecurityContext.Apparmor = nil
	base.Config.Linux.SecurityContext.ApparmorProfile = ""
	base.SandboxConfig.Annotations = map[string]string{apparmor.AnnotationPrefix + "app": apparmor.LocalhostPrefix + benchProfileName(5000)}
	b.ReportAllocs()
	for b.Loop() {
		req := proto.Clone(base).(*runtimeapi.CreateContainerRequest)
		dec, err := apparmor.Decide(req, snap, pol)
		if err != nil || !dec.Modified {
			b.Fatalf("decision %+v, %v", dec, err)
		}
	}
}

// BenchmarkDecodeDecide10k: what armorshim does per CreateContainer in the
// cached case: decode the request bytes, then decide.
func BenchmarkDecodeDecide10k(b *testing.B) {
	snap := benchSnapshot(benchLoadedProfiles)
	raw, err := proto.Marshal(benchCreateRequest(benchProfileName(5000)))
	if err != nil {
		b.Fatal(err)
	}
	pol := &apparmor.Policy{}
	b.SetBytes(int64(len(raw)))
	b.ReportAllocs()
	for b.Loop() {
		req := &runtimeapi.CreateContainerRequest{}
		if err := proto.Unmarshal(raw, req); err != nil {
			b.Fatal(err)
		}
		if _, err := apparmor.Decide(req, snap, pol); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRefusalNotLoaded: a refusal, which builds the message and the
// target names.
func BenchmarkRefusalNotLoaded(b *testing.B) {
	snap := benchSnapshot(benchLoadedProfiles)
	req := benchCreateRequest("not-loaded")
	pol := &apparmor.Policy{}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := apparmor.Decide(req, snap, pol); err == nil {
			b.Fatal("not refused")
		}
	}
}
