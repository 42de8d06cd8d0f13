package cri

import (
	"encoding/json"
	"fmt"
	"testing"

	"google.golang.org/grpc/mem"
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
		// Values before the pid are skipped whole, whatever they hold.
		{`{"a":"}\"pid\":1,{","b":[{"pid":2},"]"],"c":-1.5e3,"d":null,"e":true,"pid":3}`, 3, false},
		{" {\n \"a\" : [ ] ,\n \"pid\" : 4 \n}", 4, false},
		{`{"pid":5}`, 5, false},
		{`{"pid":6`, 6, false},
		{`{"a":[1,2}`, 0, true},
		{`{"a":"unterminated}`, 0, true},
		{`{"a" 1}`, 0, true},
		{`{"a":1 "pid":2}`, 0, true},
		{`{pid:1}`, 0, true},
	} {
		pid, _, err := parseInfo([]byte(c.info), false)
		if pid != c.want || (err != nil) != c.err {
			t.Errorf("parseInfo(%q) = %d, %v; want %d, error %v", c.info, pid, err, c.want, c.err)
		}
	}
}

// parseInfo stops once it has what it was asked for: what follows (the OCI
// spec, most of the document) is not read, so not even checked.
func TestParseInfoStopsEarly(t *testing.T) {
	const head = `{"sandboxID":"sb","pid":7,"config":{"metadata":{"name":"hello"}},`
	pid, cfg, err := parseInfo([]byte(head+`"runtimeSpec":{not json`), true)
	if err != nil || pid != 7 || cfg.GetMetadata().GetName() != "hello" {
		t.Errorf("pid and config: %d %v %v", pid, cfg, err)
	}
	if pid, cfg, err := parseInfo([]byte(`{"sandboxID":"sb","pid":7,"config":{not json`), false); err != nil || pid != 7 || cfg != nil {
		t.Errorf("pid only: %d %v %v", pid, cfg, err)
	}
	if _, _, err := parseInfo([]byte(`{"sandboxID":"sb","pid":7,"config":{not json`), true); err == nil {
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
	info := raw
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
			Labels: map[string]string{"io.kubernetes.pod.namespace": "default", "io.kubernetes.pod.name": "hello-apparmor", "io.kubernetes.container.name": "hello"},
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
		pid, got, err := ParseContainerInfo(raw)
		if err != nil || pid != 1 {
			t.Fatalf("%s: pid %d, %v", name, pid, err)
		}
		want := &runtimeapi.ContainerConfig{Metadata: cfg.Metadata, Labels: cfg.Labels}
		if sc := cfg.GetLinux().GetSecurityContext(); sc != nil {
			want.Linux = &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				Privileged: sc.Privileged, Apparmor: sc.Apparmor, ApparmorProfile: sc.ApparmorProfile}}
		}
		if !proto.Equal(got, want) {
			t.Errorf("%s: decoded %v, want %v", name, got, want)
		}
	}
}

// Of a ContainerStatusResponse only the info map's "info" entry is read,
// as a full decode would find it.
func TestInfoEntry(t *testing.T) {
	st := &runtimeapi.ContainerStatus{Id: "c1", Metadata: &runtimeapi.ContainerMetadata{Name: "hello"},
		Labels: map[string]string{"info": "not this"}, Mounts: []*runtimeapi.Mount{{ContainerPath: "/data", HostPath: "/var/data"}}}
	for _, c := range []struct {
		info map[string]string
		want string
		none bool
	}{
		{map[string]string{"info": `{"pid":7}`, "other": "x"}, `{"pid":7}`, false},
		{map[string]string{"other": "x"}, "", true},
		{nil, "", true},
		{map[string]string{"info": ""}, "", false},
	} {
		raw, err := proto.Marshal(&runtimeapi.ContainerStatusResponse{Status: st, Info: c.info})
		if err != nil {
			t.Fatal(err)
		}
		got, err := infoEntry(raw)
		if err != nil || string(got) != c.want || (got == nil) != c.none {
			t.Errorf("info %v: %q (nil %v) %v, want %q", c.info, got, got == nil, err, c.want)
		}
	}
	if _, err := infoEntry([]byte{0x12, 0x05, 0x0a}); err == nil {
		t.Error("a truncated answer read without an error")
	}
}

// The codec copies the entry out of the transport's buffers, split or not,
// and tells an empty entry from none.
func TestInfoCodecUnmarshal(t *testing.T) {
	for _, c := range []struct {
		info map[string]string
		want []byte
	}{
		{map[string]string{"info": `{"pid":7}`}, []byte(`{"pid":7}`)},
		{map[string]string{"info": ""}, []byte{}},
		{nil, nil},
	} {
		raw, err := proto.Marshal(&runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{Id: "c1"}, Info: c.info})
		if err != nil {
			t.Fatal(err)
		}
		for _, data := range []mem.BufferSlice{
			{mem.SliceBuffer(raw)},
			{mem.SliceBuffer(raw[:3]), mem.SliceBuffer(raw[3:])},
		} {
			var got []byte
			if err := (infoCodec{}).Unmarshal(data, &got); err != nil {
				t.Fatal(err)
			}
			if string(got) != string(c.want) || (got == nil) != (c.want == nil) {
				t.Errorf("info %v in %d buffers: %q (nil %v), want %q (nil %v)", c.info, len(data), got, got == nil, c.want, c.want == nil)
			}
			if len(got) > 0 {
				for _, b := range data {
					b.ReadOnlyData()[len(b.ReadOnlyData())-1] ^= 0xff // the transport reuses its buffers
				}
				if string(got) != string(c.want) {
					t.Errorf("info %v: the entry shares the transport's buffer", c.info)
				}
				for _, b := range data {
					b.ReadOnlyData()[len(b.ReadOnlyData())-1] ^= 0xff
				}
			}
		}
	}
}
