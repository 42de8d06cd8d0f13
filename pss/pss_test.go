package pss_test

import (
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/pod-security-admission/api"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/pss"
)

// seedWarning is the seed's warning for its nginx pod under warn=restricted.
const seedWarning = `would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false (container "nginx" must set securityContext.allowPrivilegeEscalation=false), unrestricted capabilities (container "nginx" must set securityContext.capabilities.drop=["ALL"]), runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true), seccompProfile (pod or container "nginx" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")`

func level(t *testing.T, l, v string) api.LevelVersion {
	t.Helper()
	lv, err := api.ParseLevel(l)
	if err != nil {
		t.Fatal(err)
	}
	ver, err := api.ParseVersion(v)
	if err != nil {
		t.Fatal(err)
	}
	return api.LevelVersion{Level: lv, Version: ver}
}

func evaluator(t *testing.T, c pss.Config) *pss.Evaluator {
	t.Helper()
	e, err := pss.NewEvaluator(c)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestTutorialNginxUnderWarnRestricted(t *testing.T) {
	e := evaluator(t, pss.Config{Namespaces: map[string]map[string]string{"example": {
		"pod-security.kubernetes.io/enforce": "baseline", "pod-security.kubernetes.io/warn": "restricted",
	}}})
	// nginx's image names no user: it runs as root.
	d := e.Evaluate(pss.ContainerPod(kubeletCreate("example", "nginx", "nginx"), apparmor.Profile{}, &pss.ImageUser{}, e.Config()))
	if v, denied := d.Denied(); denied {
		t.Fatalf("baseline refused the seed's nginx pod: %s", v.Message())
	}
	w, ok := d.Mode(pss.Warn)
	if !ok || w.Message() != seedWarning {
		t.Fatalf("warn:\n got %q\nwant %q", w.Message(), seedWarning)
	}
	// The sandbox alone violates nothing: its containers are judged later.
	sd := e.Evaluate(pss.SandboxPod(kubeletSandbox("example", "nginx"), "", e.Config()))
	for _, v := range sd.Verdicts {
		if !v.Allowed() {
			t.Errorf("sandbox %s: %s", v.Mode, v.Message())
		}
	}
}

// TestControls maps CRI requests to the result of every baseline and
// restricted control.
func TestControls(t *testing.T) {
	hostNS := func(r *runtimeapi.CreateContainerRequest) *runtimeapi.NamespaceOption {
		return r.SandboxConfig.Linux.SecurityContext.NamespaceOptions
	}
	csc := func(r *runtimeapi.CreateContainerRequest) *runtimeapi.LinuxContainerSecurityContext {
		return r.Config.Linux.SecurityContext
	}
	// restrictedOK makes the container pass the restricted level.
	restrictedOK := func(r *runtimeapi.CreateContainerRequest) {
		sc := csc(r)
		sc.NoNewPrivs = true
		sc.Capabilities = &runtimeapi.Capability{DropCapabilities: []string{"ALL"}}
		sc.RunAsUser = &runtimeapi.Int64Value{Value: 1000}
		sc.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
	}
	tests := []struct {
		name     string
		level    string
		seccompD bool // kubelet seccompDefault
		profile  apparmor.Profile
		image    *pss.ImageUser
		mutate   func(*runtimeapi.CreateContainerRequest)
		want     string // ForbiddenDetail, "" = allowed
	}{
		{name: "kubelet defaults pass baseline", level: "baseline", mutate: func(*runtimeapi.CreateContainerRequest) {}},
		{name: "restricted container passes restricted", level: "restricted", mutate: restrictedOK},
		{name: "host network", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			hostNS(r).Network = runtimeapi.NamespaceMode_NODE
		}, want: "host namespaces (hostNetwork=true)"},
		{name: "host pid and ipc", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			hostNS(r).Pid, hostNS(r).Ipc = runtimeapi.NamespaceMode_NODE, runtimeapi.NamespaceMode_NODE
		}, want: "host namespaces (hostPID=true, hostIPC=true)"},
		{name: "privileged", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			csc(r).Privileged = true
		}, want: `privileged (container "nginx" must not set securityContext.privileged=true)`},
		{name: "baseline capabilities allowed", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			csc(r).Capabilities = &runtimeapi.Capability{AddCapabilities: []string{"CHOWN", "NET_BIND_SERVICE"}}
		}},
		{name: "non-default capabilities", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			csc(r).Capabilities = &runtimeapi.Capability{AddCapabilities: []string{"NET_ADMIN", "SYS_TIME"}}
		}, want: `non-default capabilities (container "nginx" must not include "NET_ADMIN", "SYS_TIME" in securityContext.capabilities.add)`},
		{name: "restricted capabilities: add beyond NET_BIND_SERVICE", level: "restricted", mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).Capabilities.AddCapabilities = []string{"CHOWN"}
		}, want: `unrestricted capabilities (container "nginx" must not include "CHOWN" in securityContext.capabilities.add)`},
		{name: "restricted capabilities: NET_BIND_SERVICE allowed", level: "restricted", mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).Capabilities.AddCapabilities = []string{"NET_BIND_SERVICE"}
		}},
		{name: "hostPath volume", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			r.Config.Mounts = append(r.Config.Mounts, &runtimeapi.Mount{ContainerPath: "/host/log", HostPath: "/var/log"})
		}, want: `hostPath volumes (volume "/var/log")`},
		{name: "another pod's directory is a hostPath", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			r.Config.Mounts = append(r.Config.Mounts, &runtimeapi.Mount{ContainerPath: "/x", HostPath: "/var/lib/kubelet/pods/other-uid/volumes/kubernetes.io~empty-dir/x"})
		}, want: `hostPath volumes (volume "/var/lib/kubelet/pods/other-uid/volumes/kubernetes.io~empty-dir/x")`},
		{name: "escaping the pod directory is a hostPath", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			r.Config.Mounts = append(r.Config.Mounts, &runtimeapi.Mount{ContainerPath: "/x", HostPath: "/var/lib/kubelet/pods/" + podUID + "/../../../../etc"})
		}, want: `hostPath volumes (volume "/var/etc")`},
		{name: "pod volumes are not hostPath", level: "restricted", mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			for _, p := range []string{"kubernetes.io~empty-dir/cache", "kubernetes.io~configmap/cfg", "kubernetes.io~secret/tls", "kubernetes.io~csi/pvc-1/mount", "kubernetes.io~downward-api/info"} {
				r.Config.Mounts = append(r.Config.Mounts, &runtimeapi.Mount{ContainerPath: "/" + p, HostPath: "/var/lib/kubelet/pods/" + podUID + "/volumes/" + p})
			}
		}},
		{name: "restricted volume types: hostPath", level: "restricted", mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			r.Config.Mounts = append(r.Config.Mounts, &runtimeapi.Mount{ContainerPath: "/data", HostPath: "/srv/data"})
		}, want: `restricted volume types (volume "/srv/data" uses restricted volume type "hostPath")`},
		{name: "host ports", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			r.Config.Annotations["io.kubernetes.container.ports"] = `[{"containerPort":80,"hostPort":8080,"protocol":"TCP"}]`
		}, want: `hostPort (container "nginx" uses hostPort 8080)`},
		{name: "AppArmor unconfined", level: "baseline", profile: apparmor.Profile{Type: apparmor.Unconfined}, mutate: func(*runtimeapi.CreateContainerRequest) {},
			want: `forbidden AppArmor profile (container "nginx" must not set AppArmor profile type to "Unconfined")`},
		// The kubelet turns the beta annotation into the CRI field; the API
		// server words the annotation.
		{name: "AppArmor unconfined by the beta annotation", level: "baseline", profile: apparmor.Profile{Type: apparmor.Unconfined}, mutate: func(r *runtimeapi.CreateContainerRequest) {
			r.SandboxConfig.Annotations = map[string]string{"container.apparmor.security.beta.kubernetes.io/nginx": "unconfined"}
		}, want: `forbidden AppArmor profile (annotation must not set AppArmor profile type to "container.apparmor.security.beta.kubernetes.io/nginx="unconfined"")`},
		{name: "AppArmor localhost allowed", level: "restricted", profile: apparmor.Profile{Type: apparmor.Localhost, Name: "k8s-apparmor-example-deny-write"}, mutate: restrictedOK},
		{name: "SELinux type", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			csc(r).SelinuxOptions = &runtimeapi.SELinuxOption{Type: "spc_t"}
		}, want: `seLinuxOptions (container "nginx" set forbidden securityContext.seLinuxOptions: type "spc_t")`},
		{name: "SELinux user and role", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			r.SandboxConfig.Linux.SecurityContext.SelinuxOptions = &runtimeapi.SELinuxOption{User: "system_u", Role: "system_r"}
		}, want: `seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: user may not be set; role may not be set)`},
		{name: "SELinux container_t allowed", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			csc(r).SelinuxOptions = &runtimeapi.SELinuxOption{Type: "container_t", Level: "s0:c1,c2"}
		}},
		{name: "unmasked /proc", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			csc(r).MaskedPaths, csc(r).ReadonlyPaths = nil, nil
		}, want: `procMount (container "nginx" must not set securityContext.procMount to "Unmasked")`},
		{name: "unmasked /proc with a user namespace", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			csc(r).MaskedPaths, csc(r).ReadonlyPaths = nil, nil
			hostNS(r).UsernsOptions = &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD}
		}},
		{name: "seccomp unconfined without seccompDefault reads as unset", level: "baseline", mutate: func(*runtimeapi.CreateContainerRequest) {}},
		// The kubelet folds a pod-level Unconfined into the container's.
		{name: "seccomp unconfined with seccompDefault", level: "baseline", seccompD: true, mutate: func(*runtimeapi.CreateContainerRequest) {},
			want: `seccompProfile (container "nginx" must not set securityContext.seccompProfile.type to "Unconfined")`},
		{name: "container seccomp unconfined with seccompDefault", level: "baseline", seccompD: true, mutate: func(r *runtimeapi.CreateContainerRequest) {
			r.SandboxConfig.Linux.SecurityContext.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
		}, want: `seccompProfile (container "nginx" must not set securityContext.seccompProfile.type to "Unconfined")`},
		{name: "seccomp restricted: localhost ok", level: "restricted", mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "/var/lib/kubelet/seccomp/audit.json"}
		}},
		{name: "seccomp restricted: unset", level: "restricted", mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).Seccomp = nil
		}, want: `seccompProfile (pod or container "nginx" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")`},
		// The kubelet always puts RuntimeDefault on the sandbox (the pause
		// container's) and sends Unconfined for a container without one.
		{name: "seccomp restricted: the sandbox's RuntimeDefault is not the pod's", level: "restricted", mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			r.SandboxConfig.Linux.SecurityContext.Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}
			csc(r).Seccomp = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Unconfined}
		}, want: `seccompProfile (pod or container "nginx" must set securityContext.seccompProfile.type to "RuntimeDefault" or "Localhost")`},
		{name: "safe sysctl", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			r.SandboxConfig.Linux.Sysctls = map[string]string{"net.ipv4.ip_unprivileged_port_start": "0"}
		}},
		{name: "unsafe sysctls", level: "baseline", mutate: func(r *runtimeapi.CreateContainerRequest) {
			r.SandboxConfig.Linux.Sysctls = map[string]string{"kernel.msgmax": "65536", "net.core.somaxconn": "1024"}
		}, want: `forbidden sysctls (kernel.msgmax, net.core.somaxconn)`},
		{name: "allowPrivilegeEscalation", level: "restricted", mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).NoNewPrivs = false
		}, want: `allowPrivilegeEscalation != false (container "nginx" must set securityContext.allowPrivilegeEscalation=false)`},
		{name: "runAsNonRoot: image runs as root", level: "restricted", image: &pss.ImageUser{}, mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).RunAsUser = nil
		}, want: `runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true)`},
		{name: "runAsNonRoot: image user 101", level: "restricted", image: &pss.ImageUser{UID: ptr(int64(101))}, mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).RunAsUser = nil
		}},
		{name: "runAsNonRoot: image user name cannot be verified", level: "restricted", image: &pss.ImageUser{Username: "nginx"}, mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).RunAsUser = nil
		}, want: `runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true)`},
		{name: "runAsNonRoot: image unknown", level: "restricted", mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).RunAsUser = nil
		}, want: `runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true)`},
		{name: "runAsNonRoot: run_as_username numeric", level: "restricted", mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).RunAsUser, csc(r).RunAsUsername = nil, "1001"
		}},
		{name: "runAsUser=0", level: "restricted", mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).RunAsUser = &runtimeapi.Int64Value{Value: 0}
		}, want: `runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true), runAsUser=0 (container "nginx" must not set runAsUser=0)`},
		// The kubelet copies the image's user into run_as_user; an image
		// without a USER gives 0.
		{name: "runAsUser=0 copied from an image without a USER", level: "restricted", image: &pss.ImageUser{}, mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).RunAsUser = &runtimeapi.Int64Value{Value: 0}
		}, want: `runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true)`},
		{name: "runAsUser=0 with an image of user 1000 is the pod's own", level: "restricted", image: &pss.ImageUser{UID: ptr(int64(1000))}, mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).RunAsUser = &runtimeapi.Int64Value{Value: 0}
		}, want: `runAsNonRoot != true (pod or container "nginx" must set securityContext.runAsNonRoot=true), runAsUser=0 (container "nginx" must not set runAsUser=0)`},
		{name: "pod runAsUser=0", level: "restricted", mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			r.SandboxConfig.Linux.SecurityContext.RunAsUser = &runtimeapi.Int64Value{Value: 0}
		}, want: `runAsUser=0 (pod must not set runAsUser=0)`},
		{name: "runAsUser=0 in a user namespace", level: "restricted", mutate: func(r *runtimeapi.CreateContainerRequest) {
			restrictedOK(r)
			csc(r).RunAsUser = &runtimeapi.Int64Value{Value: 0}
			hostNS(r).UsernsOptions = &runtimeapi.UserNamespace{Mode: runtimeapi.NamespaceMode_POD}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := evaluator(t, pss.Config{KubeletSeccompDefault: tc.seccompD})
			req := kubeletCreate("example", "nginx", "nginx")
			tc.mutate(req)
			r := e.Check(level(t, tc.level, "latest"), pss.ContainerPod(req, tc.profile, tc.image, e.Config()))
			if got := r.ForbiddenDetail(); got != tc.want {
				t.Errorf("%s:\n got %q\nwant %q", tc.level, got, tc.want)
			}
		})
	}
}

