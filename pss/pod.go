package pss

import (
	"encoding/json"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/apparmor"
)

// Pod is what the node knows of a pod, in the shape the upstream checks read.
// Of the annotations only a container's AppArmor beta annotation is kept,
// where it names the profile the container gets, so that it is worded as
// the API server words it; the CRI fields say what the runtime applies.
type Pod struct {
	Meta metav1.ObjectMeta
	Spec corev1.PodSpec
	// Container is the container a CreateContainer request creates ("" for
	// a sandbox).
	Container string
}

// Kubelet names used on CRI requests.
const (
	// ContainerPortsAnnotation holds a container's ports as JSON
	// ([]v1.ContainerPort); the kubelet sets it on every container config.
	ContainerPortsAnnotation = "io.kubernetes.container.ports"
	labelPodName             = "io.kubernetes.pod.name"
	labelPodNamespace        = "io.kubernetes.pod.namespace"
	labelPodUID              = "io.kubernetes.pod.uid"
	labelContainerName       = "io.kubernetes.container.name"
	// PortMappingsContainer names the stand-in container that carries a
	// sandbox's host ports: the CRI port mappings do not say which
	// container asked for them.
	PortMappingsContainer = "(port mappings)"
)

// SandboxPod rebuilds the pod-level facts of a RunPodSandbox request:
// host namespaces, sysctls, pod-level seccomp, SELinux, run-as user and
// group, user namespace, runtime handler (as runtimeClassName) and the host
// ports of its port mappings. Containers are judged at CreateContainer.
func SandboxPod(cfg *runtimeapi.PodSandboxConfig, runtimeHandler string, c *Config) *Pod {
	p := &Pod{}
	podLevel(p, cfg, nil, c)
	if runtimeHandler != "" {
		p.Spec.RuntimeClassName = &runtimeHandler
	}
	var ports []corev1.ContainerPort
	for _, pm := range cfg.GetPortMappings() {
		if pm.GetHostPort() != 0 {
			ports = append(ports, corev1.ContainerPort{
				ContainerPort: pm.GetContainerPort(), HostPort: pm.GetHostPort(),
				HostIP: pm.GetHostIp(), Protocol: corev1.Protocol(pm.GetProtocol().String()),
			})
		}
	}
	if len(ports) > 0 {
		// A stand-in that passes every container check at every level, so
		// that only the host ports count against it.
		p.Spec.Containers = []corev1.Container{{
			Name:  PortMappingsContainer,
			Ports: ports,
			SecurityContext: &corev1.SecurityContext{
				AllowPrivilegeEscalation: ptr(false),
				RunAsNonRoot:             ptr(true),
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
		}}
	}
	return p
}

// ContainerPod rebuilds a CreateContainer request as a pod holding that one
// container: the pod-level facts from its sandbox config and the
// container's own. profile is the AppArmor profile armorshim resolved for
// it; image is the image's user as the runtime reports it (nil: unknown).
func ContainerPod(req *runtimeapi.CreateContainerRequest, profile apparmor.Profile, image *ImageUser, c *Config) *Pod {
	cc := req.GetConfig()
	p := &Pod{}
	podLevel(p, req.GetSandboxConfig(), cc, c)
	ctr := container(cc, profile, image, p.Spec.SecurityContext, c)
	betaAnnotation(p, &ctr, req.GetSandboxConfig(), profile)
	p.Container = ctr.Name
	p.Spec.Containers = []corev1.Container{ctr}
	p.Spec.Volumes = volumes(cc.GetMounts(), c.KubeletRootDir, string(p.Meta.UID))
	return p
}

// NodeContainer is one container of a pod running on the node: its CRI
// config as the runtime stored it and its image's user (nil: unknown).
type NodeContainer struct {
	Config *runtimeapi.ContainerConfig
	Image  *ImageUser
}

// NodePod rebuilds a running pod from its sandbox config, runtime handler
// and containers' configs, for a node-wide dry run. AppArmor is read from
// each stored config, which holds the profile armorshim resolved.
func NodePod(sandbox *runtimeapi.PodSandboxConfig, runtimeHandler string, containers []NodeContainer, c *Config) *Pod {
	p := SandboxPod(sandbox, runtimeHandler, c)
	var ctrs []corev1.Container
	hostPorts := false
	seen := map[string]bool{}
	for _, nc := range containers {
		profile, _, err := apparmor.Resolve(&runtimeapi.CreateContainerRequest{Config: nc.Config, SandboxConfig: sandbox})
		if err != nil {
			profile = apparmor.Profile{}
		}
		ctr := container(nc.Config, profile, nc.Image, p.Spec.SecurityContext, c)
		betaAnnotation(p, &ctr, sandbox, profile)
		for _, port := range ctr.Ports {
			hostPorts = hostPorts || port.HostPort != 0
		}
		ctrs = append(ctrs, ctr)
		for _, v := range volumes(nc.Config.GetMounts(), c.KubeletRootDir, string(p.Meta.UID)) {
			if !seen[v.Name] {
				seen[v.Name] = true
				p.Spec.Volumes = append(p.Spec.Volumes, v)
			}
		}
	}
	if !hostPorts {
		// The stand-in for the port mappings, if any, says what the
		// containers' annotations do not.
		ctrs = append(ctrs, p.Spec.Containers...)
	}
	p.Spec.Containers = ctrs
	return p
}

func podLevel(p *Pod, cfg *runtimeapi.PodSandboxConfig, cc *runtimeapi.ContainerConfig, c *Config) {
	md := cfg.GetMetadata()
	p.Meta = metav1.ObjectMeta{Name: md.GetName(), Namespace: md.GetNamespace(), UID: types.UID(md.GetUid())}
	labels := cc.GetLabels()
	if p.Meta.Name == "" {
		p.Meta.Name = labels[labelPodName]
	}
	if p.Meta.Namespace == "" {
		p.Meta.Namespace = labels[labelPodNamespace]
	}
	if p.Meta.UID == "" {
		p.Meta.UID = types.UID(labels[labelPodUID])
	}
	sc := cfg.GetLinux().GetSecurityContext()
	ns := sc.GetNamespaceOptions()
	if cfg == nil {
		// A CreateContainer without its sandbox config: the container
		// carries the same namespace options.
		ns = cc.GetLinux().GetSecurityContext().GetNamespaceOptions()
	}
	// NamespaceMode NODE is the host's namespace.
	p.Spec.HostNetwork = ns.GetNetwork() == runtimeapi.NamespaceMode_NODE
	p.Spec.HostPID = ns.GetPid() == runtimeapi.NamespaceMode_NODE
	p.Spec.HostIPC = ns.GetIpc() == runtimeapi.NamespaceMode_NODE
	// A user namespace of the pod's own (mode POD; POD is the zero value, so
	// the option must be present) is hostUsers: false.
	if u := ns.GetUsernsOptions(); u != nil && u.GetMode() == runtimeapi.NamespaceMode_POD {
		p.Spec.HostUsers = ptr(false) // hostUsers: false
	}
	// The sandbox's seccomp profile is the infra container's: the kubelet
	// always sends RuntimeDefault there, whatever the pod says, and folds
	// the pod's seccompProfile into each container's. So the pod level has
	// none, and every container is judged by its own.
	psc := &corev1.PodSecurityContext{SELinuxOptions: selinux(sc.GetSelinuxOptions())}
	if u := sc.GetRunAsUser(); u != nil {
		psc.RunAsUser = ptr(u.GetValue())
	}
	if g := sc.GetRunAsGroup(); g != nil {
		psc.RunAsGroup = ptr(g.GetValue())
	}
	names := make([]string, 0, len(cfg.GetLinux().GetSysctls()))
	for k := range cfg.GetLinux().GetSysctls() {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		psc.Sysctls = append(psc.Sysctls, corev1.Sysctl{Name: k, Value: cfg.GetLinux().GetSysctls()[k]})
	}
	p.Spec.SecurityContext = psc
}

func container(cc *runtimeapi.ContainerConfig, profile apparmor.Profile, image *ImageUser, pod *corev1.PodSecurityContext, c *Config) corev1.Container {
	name := cc.GetMetadata().GetName()
	if name == "" {
		name = cc.GetLabels()[labelContainerName]
	}
	ctr := corev1.Container{Name: name, Image: cc.GetImage().GetImage()}
	if raw := cc.GetAnnotations()[ContainerPortsAnnotation]; raw != "" {
		var ports []corev1.ContainerPort
		if json.Unmarshal([]byte(raw), &ports) == nil {
			ctr.Ports = ports
		}
	}
	lsc := cc.GetLinux().GetSecurityContext()
	sc := &corev1.SecurityContext{}
	if lsc.GetPrivileged() {
		sc.Privileged = ptr(true)
	}
	if caps := lsc.GetCapabilities(); caps != nil {
		// The kubelet passes the names as written in the pod spec.
		sc.Capabilities = &corev1.Capabilities{}
		for _, a := range caps.GetAddCapabilities() {
			sc.Capabilities.Add = append(sc.Capabilities.Add, corev1.Capability(a))
		}
		for _, d := range caps.GetDropCapabilities() {
			sc.Capabilities.Drop = append(sc.Capabilities.Drop, corev1.Capability(d))
		}
	}
	// The kubelet sets no_new_privs only for allowPrivilegeEscalation: false.
	if lsc.GetNoNewPrivs() {
		sc.AllowPrivilegeEscalation = ptr(false)
	}
	// The kubelet sends the default masked and read-only /proc paths unless
	// procMount is Unmasked; with none, containerd masks nothing. A
	// privileged container's /proc is unmasked whatever the request says.
	if !lsc.GetPrivileged() && len(lsc.GetMaskedPaths()) == 0 && len(lsc.GetReadonlyPaths()) == 0 {
		sc.ProcMount = ptr(corev1.UnmaskedProcMount)
	}
	sc.SeccompProfile = seccomp(lsc.GetSeccomp(), lsc.GetSeccompProfilePath(), c.KubeletSeccompDefault)
	// Values equal to the pod's are the pod's, inherited by the kubelet.
	if se := selinux(lsc.GetSelinuxOptions()); se != nil && (pod.SELinuxOptions == nil || *se != *pod.SELinuxOptions) {
		sc.SELinuxOptions = se
	}
	if u := lsc.GetRunAsUser(); u != nil && (pod.RunAsUser == nil || *pod.RunAsUser != u.GetValue()) && !FromImage(u, pod.RunAsUser != nil, image) {
		sc.RunAsUser = ptr(u.GetValue())
	}
	if g := lsc.GetRunAsGroup(); g != nil && (pod.RunAsGroup == nil || *pod.RunAsGroup != g.GetValue()) {
		sc.RunAsGroup = ptr(g.GetValue())
	}
	// runAsNonRoot is not in the CRI: it holds when the user the container
	// will run as is known to be non-root.
	if NonRoot(lsc.GetRunAsUser(), lsc.GetRunAsUsername(), image) {
		sc.RunAsNonRoot = ptr(true)
	}
	sc.AppArmorProfile = appArmorProfile(profile)
	ctr.SecurityContext = sc
	return ctr
}

// betaAnnotation judges a container whose profile the pod asked for with
// the beta annotation as the API server does, by that annotation: the
// kubelet turns it into the CRI field, which alone would be worded as the
// container's field.
func betaAnnotation(p *Pod, ctr *corev1.Container, sandbox *runtimeapi.PodSandboxConfig, profile apparmor.Profile) {
	key := apparmor.AnnotationPrefix + ctr.Name
	v, ok := sandbox.GetAnnotations()[key]
	if !ok || v != profile.String() || ctr.SecurityContext == nil {
		return
	}
	if p.Meta.Annotations == nil {
		p.Meta.Annotations = map[string]string{}
	}
	p.Meta.Annotations[key] = v
	ctr.SecurityContext.AppArmorProfile = nil
}

func appArmorProfile(p apparmor.Profile) *corev1.AppArmorProfile {
	switch p.Type {
	case apparmor.RuntimeDefault:
		return &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeRuntimeDefault}
	case apparmor.Unconfined:
		return &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeUnconfined}
	case apparmor.Localhost:
		return &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeLocalhost, LocalhostProfile: ptr(p.Name)}
	}
	return nil
}

