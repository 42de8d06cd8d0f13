package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/pod-security-admission/api"
)

// fakeNode is a CRI runtime holding running pods whose verbose status
// carries their configs as containerd's does: info["info"] is JSON with
// the CRI config under "config" (containerd's SandboxInfo and
// ContainerInfo, internal/cri/server of containerd v2).
type fakeNode struct {
	runtimeapi.UnimplementedRuntimeServiceServer
	runtimeapi.UnimplementedImageServiceServer
	pods   []fakePod
	images map[string]*runtimeapi.Image
}

type fakePod struct {
	id         string
	config     *runtimeapi.PodSandboxConfig
	handler    string
	containers []*runtimeapi.ContainerConfig
}

func (f *fakeNode) ListPodSandbox(_ context.Context, req *runtimeapi.ListPodSandboxRequest) (*runtimeapi.ListPodSandboxResponse, error) {
	resp := &runtimeapi.ListPodSandboxResponse{}
	for _, p := range f.pods {
		if ns := req.GetFilter().GetLabelSelector()["io.kubernetes.pod.namespace"]; ns != "" && ns != p.config.Metadata.Namespace {
			continue
		}
		resp.Items = append(resp.Items, &runtimeapi.PodSandbox{Id: p.id, Metadata: p.config.Metadata, State: runtimeapi.PodSandboxState_SANDBOX_READY, Labels: p.config.Labels, RuntimeHandler: p.handler})
	}
	return resp, nil
}

func (f *fakeNode) pod(id string) *fakePod {
	for i := range f.pods {
		if f.pods[i].id == id || strings.HasPrefix(id, f.pods[i].id+"/") {
			return &f.pods[i]
		}
	}
	return nil
}

func info(v any) map[string]string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return map[string]string{"info": string(b)}
}

func (f *fakeNode) PodSandboxStatus(_ context.Context, req *runtimeapi.PodSandboxStatusRequest) (*runtimeapi.PodSandboxStatusResponse, error) {
	p := f.pod(req.PodSandboxId)
	resp := &runtimeapi.PodSandboxStatusResponse{Status: &runtimeapi.PodSandboxStatus{Id: p.id, Metadata: p.config.Metadata, State: runtimeapi.PodSandboxState_SANDBOX_READY, RuntimeHandler: p.handler}}
	if req.Verbose {
		resp.Info = info(map[string]any{"pid": 4242, "processStatus": "running", "netNamespaceClosed": false, "image": "registry.k8s.io/pause:3.10", "runtimeType": "io.containerd.runc.v2", "config": p.config, "runtimeSpec": map[string]any{"ociVersion": "1.2.0"}})
	}
	return resp, nil
}

func (f *fakeNode) ListContainers(_ context.Context, req *runtimeapi.ListContainersRequest) (*runtimeapi.ListContainersResponse, error) {
	p := f.pod(req.GetFilter().GetPodSandboxId())
	resp := &runtimeapi.ListContainersResponse{}
	for _, c := range p.containers {
		resp.Containers = append(resp.Containers, &runtimeapi.Container{Id: p.id + "/" + c.Metadata.Name, PodSandboxId: p.id, Metadata: c.Metadata, State: runtimeapi.ContainerState_CONTAINER_RUNNING})
	}
	return resp, nil
}

func (f *fakeNode) ContainerStatus(_ context.Context, req *runtimeapi.ContainerStatusRequest) (*runtimeapi.ContainerStatusResponse, error) {
	p := f.pod(req.ContainerId)
	name := strings.TrimPrefix(req.ContainerId, p.id+"/")
	for _, c := range p.containers {
		if c.Metadata.Name == name {
			resp := &runtimeapi.ContainerStatusResponse{Status: &runtimeapi.ContainerStatus{Id: req.ContainerId, Metadata: c.Metadata, State: runtimeapi.ContainerState_CONTAINER_RUNNING, Image: c.Image}}
			if req.Verbose {
				resp.Info = info(map[string]any{"sandboxID": p.id, "pid": 4343, "removing": false, "snapshotKey": req.ContainerId, "snapshotter": "overlayfs", "runtimeType": "io.containerd.runc.v2", "config": c, "runtimeSpec": map[string]any{"ociVersion": "1.2.0"}})
			}
			return resp, nil
		}
	}
	return nil, nil
}

func (f *fakeNode) ImageStatus(_ context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	return &runtimeapi.ImageStatusResponse{Image: f.images[req.GetImage().GetImage()]}, nil
}

