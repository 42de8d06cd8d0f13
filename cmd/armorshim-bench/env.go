package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// child is a process the benchmark started; its output goes to a log file.
type child struct {
	name string
	cmd  *exec.Cmd
	log  string
}

// start runs argv as a child process logging to dir/name.log.
func start(dir, name string, argv ...string) (*child, error) {
	logPath := filepath.Join(dir, name+".log")
	lf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = lf, lf
	if err := cmd.Start(); err != nil {
		lf.Close()
		return nil, err
	}
	lf.Close() // the child holds its own descriptor
	return &child{name: name, cmd: cmd, log: logPath}, nil
}

// stop ends the child with SIGTERM, then SIGKILL after two seconds.
func (c *child) stop() {
	c.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// procStatus reads a "kB" field (VmHWM, VmRSS) of the child's
// /proc/PID/status, in MiB.
func (c *child) procStatus(field string) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024, err
		}
	}
	return 0, fmt.Errorf("%s: no %s in /proc/%d/status", c.name, field, c.cmd.Process.Pid)
}

// resetPeakRSS resets the child's VmHWM to its current RSS (Linux ≥ 4.0:
// writing 5 to /proc/PID/clear_refs), so a later VmHWM is the peak of what
// ran in between.
func (c *child) resetPeakRSS() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", c.cmd.Process.Pid), []byte("5"), 0)
}

// client is one path to the runtime: a connection as the kubelet holds one,
// with the kubelet's 16 MiB message limit.
type client struct {
	conn *grpc.ClientConn
	rt   runtimeapi.RuntimeServiceClient
	im   runtimeapi.ImageServiceClient
}

func dial(sock string) (*client, error) {
	conn, err := grpc.NewClient("unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMessageSize), grpc.MaxCallSendMsgSize(maxMessageSize)))
	if err != nil {
		return nil, err
	}
	return &client{conn: conn, rt: runtimeapi.NewRuntimeServiceClient(conn), im: runtimeapi.NewImageServiceClient(conn)}, nil
}

// waitServing waits until a Version call on sock succeeds, polling every
// 200 µs, and returns the time since since.
func waitServing(sock string, since time.Time, timeout time.Duration) (time.Duration, error) {
	deadline := since.Add(timeout)
	for time.Now().Before(deadline) {
		c, err := net.Dial("unix", sock)
		if err != nil {
			time.Sleep(200 * time.Microsecond)
			continue
		}
		c.Close()
		cl, err := dial(sock)
		if err != nil {
			return 0, err
		}
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		_, err = cl.rt.Version(ctx, &runtimeapi.VersionRequest{}, grpc.WaitForReady(true))
		cancel()
		cl.conn.Close()
		if err == nil {
			return time.Since(since), nil
		}
		time.Sleep(200 * time.Microsecond)
	}
	return 0, fmt.Errorf("%s did not answer Version within %s", sock, timeout)
}

// writeSecurityfs writes a fake sysfs tree under dir with AppArmor enabled
// and n profiles loaded, named benchProfile(i), and returns its root.
func writeSecurityfs(dir string, n int) (string, error) {
	sys := filepath.Join(dir, "sys")
	sec := filepath.Join(sys, "kernel", "security", "apparmor")
	var profiles strings.Builder
	for i := 0; i < n; i++ {
		mode := "enforce"
		if i%10 == 9 {
			mode = "complain"
		}
		fmt.Fprintf(&profiles, "%s (%s)\n", benchProfile(i), mode)
	}
	for path, data := range map[string]string{
		filepath.Join(sys, "module", "apparmor", "parameters", "enabled"): "Y\n",
		filepath.Join(sec, "profiles"):                                    profiles.String(),
		filepath.Join(sec, "revision"):                                    "1\n",
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return "", err
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			return "", err
		}
	}
	return sys, nil
}

// benchProfile names the i-th loaded profile; some are children ("//") as on
// a real node.
func benchProfile(i int) string {
	if i%50 == 49 {
		return fmt.Sprintf("k8s-team-%d-app//child-%d", i%23, i)
	}
	return fmt.Sprintf("k8s-team-%d-app-%05d", i%23, i)
}

// buildArmorshim builds ./cmd/armorshim into dir, as `make build` does.
func buildArmorshim(dir string) (string, error) {
	out := filepath.Join(dir, "armorshim")
	cmd := exec.Command("go", "build", "-o", out, "./cmd/armorshim")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("go build ./cmd/armorshim (run from the repository root): %w", err)
	}
	return out, nil
}