// TestSandboxControls maps RunPodSandbox requests: only pod-level facts
// and the port mappings' host ports count.
func TestSandboxControls(t *testing.T) {
	tests := []struct {
		name   string
		level  string
		mutate func(*runtimeapi.PodSandboxConfig)
		want   string
	}{
		{name: "kubelet defaults pass restricted", level: "restricted", mutate: func(*runtimeapi.PodSandboxConfig) {}},
		{name: "container ports without host ports", level: "baseline", mutate: func(c *runtimeapi.PodSandboxConfig) {
			c.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80}}
		}},
		{name: "host ports", level: "baseline", mutate: func(c *runtimeapi.PodSandboxConfig) {
			c.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: 8080}, {ContainerPort: 53, HostPort: 53, Protocol: runtimeapi.Protocol_UDP}}
		}, want: `hostPort (container "(port mappings)" uses hostPorts 53, 8080)`},
		{name: "host ports only at baseline and up", level: "privileged", mutate: func(c *runtimeapi.PodSandboxConfig) {
			c.PortMappings = []*runtimeapi.PortMapping{{ContainerPort: 80, HostPort: 8080}}
		}},
		{name: "host network and pid", level: "baseline", mutate: func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.SecurityContext.NamespaceOptions.Network = runtimeapi.NamespaceMode_NODE
			c.Linux.SecurityContext.NamespaceOptions.Pid = runtimeapi.NamespaceMode_NODE
		}, want: `host namespaces (hostNetwork=true, hostPID=true)`},
		{name: "unsafe sysctl", level: "baseline", mutate: func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.Sysctls = map[string]string{"kernel.shm_rmid_forced": "1", "vm.swappiness": "10"}
		}, want: `forbidden sysctls (vm.swappiness)`},
		{name: "pod runAsUser=0", level: "restricted", mutate: func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.SecurityContext.RunAsUser = &runtimeapi.Int64Value{}
		}, want: `runAsUser=0 (pod must not set runAsUser=0)`},
		{name: "pod SELinux type", level: "baseline", mutate: func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.SecurityContext.SelinuxOptions = &runtimeapi.SELinuxOption{Type: "unconfined_t"}
		}, want: `seLinuxOptions (pod set forbidden securityContext.seLinuxOptions: type "unconfined_t")`},
		{name: "deprecated seccomp path unconfined reads as unset", level: "baseline", mutate: func(c *runtimeapi.PodSandboxConfig) {
			c.Linux.SecurityContext.Seccomp = nil
			c.Linux.SecurityContext.SeccompProfilePath = "unconfined"
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := evaluator(t, pss.Config{})
			cfg := kubeletSandbox("example", "web")
			tc.mutate(cfg)
			r := e.Check(level(t, tc.level, "latest"), pss.SandboxPod(cfg, "", e.Config()))
			if got := r.ForbiddenDetail(); got != tc.want {
				t.Errorf("%s:\n got %q\nwant %q", tc.level, got, tc.want)
			}
		})
	}
}