func serveFakeNode(t *testing.T, f *fakeNode) string {
	t.Helper()
	sock := filepath.Join(shortDir(t), "cri.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	runtimeapi.RegisterRuntimeServiceServer(srv, f)
	runtimeapi.RegisterImageServiceServer(srv, f)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return "unix://" + sock
}

// Kubelet-shaped configs of the seed's kind cluster pods.
func sandbox(ns, name string, hostNet bool, seccomp runtimeapi.SecurityProfile_ProfileType) *runtimeapi.PodSandboxConfig {
	mode := runtimeapi.NamespaceMode_POD
	if hostNet {
		mode = runtimeapi.NamespaceMode_NODE
	}
	return &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: name, Namespace: ns, Uid: name + "-uid"},
		Labels:   map[string]string{"io.kubernetes.pod.namespace": ns, "io.kubernetes.pod.name": name},
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: mode, Pid: runtimeapi.NamespaceMode_CONTAINER},
			Seccomp:          &runtimeapi.SecurityProfile{ProfileType: seccomp},
		}},
	}
}

func ctr(sb *runtimeapi.PodSandboxConfig, name string, hostPaths ...string) *runtimeapi.ContainerConfig {
	c := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: "registry.k8s.io/" + name + ":v1.23.0"},
		Mounts:   []*runtimeapi.Mount{{ContainerPath: "/etc/hosts", HostPath: "/var/lib/kubelet/pods/" + sb.Metadata.Uid + "/etc-hosts"}},
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			NamespaceOptions: sb.Linux.SecurityContext.NamespaceOptions,
			Seccomp:          sb.Linux.SecurityContext.Seccomp,
			MaskedPaths:      []string{"/proc/kcore"},
			ReadonlyPaths:    []string{"/proc/sys"},
		}},
	}
	for _, hp := range hostPaths {
		c.Mounts = append(c.Mounts, &runtimeapi.Mount{ContainerPath: hp, HostPath: hp})
	}
	return c
}

func seedNode() *fakeNode {
	f := &fakeNode{images: map[string]*runtimeapi.Image{}}
	add := func(id string, sb *runtimeapi.PodSandboxConfig, cs ...*runtimeapi.ContainerConfig) {
		f.pods = append(f.pods, fakePod{id: id, config: sb, containers: cs})
	}
	rd, unconfined := runtimeapi.SecurityProfile_RuntimeDefault, runtimeapi.SecurityProfile_Unconfined
	for i, name := range []string{"etcd-psa-wo-cluster-pss-control-plane", "kube-apiserver-psa-wo-cluster-pss-control-plane", "kube-controller-manager-psa-wo-cluster-pss-control-plane", "kube-scheduler-psa-wo-cluster-pss-control-plane"} {
		sb := sandbox("kube-system", name, true, rd)
		add("static"+string(rune('0'+i)), sb, ctr(sb, strings.Split(name, "-psa")[0], "/etc/kubernetes/pki", "/etc/ssl/certs"))
	}
	sb := sandbox("kube-system", "kindnet-vzj42", true, unconfined)
	kindnet := ctr(sb, "kindnet-cni", "/etc/cni/net.d", "/run/xtables.lock", "/lib/modules")
	kindnet.Linux.SecurityContext.Capabilities = &runtimeapi.Capability{AddCapabilities: []string{"NET_RAW", "NET_ADMIN"}}
	add("kindnet", sb, kindnet)
	sb = sandbox("kube-system", "kube-proxy-m6hwf", true, unconfined)
	proxy := ctr(sb, "kube-proxy", "/run/xtables.lock", "/lib/modules")
	proxy.Linux.SecurityContext.Privileged = true
	add("kube-proxy", sb, proxy)
	for _, name := range []string{"coredns-7bb9c7b568-hsptc", "coredns-7bb9c7b568-x2x7k"} {
		sb = sandbox("kube-system", name, false, unconfined)
		c := ctr(sb, "coredns")
		c.Linux.SecurityContext.Capabilities = &runtimeapi.Capability{AddCapabilities: []string{"NET_BIND_SERVICE"}, DropCapabilities: []string{"all"}}
		c.Linux.SecurityContext.NoNewPrivs = true
		add(name, sb, c)
	}
	sb = sandbox("local-path-storage", "local-path-provisioner-d6d9f7ffc-lw9lh", false, unconfined)
	add("lpp", sb, ctr(sb, "local-path-provisioner"))
	// A restricted-clean pod: its image runs as uid 65532.
	sb = sandbox("default", "distroless", false, rd)
	c := ctr(sb, "app")
	c.Linux.SecurityContext.NoNewPrivs = true
	c.Linux.SecurityContext.Capabilities = &runtimeapi.Capability{DropCapabilities: []string{"ALL"}}
	f.images[c.Image.Image] = &runtimeapi.Image{Id: "app", Uid: &runtimeapi.Int64Value{Value: 65532}}
	add("distroless", sb, c)
	return f
}

