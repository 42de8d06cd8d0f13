package cri

import (
	"encoding/json"
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func TestParseInfoPid(t *testing.T) {
	for _, c := range []struct {
		info string
		want int
		err  bool
	}{
		{`{"sandboxID":"sb","pid":4242,"removing":false,"config":{"metadata":{"name":"hello"}},"runtimeSpec":{"process":{"apparmorProfile":"x"}}}`, 4242, false},
		{`{"config":{"metadata":{"name":"pid"},"labels":{"pid":"7"}},"runtimeSpec":{},"pid":99}`, 99, false},
		{`{"sandboxID":"sb","removing":false}`, 0, false},
		{`{"pid":"4242"}`, 0, true},
		{`not json`, 0, true},
		{``, 0, true},
		{`[1,2]`, 0, true},
		{`{"sandboxID":"sb",`, 0, true},
	} {
		pid, _, err := parseInfo(c.info, false)
		if pid != c.want || (err != nil) != c.err {
			t.Errorf("parseInfo(%q) = %d, %v; want %d, error %v", c.info, pid, err, c.want, c.err)
		}
	}
}

// parseInfo stops once it has what it was asked for: what follows (the OCI
// spec, most of the document) is not read, so not even checked.
func TestParseInfoStopsEarly(t *testing.T) {
	const head = `{"sandboxID":"sb","pid":7,"config":{"metadata":{"name":"hello"}},`
	pid, cfg, err := parseInfo(head+`"runtimeSpec":{not json`, true)
	if err != nil || pid != 7 || cfg.GetMetadata().GetName() != "hello" {
		t.Errorf("pid and config: %d %v %v", pid, cfg, err)
	}
	if pid, cfg, err := parseInfo(`{"sandboxID":"sb","pid":7,"config":{not json`, false); err != nil || pid != 7 || cfg != nil {
		t.Errorf("pid only: %d %v %v", pid, cfg, err)
	}
	if _, _, err := parseInfo(`{"sandboxID":"sb","pid":7,"config":{not json`, true); err == nil {
		t.Error("a broken config decoded without an error")
	}
}

// BenchmarkParseInfo decodes the pid and config of a containerd-shaped info
// document of about 7 KB: a config of about 2.3 KB, then the OCI spec.
func BenchmarkParseInfo(b *testing.B) {
	cfg := &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "hello"},
		Image: &runtimeapi.ImageSpec{Image: "busybox:1.28"}, Command: []string{"sh", "-c", "echo 'Hello AppArmor!' && sleep 1h"},
		Labels: map[string]string{"io.kubernetes.pod.name": "hello-apparmor", "io.kubernetes.pod.namespace": "default"},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}}}}
	var mounts []map[string]any
	for i := 0; i < 40; i++ {
		if i < 12 {
			cfg.Envs = append(cfg.Envs, &runtimeapi.KeyValue{Key: fmt.Sprintf("SERVICE_%d_PORT", i), Value: []byte("tcp://10.96.0.1:443")})
			cfg.Mounts = append(cfg.Mounts, &runtimeapi.Mount{ContainerPath: fmt.Sprintf("/data/%d", i), HostPath: fmt.Sprintf("/var/lib/kubelet/pods/0123456789/volumes/%d", i)})
		}
		mounts = append(mounts, map[string]any{"destination": fmt.Sprintf("/var/lib/kubelet/pods/0123456789/volumes/%d", i), "type": "bind", "options": []string{"rbind", "rprivate", "rw"}})
	}
	spec := map[string]any{"ociVersion": "1.2.0", "mounts": mounts, "process": map[string]any{"args": cfg.Command, "apparmorProfile": "cri-containerd.apparmor.d"}}
	raw, err := json.Marshal(struct {
		SandboxID string                      `json:"sandboxID"`
		Pid       int                         `json:"pid"`
		Config    *runtimeapi.ContainerConfig `json:"config"`
		Spec      map[string]any              `json:"runtimeSpec"`
	}{"0123456789abcdef", 4242, cfg, spec})
	if err != nil {
		b.Fatal(err)
	}
	info := string(raw)
	b.ReportAllocs()
	for b.Loop() {
		if pid, cfg, err := parseInfo(info, true); err != nil || pid != 4242 || cfg.GetMetadata().GetName() != "hello" {
			b.Fatal(pid, cfg, err)
		}
	}
	cfgJSON, _ := json.Marshal(cfg)
	b.Logf("document %d bytes, config %d", len(info), len(cfgJSON))
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
		pid, got, err := ParseContainerInfo(string(raw))
		if err != nil || pid != 1 {
			t.Fatalf("%s: pid %d, %v", name, pid, err)
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
