//go:build conformance

package conformance

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// interopCases are the test cases gRPC-Go's own interop script runs
// (interop/interop_test.sh), with its service config. pick_first_unary is
// left out there too: it needs servers that report an ID. The cases that
// need Google credentials need Google.
var interopCases = []caseInfo{
	{"empty_unary", "empty request and response"},
	{"large_unary", "one 271828-byte request, one 314159-byte response"},
	{"client_streaming", "request stream, one response"},
	{"server_streaming", "one request, response stream"},
	{"ping_pong", "full duplex, one response per request"},
	{"empty_stream", "full duplex, no message"},
	{"timeout_on_sleeping_server", "deadline exceeded while the server sleeps"},
	{"cancel_after_begin", "client streaming cancelled before any message"},
	{"cancel_after_first_response", "full duplex cancelled after the first response"},
	{"status_code_and_message", "a status the server is asked to return, unary and streaming"},
	{"special_status_message", "a status message with multi-byte and control characters"},
	{"custom_metadata", "initial and binary trailing metadata echoed, unary and streaming"},
	{"unimplemented_method", "a method the service lacks: Unimplemented"},
	{"unimplemented_service", "a service the server lacks: Unimplemented"},
	{"orca_per_rpc", "ORCA load reports in trailers"},
	{"orca_oob", "ORCA out-of-band load report stream"},
	{"rpc_soak", "10 large unary calls on one channel, each under 1s"},
	{"channel_soak", "10 large unary calls, each on a new channel"},
}

// interopServiceConfig is the service config interop_test.sh gives the
// client (the ORCA cases need its load balancer).
const interopServiceConfig = `{ "loadBalancingConfig": [{ "test_backend_metrics_load_balancer": {} }]}`

// interopTimeout bounds one case (interop_test.sh gives each 20s).
const interopTimeout = 30 * time.Second

// runInterop runs one interop test case against addr.
func runInterop(ctx context.Context, bin, addr, dir, name, testCase string) outcome {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return outcome{Result: fail, Detail: err.Error()}
	}
	ctx, cancel := context.WithTimeout(ctx, interopTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--server_host="+host, "--server_port="+port,
		"--test_case="+testCase, "--service_config_json="+interopServiceConfig)
	out, err := cmd.CombinedOutput()
	os.WriteFile(filepath.Join(dir, name+"-"+testCase+".log"), out, 0o644)
	if err == nil {
		return outcome{Result: pass}
	}
	detail := err.Error()
	if ctx.Err() != nil {
		detail = "no result within " + interopTimeout.String()
	}
	// The client ends with a FATAL line saying what went wrong.
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if i := strings.Index(l, "FATAL: "); i >= 0 {
			detail = strings.TrimPrefix(l[i+len("FATAL: "):], "[interop] ")
		}
	}
	return outcome{Result: fail, Detail: detail}
}