func TestNonRoot(t *testing.T) {
	uid := func(v int64) *runtimeapi.Int64Value { return &runtimeapi.Int64Value{Value: v} }
	for _, tc := range []struct {
		name     string
		user     *runtimeapi.Int64Value
		username string
		image    *pss.ImageUser
		want     bool
	}{
		{"run_as_user 1000", uid(1000), "", nil, true},
		{"run_as_user 0 wins over the image", uid(0), "", &pss.ImageUser{UID: ptr(int64(1000))}, false},
		{"run_as_username root", nil, "root", nil, false},
		{"run_as_username 0:0", nil, "0:0", nil, false},
		{"run_as_username 1000:1000", nil, "1000:1000", nil, true},
		{"image uid 65532", nil, "", &pss.ImageUser{UID: ptr(int64(65532))}, true},
		{"image uid 0", nil, "", &pss.ImageUser{UID: ptr(int64(0))}, false},
		{"image without a user runs as root", nil, "", &pss.ImageUser{}, false},
		{"image user name cannot be verified", nil, "", &pss.ImageUser{Username: "nginx"}, false},
		{"image user reported as a numeric name", nil, "", &pss.ImageUser{Username: "101"}, true},
		{"image unknown", nil, "", nil, false},
		{"image spec user uid:gid", nil, "", pss.ParseImageUser("101:101"), true},
		{"image spec user name:group", nil, "", pss.ParseImageUser("nginx:nginx"), false},
		{"image spec user empty", nil, "", pss.ParseImageUser(""), false},
	} {
		if got := pss.NonRoot(tc.user, tc.username, tc.image); got != tc.want {
			t.Errorf("%s: NonRoot = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func ptr[T any](v T) *T { return &v }