// seccomp maps a CRI seccomp profile (or the deprecated path string). The
// kubelet sends Unconfined when nothing is set unless it runs with
// seccompDefault, so Unconfined counts as "not set" without seccompDefault.
func seccomp(sp *runtimeapi.SecurityProfile, path string, seccompDefault bool) *corev1.SeccompProfile {
	t := ""
	var local string
	if sp != nil {
		switch sp.GetProfileType() {
		case runtimeapi.SecurityProfile_RuntimeDefault:
			t = "runtime"
		case runtimeapi.SecurityProfile_Unconfined:
			t = "unconfined"
		case runtimeapi.SecurityProfile_Localhost:
			t, local = "localhost", sp.GetLocalhostRef()
		}
	} else {
		switch {
		case path == "runtime/default" || path == "docker/default":
			t = "runtime"
		case path == "unconfined":
			t = "unconfined"
		case strings.HasPrefix(path, "localhost/"):
			t, local = "localhost", strings.TrimPrefix(path, "localhost/")
		}
	}
	switch t {
	case "runtime":
		return &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
	case "localhost":
		return &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: ptr(local)}
	case "unconfined":
		if seccompDefault {
			return &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}
		}
	}
	return nil
}

func selinux(o *runtimeapi.SELinuxOption) *corev1.SELinuxOptions {
	if o == nil || (o.GetUser() == "" && o.GetRole() == "" && o.GetType() == "" && o.GetLevel() == "") {
		return nil
	}
	return &corev1.SELinuxOptions{User: o.GetUser(), Role: o.GetRole(), Type: o.GetType(), Level: o.GetLevel()}
}

