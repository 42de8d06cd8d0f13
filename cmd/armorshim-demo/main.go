// Command armorshim-demo shows armorshim at work on any Linux machine, with
// no containerd and no AppArmor: it starts a fake CRI runtime, writes a fake
// securityfs tree holding the documentation's profile, runs the real armorshim binary
// in front of the runtime, and plays the documentation's two pods through it.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
	"k8s.io/cri-client/pkg/fake"
)

const (
	denyWrite  = "k8s-apparmor-example-deny-write"
	allowWrite = "k8s-apparmor-example-allow-write"
	annotation = "container.apparmor.security.beta.kubernetes.io/hello"
)

func main() {
	bin := flag.String("armorshim", "bin/armorshim", "the armorshim binary to run")
	flag.Parse()
	if err := run(*bin); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

// recorder remembers the AppArmor fields of each CreateContainer the fake
// runtime receives.
type recorder struct {
	mu   sync.Mutex
	seen []string
}

func (r *recorder) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if c, ok := req.(*runtimeapi.CreateContainerRequest); ok {
		sc := c.GetConfig().GetLinux().GetSecurityContext()
		r.mu.Lock()
		r.seen = append(r.seen, fmt.Sprintf("pod %s: apparmor={%s %q} apparmor_profile=%q",
			c.GetSandboxConfig().GetMetadata().GetName(), sc.GetApparmor().GetProfileType(),
			sc.GetApparmor().GetLocalhostRef(), sc.GetApparmorProfile()))
		r.mu.Unlock()
	}
	return h(ctx, req)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.seen)
}

func (r *recorder) last() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[len(r.seen)-1]
}