func TestPSSCheckBaselineLikeTheTutorial(t *testing.T) {
	endpoint := serveFakeNode(t, seedNode())
	var out, errOut bytes.Buffer
	code := pssCheck([]string{"--level", "baseline", "--runtime-endpoint", endpoint, "--config", defaultConfigPath + ".absent-in-tests"}, &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "no such file") {
		t.Fatalf("a missing non-default config: exit %d, %q", code, errOut.String())
	}
	out.Reset()
	errOut.Reset()
	code = pssCheck([]string{"--level", "baseline", "--runtime-endpoint", endpoint, "--config", writeConfig(t, "")}, &out, &errOut)
	want := `Warning: existing pods in namespace "kube-system" violate the new PodSecurity enforce level "baseline:latest"
Warning: etcd-psa-wo-cluster-pss-control-plane (and 3 other pods): host namespaces, hostPath volumes
Warning: kindnet-vzj42: non-default capabilities, host namespaces, hostPath volumes
Warning: kube-proxy-m6hwf: host namespaces, hostPath volumes, privileged
`
	if code != 1 || out.String() != want || errOut.Len() != 0 {
		t.Errorf("exit %d\n%s\nstderr %q\nwant\n%s", code, out.String(), errOut.String(), want)
	}
}

func TestPSSCheckRestricted(t *testing.T) {
	endpoint := serveFakeNode(t, seedNode())
	var out, errOut bytes.Buffer
	code := pssCheck([]string{"--level", "restricted", "--namespace", "local-path-storage", "--runtime-endpoint", endpoint, "--config", writeConfig(t, "")}, &out, &errOut)
	want := `Warning: existing pods in namespace "local-path-storage" violate the new PodSecurity enforce level "restricted:latest"
Warning: local-path-provisioner-d6d9f7ffc-lw9lh: allowPrivilegeEscalation != false, unrestricted capabilities, runAsNonRoot != true, seccompProfile
`
	if code != 1 || out.String() != want {
		t.Errorf("exit %d\n%s\nstderr %q\nwant\n%s", code, out.String(), errOut.String(), want)
	}
	// The uid-65532 image and a namespace exempt in the configuration.
	dir := t.TempDir()
	pssFile := filepath.Join(dir, "pss.yaml")
	writeFile(t, pssFile, "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\nexemptions:\n  namespaces: [kube-system, local-path-storage]\n")
	out.Reset()
	code = pssCheck([]string{"--level", "restricted", "--runtime-endpoint", endpoint, "--config", writeConfig(t, "podSecurity:\n  configFile: "+pssFile+"\n")}, &out, &errOut)
	if code != 0 || out.Len() != 0 {
		t.Errorf("exempt namespaces and a clean pod: exit %d\n%s\nstderr %q", code, out.String(), errOut.String())
	}
	if code := pssCheck([]string{"--level", "strict"}, &out, &errOut); code != 2 {
		t.Errorf("--level strict: exit %d", code)
	}
}