// volumes turns mounts into the volumes the upstream checks read. A mount
// whose host path lies outside the kubelet's directory for this pod
// (<root>/pods/<uid>/, or any pod's when the uid is unknown) is a hostPath
// volume named by its host path. Under pods/<uid>/volumes/<plugin>/<name>
// the plugin directory names the volume type where it is one the
// restricted level allows; other plugins are counted as
// persistentVolumeClaim, since a node cannot tell an inline volume from a
// claim. Image volumes have no host path.
func volumes(mounts []*runtimeapi.Mount, root, uid string) []corev1.Volume {
	if root == "" {
		root = DefaultKubeletRootDir
	}
	podsDir := filepath.Join(filepath.Clean(root), "pods") + "/"
	var out []corev1.Volume
	seen := map[string]bool{}
	add := func(v corev1.Volume) {
		if !seen[v.Name] {
			seen[v.Name] = true
			out = append(out, v)
		}
	}
	for _, m := range mounts {
		if m.GetHostPath() == "" {
			if m.GetImage() != nil {
				add(corev1.Volume{Name: m.GetContainerPath(), VolumeSource: corev1.VolumeSource{Image: &corev1.ImageVolumeSource{Reference: m.GetImage().GetImage()}}})
			}
			continue
		}
		hp := filepath.Clean(m.GetHostPath())
		rel, ok := strings.CutPrefix(hp, podsDir)
		if ok {
			podUID, rest, _ := strings.Cut(rel, "/")
			ok = podUID != "" && (uid == "" || podUID == uid)
			rel = rest
		}
		if !ok {
			add(corev1.Volume{Name: hp, VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: hp}}})
			continue
		}
		// volumes/<plugin>/<name>[/...]
		parts := strings.SplitN(rel, "/", 4)
		if len(parts) < 3 || parts[0] != "volumes" {
			continue // etc-hosts, termination log, subpaths
		}
		add(corev1.Volume{Name: parts[2], VolumeSource: pluginSource(parts[1])})
	}
	return out
}

// pluginSource maps a kubelet volume plugin directory to a volume source.
func pluginSource(dir string) corev1.VolumeSource {
	switch dir {
	case "kubernetes.io~empty-dir":
		return corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
	case "kubernetes.io~configmap":
		return corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{}}
	case "kubernetes.io~secret":
		return corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{}}
	case "kubernetes.io~projected":
		return corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{}}
	case "kubernetes.io~downward-api":
		return corev1.VolumeSource{DownwardAPI: &corev1.DownwardAPIVolumeSource{}}
	case "kubernetes.io~csi":
		return corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{}}
	}
	return corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{}}
}

// DefaultKubeletRootDir is the kubelet's default --root-dir.
const DefaultKubeletRootDir = "/var/lib/kubelet"

func ptr[T any](v T) *T { return &v }
