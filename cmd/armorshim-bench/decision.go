package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/host"
)

// createRequest is a CreateContainer request as a kubelet ≥ 1.30 sends it:
// a full container config (env, mounts, labels, annotations) asking for a
// localhost profile in both the field and the deprecated string, and the
// pod's sandbox config.
func createRequest(sandboxID, profile string) *runtimeapi.CreateContainerRequest {
	labels := map[string]string{
		"io.kubernetes.container.name": "app", "io.kubernetes.pod.name": "app-7d9f8c6b5-x0001",
		"io.kubernetes.pod.namespace": "team-1", "io.kubernetes.pod.uid": "0f3c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
	}
	var envs []*runtimeapi.KeyValue
	for i := 0; i < 20; i++ {
		envs = append(envs, &runtimeapi.KeyValue{Key: fmt.Sprintf("SERVICE_%d_PORT", i), Value: []byte(strconv.Itoa(8000 + i))})
	}
	sandbox := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: labels["io.kubernetes.pod.name"], Namespace: "team-1", Uid: labels["io.kubernetes.pod.uid"]},
		Hostname:     labels["io.kubernetes.pod.name"],
		LogDirectory: "/var/log/pods/team-1_app-7d9f8c6b5-x0001_0f3c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
		DnsConfig:    &runtimeapi.DNSConfig{Servers: []string{"10.96.0.10"}, Searches: []string{"team-1.svc.cluster.local", "svc.cluster.local", "cluster.local"}, Options: []string{"ndots:5"}},
		Labels:       map[string]string{"app": "app", "pod-template-hash": "7d9f8c6b5", "io.kubernetes.pod.name": labels["io.kubernetes.pod.name"], "io.kubernetes.pod.namespace": "team-1", "io.kubernetes.pod.uid": labels["io.kubernetes.pod.uid"]},
		Annotations:  map[string]string{"kubernetes.io/config.seen": "2026-01-01T00:00:00.000000000Z", "kubernetes.io/config.source": "api"},
		Linux: &runtimeapi.LinuxPodSandboxConfig{CgroupParent: "/kubepods/burstable/pod0f3c2a4e-5b6d-4e7f-8a9b-0c1d2e3f4a5b",
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{Pid: runtimeapi.NamespaceMode_CONTAINER}}},
	}
	return &runtimeapi.CreateContainerRequest{
		PodSandboxId: sandboxID,
		Config: &runtimeapi.ContainerConfig{
			Metadata:   &runtimeapi.ContainerMetadata{Name: "app"},
			Image:      &runtimeapi.ImageSpec{Image: "sha256:" + fakeID("image", 1), UserSpecifiedImage: "registry.example.com/team/app:v1.2.0"},
			Command:    []string{"/app"},
			Args:       []string{"--port=8080", "--log-level=info"},
			WorkingDir: "/",
			Envs:       envs,
			Mounts: []*runtimeapi.Mount{
				{ContainerPath: "/var/run/secrets/kubernetes.io/serviceaccount", HostPath: "/var/lib/kubelet/pods/0f3c2a4e/volumes/kubernetes.io~projected/kube-api-access", Readonly: true},
				{ContainerPath: "/etc/hosts", HostPath: "/var/lib/kubelet/pods/0f3c2a4e/etc-hosts"},
				{ContainerPath: "/dev/termination-log", HostPath: "/var/lib/kubelet/pods/0f3c2a4e/containers/app/1a2b3c4d"},
			},
			Labels: labels,
			Annotations: map[string]string{
				"io.kubernetes.container.hash": "5f2e1d7a", "io.kubernetes.container.restartCount": "0",
				"io.kubernetes.container.terminationMessagePath": "/dev/termination-log", "io.kubernetes.container.terminationMessagePolicy": "File",
				"io.kubernetes.pod.terminationGracePeriod": "30",
			},
			LogPath: "app/0.log",
			Linux: &runtimeapi.LinuxContainerConfig{
				Resources: &runtimeapi.LinuxContainerResources{CpuShares: 102, MemoryLimitInBytes: 256 << 20, OomScoreAdj: 999},
				SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
					Apparmor:        &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: profile},
					ApparmorProfile: apparmor.LocalhostPrefix + profile,
					Seccomp:         &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault},
					MaskedPaths:     []string{"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/scsi", "/sys/firmware"},
					ReadonlyPaths:   []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
				},
			},
		},
		SandboxConfig: sandbox,
	}
}

// decide does what armorshim does to a CreateContainer request on its way
// through (cri.Proxy.createContainer, less metrics and logging): decode it,
// decide, and re-encode it only if the decision changed it.
func decide(b []byte, h apparmor.Host, pol *apparmor.Policy) error {
	req := &runtimeapi.CreateContainerRequest{}
	if err := proto.Unmarshal(b, req); err != nil {
		return err
	}
	dec, err := apparmor.Decide(req, h, pol)
	if err != nil {
		return err
	}
	if dec.Modified {
		_, err = proto.Marshal(req)
	}
	return err
}

// decisionTimes times decide on a host.Reader over the fake securityfs at
// sys: n decisions with the revision unchanged (the first one, which loads
// the profiles, is not counted), and bumps decisions each right after the
// revision file changed, so each one re-reads and re-parses the profiles.
func decisionTimes(sys string, req []byte, n, bumps int) (cached, bumped []time.Duration, err error) {
	r := host.NewReader(sys, "/proc")
	defer r.Close()
	pol := &apparmor.Policy{}
	if err := decide(req, r, pol); err != nil {
		return nil, nil, fmt.Errorf("decision: %w", err)
	}
	cached = make([]time.Duration, 0, n)
	for i := 0; i < n; i++ {
		t0 := time.Now()
		err := decide(req, r, pol)
		cached = append(cached, time.Since(t0))
		if err != nil {
			return nil, nil, err
		}
	}
	revision := filepath.Join(r.SecurityfsDir(), "revision")
	defer os.WriteFile(revision, []byte("1\n"), 0o644)
	bumped = make([]time.Duration, 0, bumps)
	for i := 0; i < bumps; i++ {
		if err := os.WriteFile(revision, []byte(strconv.Itoa(100+i)+"\n"), 0o644); err != nil {
			return nil, nil, err
		}
		t0 := time.Now()
		err := decide(req, r, pol)
		bumped = append(bumped, time.Since(t0))
		if err != nil {
			return nil, nil, err
		}
	}
	return cached, bumped, nil
}