func run(bin string) error {
	dir, err := os.MkdirTemp("", "armorshim-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	// The host: AppArmor on, the documentation's node profiles plus deny-write loaded.
	sys := filepath.Join(dir, "sys")
	sec := filepath.Join(sys, "kernel", "security", "apparmor")
	profiles := "apparmor-test-deny-write (enforce)\napparmor-test-audit-write (enforce)\ndocker-default (enforce)\nk8s-nginx (enforce)\n" + denyWrite + " (enforce)\n"
	for path, data := range map[string]string{
		filepath.Join(sys, "module", "apparmor", "parameters", "enabled"): "Y\n",
		filepath.Join(sec, "profiles"):                                    profiles,
		filepath.Join(sec, "revision"):                                    "1\n",
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			return err
		}
	}
	step("The node", "a fake securityfs under %s says: AppArmor enabled, loaded:\n    %s", sys,
		strings.ReplaceAll(strings.TrimSpace(profiles), "\n", "\n    "))

	// The runtime: the Kubernetes fake CRI runtime on its own socket.
	rec := &recorder{}
	runtimeSock := filepath.Join(dir, "runtime.sock")
	rt := fake.NewFakeRemoteRuntime()
	rt.RuntimeService.FakeStatus = &runtimeapi.RuntimeStatus{Conditions: []*runtimeapi.RuntimeCondition{
		{Type: runtimeapi.RuntimeReady, Status: true}, {Type: runtimeapi.NetworkReady, Status: true}}}
	srv := grpc.NewServer(grpc.UnaryInterceptor(rec.intercept))
	runtimeapi.RegisterRuntimeServiceServer(srv, rt)
	runtimeapi.RegisterImageServiceServer(srv, rt)
	l, err := net.Listen("unix", runtimeSock)
	if err != nil {
		return err
	}
	go srv.Serve(l)
	defer srv.Stop()

	// armorshim in front of it, with its embedded defaults but for the paths.
	shimSock := filepath.Join(dir, "armorshim.sock")
	features := filepath.Join(dir, "features.d")
	if err := os.Mkdir(features, 0o755); err != nil {
		return err
	}
	cmd := exec.Command(bin, "serve", "--config=", "--listen", "unix://"+shimSock,
		"--runtime-endpoint", "unix://"+runtimeSock, "--sysfs", sys,
		"--profiles-dir=", "--node-features-dir", features)
	cmd.Stdout, cmd.Stderr = prefixed("  armorshim| "), prefixed("  armorshim| ")
	step("Start armorshim", "%s", strings.Join(cmd.Args, " "))
	if err := cmd.Start(); err != nil {
		return err
	}
	defer cmd.Process.Kill()
	if err := waitFor(shimSock); err != nil {
		return err
	}
	conn, err := grpc.NewClient("unix://"+shimSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	client := runtimeapi.NewRuntimeServiceClient(conn)
	ctx := context.Background()

	v, err := client.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		return err
	}
	step("Version through armorshim", "runtime %s %s, CRI %s (forwarded untouched)", v.RuntimeName, v.RuntimeVersion, v.RuntimeApiVersion)

	create := func(pod, ref string) (*runtimeapi.CreateContainerResponse, error) {
		sandbox := &runtimeapi.PodSandboxConfig{
			Metadata:    &runtimeapi.PodSandboxMetadata{Name: pod, Namespace: "default", Uid: pod + "-uid"},
			Annotations: map[string]string{annotation: ref},
		}
		sb, err := client.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sandbox})
		if err != nil {
			return nil, err
		}
		return client.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{
			PodSandboxId: sb.PodSandboxId,
			Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: "hello"},
				Image:    &runtimeapi.ImageSpec{Image: "busybox"},
				Command:  []string{"sh", "-c", "echo 'Hello AppArmor!' && sleep 1h"},
			},
			SandboxConfig: sandbox,
		})
	}

	step("Pod hello-apparmor", "annotation %s: localhost/%s", annotation, denyWrite)
	resp, err := create("hello-apparmor", "localhost/"+denyWrite)
	if err != nil {
		return fmt.Errorf("hello-apparmor was refused: %v", err)
	}
	fmt.Printf("  -> forwarded: container %s created\n  -> the runtime received %s\n", resp.ContainerId, rec.last())

	step("Pod hello-apparmor-2", "annotation %s: localhost/%s (not loaded)", annotation, allowWrite)
	before := rec.count()
	_, err = create("hello-apparmor-2", "localhost/"+allowWrite)
	if err == nil {
		return fmt.Errorf("hello-apparmor-2 was not refused")
	}
	st := status.Convert(err)
	fmt.Printf("  -> refused: code %s\n  -> message (the kubelet's waiting message and event): %s\n", st.Code(), st.Message())
	fmt.Printf("  -> CreateContainer calls that reached the runtime for it: %d\n", rec.count()-before)

	step("Load the profile", "append %q to profiles and bump the revision, as apparmor_parser would; the kubelet retries", allowWrite+" (enforce)")
	if err := appendFile(filepath.Join(sec, "profiles"), allowWrite+" (enforce)\n"); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(sec, "revision"), []byte("2\n"), 0o644); err != nil {
		return err
	}
	if resp, err = create("hello-apparmor-2", "localhost/"+allowWrite); err != nil {
		return fmt.Errorf("retry refused: %v", err)
	}
	fmt.Printf("  -> forwarded: container %s created\n  -> the runtime received %s\n", resp.ContainerId, rec.last())

	step("Node labels", "the node-feature-discovery file armorshim keeps in step with the loaded profiles")
	if err := waitForContent(filepath.Join(features, "armorshim-apparmor"), allowWrite); err != nil {
		return err
	}
	nfd, _ := os.ReadFile(filepath.Join(features, "armorshim-apparmor"))
	fmt.Printf("    %s\n", strings.ReplaceAll(strings.TrimSpace(string(nfd)), "\n", "\n    "))
	fmt.Printf("  -> a pod that needs the profile selects such nodes with\n     nodeSelector: {apparmor.armorshim.io/%s: enforce}\n", allowWrite)

	step("An invalid reference", "annotation %s: foo/bar", annotation)
	_, err = create("hello-invalid", "foo/bar")
	st = status.Convert(err)
	fmt.Printf("  -> refused: code %s: %s\n", st.Code(), st.Message())

	step("Stop armorshim", "SIGTERM: it drains in-flight calls and removes its socket")
	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("armorshim exited: %v", err)
	}
	if _, err := os.Stat(shimSock); !os.IsNotExist(err) {
		return fmt.Errorf("socket %s still exists after shutdown", shimSock)
	}
	fmt.Println("  -> exited 0, socket removed")
	return nil
}

func step(title, format string, args ...any) {
	fmt.Printf("\n== %s: %s\n", title, fmt.Sprintf(format, args...))
}

func waitFor(sock string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("armorshim did not listen on %s within 10s", sock)
}

// waitForContent waits until the file at path holds want.
func waitForContent(path, want string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), want) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not mention %s within 10s", path, want)
}

func appendFile(path, data string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.WriteString(data)
	return err
}

// prefixed writes each line to stdout behind a prefix.
type prefixWriter struct {
	mu     sync.Mutex
	prefix string
	buf    []byte
}

func prefixed(p string) *prefixWriter { return &prefixWriter{prefix: p} }

func (w *prefixWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := strings.IndexByte(string(w.buf), '\n')
		if i < 0 {
			return len(b), nil
		}
		fmt.Printf("%s%s\n", w.prefix, w.buf[:i])
		w.buf = w.buf[i+1:]
	}
}