// kubectl label --dry-run=server ns --all enforce=L checks only the
// namespaces whose enforce level it tightens: a namespace already enforcing
// baseline says nothing for baseline, nor one enforcing restricted.
func TestPSSCheckOnlyNamespacesTheLevelTightens(t *testing.T) {
	endpoint := serveFakeNode(t, seedNode())
	var out, errOut bytes.Buffer
	for _, tc := range []struct{ enforce, version, level, flagVersion, want, enforced string }{
		{"baseline", "", "baseline", "", "", "baseline:latest"},
		{"restricted", "", "baseline", "", "", "restricted:latest"},
		{"privileged", "", "baseline", "", `Warning: existing pods in namespace "kube-system" violate the new PodSecurity enforce level "baseline:latest"`, ""},
		{"baseline", "", "restricted", "", `Warning: existing pods in namespace "kube-system" violate the new PodSecurity enforce level "restricted:latest"`, ""},
		// only the enforce label changes: the namespace keeps its version
		{"baseline", "v1.30", "baseline", "", "", "baseline:v1.30"},
		{"restricted", "v1.30", "baseline", "", "", "restricted:v1.30"},
		{"privileged", "v1.25", "baseline", "", `Warning: existing pods in namespace "kube-system" violate the new PodSecurity enforce level "baseline:v1.25"`, ""},
		// enforce-version given too: a new version is checked
		{"baseline", "v1.30", "baseline", "latest", `Warning: existing pods in namespace "kube-system" violate the new PodSecurity enforce level "baseline:latest"`, ""},
	} {
		out.Reset()
		errOut.Reset()
		labels := "      pod-security.kubernetes.io/enforce: " + tc.enforce + "\n"
		if tc.version != "" {
			labels += "      pod-security.kubernetes.io/enforce-version: " + tc.version + "\n"
		}
		cfg := writeConfig(t, "podSecurity:\n  namespaces:\n    kube-system:\n"+labels)
		args := []string{"--level", tc.level, "--namespace", "kube-system", "--runtime-endpoint", endpoint, "--config", cfg}
		if tc.flagVersion != "" {
			args = append(args, "--version", tc.flagVersion)
		}
		code := pssCheck(args, &out, &errOut)
		first, _, _ := strings.Cut(out.String(), "\n")
		if first != tc.want || code != 1 {
			t.Errorf("kube-system enforcing %s:%s, --level %s --version %q: exit %d, %q (stderr %q), want %q", tc.enforce, tc.version, tc.level, tc.flagVersion, code, first, errOut.String(), tc.want)
		}
		// what the namespace already enforces is still said, on stderr
		if wantErr := `already enforced, refused at the next start: existing pods in namespace "kube-system" violate the new PodSecurity enforce level "` + tc.enforced + `"`; (tc.enforced != "") != strings.Contains(errOut.String(), wantErr) {
			t.Errorf("kube-system enforcing %s:%s, --level %s: stderr %q, want it to hold %v: %q", tc.enforce, tc.version, tc.level, errOut.String(), tc.enforced != "", wantErr)
		}
	}
	// the same through the configuration's defaults
	dir := t.TempDir()
	pssFile := filepath.Join(dir, "pss.yaml")
	writeFile(t, pssFile, "apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\ndefaults:\n  enforce: privileged\n  enforce-version: v1.25\n")
	out.Reset()
	pssCheck([]string{"--level", "baseline", "--namespace", "kube-system", "--runtime-endpoint", endpoint, "--config", writeConfig(t, "podSecurity:\n  configFile: "+pssFile+"\n")}, &out, &errOut)
	if first, _, _ := strings.Cut(out.String(), "\n"); !strings.HasSuffix(first, `"baseline:v1.25"`) {
		t.Errorf("defaults enforcing privileged:v1.25, --level baseline: %q", first)
	}
	if !tightens(api.LevelVersion{Level: api.LevelRestricted, Version: api.LatestVersion()}, api.LevelVersion{Level: api.LevelBaseline, Version: api.MajorMinorVersion(1, 30)}) {
		t.Error("a change of version with a level that is not privileged is checked")
	}
}

// shortDir is a directory short enough for unix socket paths.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pss")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Without a runtime, pss check says where it looked and how to name the
// socket, and exits 2; its help documents the exit codes.
func TestPSSCheckWithoutRuntime(t *testing.T) {
	var out, errOut bytes.Buffer
	endpoint := "unix://" + filepath.Join(t.TempDir(), "no-containerd.sock")
	code := pssCheck([]string{"--level", "baseline", "--runtime-endpoint", endpoint, "--timeout", "2s", "--config", writeConfig(t, "")}, &out, &errOut)
	if code != 2 {
		t.Errorf("exit %d, want 2", code)
	}
	for _, want := range []string{endpoint, "--runtime-endpoint", "runtimeEndpoint in"} {
		if !strings.Contains(errOut.String(), want) {
			t.Errorf("stderr does not mention %q:\n%s", want, errOut.String())
		}
	}
	if strings.Contains(errOut.String(), "rpc error: code =") {
		t.Errorf("raw gRPC text:\n%s", errOut.String())
	}
	errOut.Reset()
	if code := pssCheck([]string{"-h"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), "Exit status: 0") {
		t.Errorf("help: exit %d\n%s", code, errOut.String())
	}
}
