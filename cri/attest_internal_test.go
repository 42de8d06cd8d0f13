package cri

import (
	"encoding/json"
	"testing"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestPidOf(t *testing.T) {
	for _, c := range []struct {
		info string
		want int
	}{
		{`{"sandboxID":"sb","pid":4242,"removing":false,"config":{"metadata":{"name":"hello"}},"runtimeSpec":{"process":{"apparmorProfile":"x"}}}`, 4242},
		{`{"config":{"metadata":{"name":"pid"},"labels":{"pid":"7"}},"runtimeSpec":{},"pid":99}`, 99},
		{`{"sandboxID":"sb","removing":false}`, 0},
		{`{"pid":"4242"}`, 0},
		{`not json`, 0},
		{``, 0},
		{`[1,2]`, 0},
	} {
		if got := pidOf(c.info); got != c.want {
			t.Errorf("pidOf(%q) = %d, want %d", c.info, got, c.want)
		}
	}
}

func BenchmarkPidOf(b *testing.B) {
	info := `{"sandboxID":"0123456789abcdef","pid":4242,"removing":false,"snapshotKey":"k","snapshotter":"overlayfs","runtimeType":"io.containerd.runc.v2","runtimeOptions":{},"config":{"metadata":{"name":"hello"},"image":{"image":"busybox"}},"runtimeSpec":{"ociVersion":"1.2.0","process":{"args":["sh"],"apparmorProfile":"cri-containerd.apparmor.d"}}}`
	for i := 0; i < b.N; i++ {
		if pidOf(info) != 4242 {
			b.Fatal("wrong pid")
		}
	}
}

// The partial decode of the info's config keeps every field the AppArmor
// expectation depends on, as containerd writes them (encoding/json of the
// generated type).
func TestContainerInfoConfig(t *testing.T) {
	for name, cfg := range map[string]*runtimeapi.ContainerConfig{
		"field": {Metadata: &runtimeapi.ContainerMetadata{Name: "hello", Attempt: 2}, Image: &runtimeapi.ImageSpec{Image: "busybox"},
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				Apparmor:  &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "k8s-apparmor-example-deny-write"},
				RunAsUser: &runtimeapi.Int64Value{Value: 1000}}}},
		"deprecated and privileged": {Metadata: &runtimeapi.ContainerMetadata{Name: "p"},
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				Privileged: true, ApparmorProfile: "localhost/k8s-apparmor-example-deny-write"}}},
		"no linux section": {Metadata: &runtimeapi.ContainerMetadata{Name: "n"}},
	} {
		raw, err := json.Marshal(map[string]any{"pid": 1, "config": cfg, "runtimeSpec": map[string]any{"process": map[string]any{"args": []string{"sh"}}}})
		if err != nil {
			t.Fatal(err)
		}
		got, err := ConfigOfInfo(string(raw))
		if err != nil {
			t.Fatal(err)
		}
		want := &runtimeapi.ContainerConfig{Metadata: cfg.Metadata}
		if sc := cfg.GetLinux().GetSecurityContext(); sc != nil {
			want.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				Privileged: sc.Privileged, Apparmor: sc.Apparmor, ApparmorProfile: sc.ApparmorProfile}}
		}
		if !proto.Equal(got, want) {
			t.Errorf("%s: decoded %v, want %v", name, got, want)
		}
	}
}
