//go:build conformance

package conformance

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/armorshim/armorshim/cri/h2relay"
)

// maxMessageSize is armorshim's default --max-message-size, given to the
// relay as shim.New gives it.
const maxMessageSize = 16 << 20

// stopOnCleanup ends cmd, which the test started, when the test ends.
func stopOnCleanup(t *testing.T, cmd *exec.Cmd, done <-chan struct{}) {
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
}

// tail returns the last n lines of the file at path.
func tail(path string, n int) string {
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

var listeningRE = regexp.MustCompile(`interop server listening on .*:(\d+)$`)

// startInteropServer runs gRPC-Go's interop server (plaintext) and returns
// its loopback address. The server binds every address (it takes only a
// port); the suite talks to it on 127.0.0.1 only.
func startInteropServer(t *testing.T, bin, dir string) string {
	t.Helper()
	logPath := filepath.Join(dir, "interop-server.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--port", "0")
	// At info level the server says which port it got.
	cmd.Env = append(os.Environ(), "GRPC_GO_LOG_SEVERITY_LEVEL=info", "GRPC_GO_LOG_VERBOSITY_LEVEL=0")
	out, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	port := make(chan string, 1)
	go func() {
		defer close(done)
		defer logf.Close()
		sc := bufio.NewScanner(out)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if m := listeningRE.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case port <- m[1]:
				default:
				}
			}
		}
		io.Copy(logf, out)
		cmd.Wait()
	}()
	stopOnCleanup(t, cmd, done)
	select {
	case p := <-port:
		return net.JoinHostPort("127.0.0.1", p)
	case <-done:
		t.Fatalf("the interop server exited:\n%s", tail(logPath, 20))
	case <-time.After(30 * time.Second):
		t.Fatalf("the interop server did not say its port within 30s:\n%s", tail(logPath, 20))
	}
	return ""
}

// forwardUnix serves a unix socket at sock whose connections are copied,
// byte for byte, to and from the TCP address addr: armorshim's backends are
// unix sockets, the interop server listens on TCP only.
func forwardUnix(t *testing.T, sock, addr string) {
	t.Helper()
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			conns[c] = struct{}{}
		} else {
			delete(conns, c)
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			track(c, true)
			track(b, true)
			wg.Add(1)
			go func() {
				defer wg.Done()
				var half sync.WaitGroup
				half.Add(2)
				pipe := func(dst, src net.Conn) {
					defer half.Done()
					io.Copy(dst, src)
					if cw, ok := dst.(interface{ CloseWrite() error }); ok {
						cw.CloseWrite()
					}
				}
				go pipe(b, c)
				go pipe(c, b)
				half.Wait()
				c.Close()
				b.Close()
				track(c, false)
				track(b, false)
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
}

// routeAll are relay hooks that send every call, whatever its path, to one
// backend. armorshim's own hooks (cri.Proxy) relay the CRI's paths only;
// that filter has its own tests (cri/paths_*_test.go), and gRPC's interop
// service is no CRI service. With hold set, each unary call is held whole
// as armorshim holds CreateContainer and StartContainer: its request goes
// through an Inspector that hands back a copy of the message (so it is
// framed anew, as a rewritten CreateContainer is), and its answer through a
// vetting function that lets it pass.
type routeAll struct {
	backend *h2relay.Backend
	hold    bool
}

// unaryMethods are the interop services' unary methods.
var unaryMethods = map[string]bool{
	"/grpc.testing.TestService/EmptyCall":                  true,
	"/grpc.testing.TestService/UnaryCall":                  true,
	"/grpc.testing.TestService/CacheableUnaryCall":         true,
	"/grpc.testing.TestService/UnimplementedCall":          true,
	"/grpc.testing.UnimplementedService/UnimplementedCall": true,
}

func (h routeAll) Route(method string) (*h2relay.Backend, h2relay.Inspector) {
	if h.hold && unaryMethods[method] {
		return h.backend, passThrough
	}
	return h.backend, nil
}

func (routeAll) Done(string, codes.Code, time.Duration) {}

func passThrough(_ context.Context, req []byte) h2relay.Verdict {
	return h2relay.Verdict{
		Request:  append([]byte{}, req...),
		Response: func(context.Context, []byte, *status.Status) *status.Status { return nil },
	}
}

// startRelay serves h2relay, built as shim.New builds it but with routeAll
// hooks, on a loopback port in front of the TCP backend at addr.
func startRelay(t *testing.T, addr string, hold bool) string {
	t.Helper()
	b := &h2relay.Backend{Name: "interop server", Dial: func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}
	r := h2relay.New(h2relay.Config{Hooks: routeAll{backend: b, hold: hold}, MaxMessageSize: maxMessageSize})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Serve(l)
	}()
	t.Cleanup(func() {
		r.Close()
		<-done
	})
	return l.Addr().String()
}

// startArmorshim runs `armorshim serve` in front of the backend socket, on a
// loopback TCP socket handed over as systemd would (--listen fd://): h2spec
// speaks TCP only. It returns the address once armorshim's health service
// answers through it.
func startArmorshim(t *testing.T, bin, dir, backendSock string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // f keeps the socket open
	sysfs := filepath.Join(dir, "sys")
	if err := os.MkdirAll(sysfs, 0o755); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "armorshim.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, bin,
		"serve", "--config=", "--listen", "fd://", "--runtime-endpoint", "unix://"+backendSock,
		"--sysfs", sysfs, "--profiles-dir=", "--node-features-dir=")
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		cmd.Wait()
		logf.Close()
	}()
	stopOnCleanup(t, cmd, done)

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("armorshim's health service did not answer: %v\n%s", err, tail(logPath, 20))
	}
	return addr
}
