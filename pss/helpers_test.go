package pss_test

import (
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

const podUID = "0b7f6e2c-1111-4a5b-9c3d-5e6f7a8b9c0d"

// Default /proc paths the kubelet sends unless procMount is Unmasked.
var (
	maskedPaths   = []string{"/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"}
	readonlyPaths = []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"}
)

// kubeletSandbox is the PodSandboxConfig the kubelet sends for a pod with no
// securityContext (seccompDefault off).
func kubeletSandbox(ns, name string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: ns, Uid: podUID},
		Hostname: name,
		Labels:   map[string]string{"io.kubernetes.pod.name": name, "io.kubernetes.pod.namespace": ns, "io.kubernetes.pod.uid": podUID},
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: "/kubepods/besteffort/pod" + podUID,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD},
				Seccomp:          &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
			},
		},
	}
}

// kubeletCreate is the CreateContainerRequest the kubelet sends for the
// seed's nginx container (no securityContext, containerPort 80).
func kubeletCreate(ns, pod, ctr string) *runtimeapi.CreateContainerRequest {
	sb := kubeletSandbox(ns, pod)
	sb.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80}}
	return &runtimeapi.CreateContainerRequest{
		PodSandboxId:  "sandbox-1",
		SandboxConfig: sb,
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: ctr},
			Image:    &runtimeapi.ImageSpec{Image: "docker.io/library/nginx:latest"},
			Labels: map[string]string{"io.kubernetes.container.name": ctr, "io.kubernetes.pod.name": pod,
				"io.kubernetes.pod.namespace": ns, "io.kubernetes.pod.uid": podUID},
			Annotations: map[string]string{"io.kubernetes.container.ports": `[{"containerPort":80,"protocol":"TCP"}]`},
			Mounts: []*runtimeapi.Mount{
				{ContainerPath: "/var/run/secrets/kubernetes.io/serviceaccount", HostPath: "/var/lib/kubelet/pods/" + podUID + "/volumes/kubernetes.io~projected/kube-api-access-x2x7k", Readonly: true},
				{ContainerPath: "/etc/hosts", HostPath: "/var/lib/kubelet/pods/" + podUID + "/etc-hosts"},
				{ContainerPath: "/dev/termination-log", HostPath: "/var/lib/kubelet/pods/" + podUID + "/containers/" + ctr + "/5c1d3a7e"},
			},
			Linux: &runtimeapi.LinuxContainerConfig{
				SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
					NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD},
					Seccomp:          &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined},
					MaskedPaths:      maskedPaths,
					ReadonlyPaths:    readonlyPaths,
				},
			},
		},
	}
}
