// Command armorshim-bench measures armorshim against the direct path and a
// typed CRI proxy, in one run against one backend (issue 5).
//
// It starts three processes, each from a binary of its own as on a node:
//
//   - a fake CRI runtime (this binary re-executed as "fake-runtime") holding
//     5000 containers with the kubelet's labels and annotations;
//   - the real armorshim, built into a temporary directory and started with
//     "serve" in front of the runtime, over a fake securityfs holding 10000
//     loaded profiles;
//   - a typed proxy (this binary as "typed-proxy"), which decodes and
//     re-encodes every message with the generated cri-api types, as the
//     existing CRI proxies do.
//
// For P6 (StartContainer with start attestation, issue 7) a second armorshim
// runs with attestation off, so that the attestation's own cost shows.
//
// Each scenario then runs against the runtime's own socket (direct), through
// armorshim and through the typed proxy, interleaved and repeated --runs
// times; the table gives the median over the runs with the min–max spread,
// and the ratios to direct computed within each run.
//
// P7 (memory under abuse) starts fresh processes for every case and run: a
// fake runtime alone (gRPC-Go direct), or armorshim in front of one; each
// case is one way a client can make an HTTP/2 server hold memory, and the
// table gives how much each process's RSS grew (abuse.go).
//
// --only runs some of the groups (calls, mix, ready, start, abuse); -h
// lists them with their rows.
//
// Usage:
//
//	armorshim-bench [flags]                               run the benchmark
//	armorshim-bench fake-runtime --listen SOCK --containers N
//	armorshim-bench typed-proxy --listen SOCK --runtime-endpoint SOCK
//	armorshim-bench l4-relay --listen SOCK --runtime-endpoint SOCK
//	armorshim-bench load --socket SOCK --kind version|status|list|mix   (for profiling)
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"
)

func main() {
	var err error
	switch mode := modeOf(os.Args[1:]); mode {
	case "fake-runtime":
		err = runFakeRuntime(os.Args[2:])
	case "typed-proxy":
		err = runTypedProxy(os.Args[2:])
	case "l4-relay":
		err = runRelay(os.Args[2:])
	case "load":
		err = runLoad(os.Args[2:])
	case "":
		err = runBench(os.Args[1:])
	default:
		err = fmt.Errorf("unknown mode %q (want fake-runtime, typed-proxy, l4-relay, load or flags)", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "armorshim-bench:", err)
		os.Exit(1)
	}
}

// modeOf returns the first argument when it is a mode rather than a flag.
func modeOf(args []string) string {
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		return args[0]
	}
	return ""
}

// options are the benchmark's knobs; the defaults are issue 5's scenarios
// sized to finish in about two minutes on two cores.
type options struct {
	armorshim    string          // prebuilt armorshim binary; empty: build one
	runs         int             // repetitions of every scenario
	containers   int             // containers on the fake node (P1)
	profiles     int             // loaded profiles in the fake securityfs (P4)
	listCalls    int             // ListContainers calls per path per run (P1)
	unaryCalls   int             // calls per path per run for each tiny unary (P2)
	callers      int             // concurrent callers (P3)
	mixDuration  time.Duration   // length of one P3 measurement per path
	createCalls  int             // CreateContainer calls per path per run (P4)
	decisions    int             // in-process decisions per run, cached (P4)
	bumps        int             // in-process decisions per run after a revision change (P4)
	readyStarts  int             // fresh starts timed for the time to ready (P5)
	startCalls   int             // StartContainer calls per path per run (P6)
	abuseRuns    int             // runs of every abuse (P7)
	stallStreams int             // streams of the flow-control stall (P7h)
	only         map[string]bool // the groups to run; nil: all
}

// groups are the parts of the benchmark --only selects, with their rows.
var groups = []struct{ name, rows string }{
	{"calls", "P1, P2, P4 and P5c: serial calls and in-process decisions"},
	{"mix", "P3 and P5a: the kubelet's mix of calls, concurrent, and the peak RSS under it"},
	{"ready", "P5b and P5d: fresh starts to serving"},
	{"start", "P6: StartContainer with start attestation"},
	{"abuse", "P7: memory under abuse, against armorshim and gRPC-Go direct"},
}

// want reports whether group runs.
func (o options) want(group string) bool { return o.only == nil || o.only[group] }

func runBench(args []string) error {
	o := options{}
	fs := flag.NewFlagSet("armorshim-bench", flag.ContinueOnError)
	fs.StringVar(&o.armorshim, "armorshim", "", "armorshim binary to measure (default: go build ./cmd/armorshim into a temporary directory)")
	fs.IntVar(&o.runs, "runs", 7, "runs of every scenario; the table shows their median and min–max")
	fs.IntVar(&o.containers, "containers", 5000, "containers on the fake node (P1)")
	fs.IntVar(&o.profiles, "profiles", 10000, "profiles loaded in the fake securityfs (P4)")
	fs.IntVar(&o.listCalls, "list-calls", 10, "full ListContainers calls per path per run (P1)")
	fs.IntVar(&o.unaryCalls, "unary-calls", 2000, "calls per path per run of each tiny unary method (P2)")
	fs.IntVar(&o.callers, "callers", 64, "concurrent callers (P3)")
	fs.DurationVar(&o.mixDuration, "mix-duration", 2*time.Second, "length of the P3 throughput measurement per path per run")
	fs.IntVar(&o.createCalls, "create-calls", 500, "CreateContainer calls per path per run (P4 end to end)")
	fs.IntVar(&o.decisions, "decisions", 20000, "in-process decisions per run with the revision unchanged (P4)")
	fs.IntVar(&o.bumps, "bumps", 300, "in-process decisions per run each after a revision change (P4)")
	fs.IntVar(&o.readyStarts, "ready-starts", 7, "fresh armorshim starts timed to ready (P5)")
	fs.IntVar(&o.startCalls, "start-calls", 500, "StartContainer calls per path per run (P6)")
	fs.IntVar(&o.abuseRuns, "abuse-runs", 3, "runs of every abuse, each on fresh processes (P7)")
	fs.IntVar(&o.stallStreams, "abuse-stall-streams", 50, "streams of about 4 MB each whose window the client never grants (P7h)")
	only := fs.String("only", "", "run only these groups, comma-separated: "+groupNames()+" (default: all)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage of armorshim-bench:\n")
		fs.PrintDefaults()
		fmt.Fprintf(fs.Output(), "\nGroups (--only):\n")
		for _, g := range groups {
			fmt.Fprintf(fs.Output(), "  %-6s %s\n", g.name, g.rows)
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if *only != "" {
		o.only = map[string]bool{}
		for _, g := range strings.Split(*only, ",") {
			if !strings.Contains(" "+groupNames()+" ", " "+g+" ") {
				return fmt.Errorf("--only: unknown group %q (want %s)", g, groupNames())
			}
			o.only[g] = true
		}
	}
	if o.abuseRuns < 1 || o.stallStreams < 1 {
		return fmt.Errorf("--abuse-runs and --abuse-stall-streams must be at least 1")
	}
	if o.startCalls < 1 {
		return fmt.Errorf("--start-calls must be at least 1")
	}
	if o.runs < 1 {
		return fmt.Errorf("--runs must be at least 1")
	}
	return bench(o)
}

func groupNames() string {
	var names []string
	for _, g := range groups {
		names = append(names, g.name)
	}
	return strings.Join(names, " ")
}
