package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// node is what the benchmark knows of the fake node, read once from it.
type node struct {
	containers []string // container IDs
	// sandboxOf and nameOf: each container's sandbox and name, in the
	// order of containers (P6 creates them again before starting them).
	sandboxOf, nameOf []string
	sandboxes         []string // sandbox IDs
	uids              []string // pod UIDs, as the kubelet's label selector uses them
	listBytes         int      // encoded size of the full ListContainers response
}

func bench(o options) error {
	dir, err := os.MkdirTemp("", "armorshim-bench")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bin := o.armorshim
	if bin == "" {
		fmt.Fprintln(os.Stderr, "building armorshim ...")
		if bin, err = buildArmorshim(dir); err != nil {
			return err
		}
	}
	rows := newRows(o)
	var nd *node
	var p6 *p6Result
	if o.want("calls") || o.want("mix") || o.want("ready") || o.want("start") {
		if nd, p6, err = benchPaths(o, dir, self, bin, rows); err != nil {
			return err
		}
	}
	if o.want("abuse") {
		if err := benchAbuse(o, dir, self, bin, rows); err != nil {
			return fmt.Errorf("P7: %w", err)
		}
	}

	printHeader(o, nd)
	var ran []*row
	for _, rw := range rows.list {
		if len(rw.vals[direct])+len(rw.vals[armorshim]) > 0 {
			ran = append(ran, rw)
		}
	}
	printTable(os.Stdout, ran)
	pass, miss := 0, 0
	for _, rw := range ran {
		switch _, v := rw.verdict(); v {
		case "PASS":
			pass++
		case "MISS":
			miss++
		}
	}
	if p6 != nil {
		fmt.Println()
		p6.print(os.Stdout, rows)
	}
	fmt.Printf("\ntargets: %d PASS, %d MISS\n", pass, miss)
	return nil
}

// benchPaths runs the groups measured on the four paths to one fake node
// (calls, mix, ready, start) and returns the node and P6's summary (nil
// when start did not run).
func benchPaths(o options, dir, self, bin string, rows *rowSet) (*node, *p6Result, error) {
	sys, err := writeSecurityfs(filepath.Join(dir, "shim"), o.profiles)
	if err != nil {
		return nil, nil, err
	}
	// A second tree for the in-process decisions, so that their revision
	// changes never reach the armorshim process.
	inprocSys, err := writeSecurityfs(filepath.Join(dir, "inproc"), o.profiles)
	if err != nil {
		return nil, nil, err
	}

	// A fake procfs with a process for each container P6 starts, and
	// armorshim's configuration files: everything that would touch the host
	// (kernel log, profile loader, NFD file) is off; attestation is on
	// (armorshim's default) except for the second armorshim of P6.
	started := 0 // containers with a process: only P6 starts them
	if o.want("start") {
		started = min(o.containers, startSet)
	}
	procfs, err := writeProcfs(filepath.Join(dir, "shim"), started)
	if err != nil {
		return nil, nil, err
	}
	onConfig, offConfig := filepath.Join(dir, "armorshim.yaml"), filepath.Join(dir, "armorshim-attestation-off.yaml")
	if err := writeShimConfig(onConfig, "enforce"); err != nil {
		return nil, nil, err
	}
	if err := writeShimConfig(offConfig, "off"); err != nil {
		return nil, nil, err
	}
	metricsAddr, err := freeLoopbackPort()
	if err != nil {
		return nil, nil, err
	}

	// The processes.
	rtSock := filepath.Join(dir, "runtime.sock")
	shimSock := filepath.Join(dir, "armorshim.sock")
	typedSock := filepath.Join(dir, "typed.sock")
	relaySock := filepath.Join(dir, "relay.sock")
	rt, err := start(dir, "fake-runtime", self, "fake-runtime", "--listen", rtSock, "--containers", strconv.Itoa(o.containers))
	if err != nil {
		return nil, nil, err
	}
	defer rt.stop()
	if _, err := waitServing(rtSock, time.Now(), 60*time.Second); err != nil {
		return nil, nil, fmt.Errorf("fake runtime: %w (log %s)", err, rt.log)
	}
	shimArgsWith := func(sock, config string) []string {
		return []string{bin, "serve", "--config", config, "--listen", "unix://" + sock, "--runtime-endpoint", "unix://" + rtSock,
			"--sysfs", sys, "--procfs", procfs, "--profiles-dir=", "--node-features-dir="}
	}
	shimArgs := func(sock string) []string { return shimArgsWith(sock, onConfig) }
	shim, err := start(dir, "armorshim", append(shimArgs(shimSock), "--metrics-address", metricsAddr)...)
	if err != nil {
		return nil, nil, err
	}
	defer shim.stop()
	typedProc, err := start(dir, "typed-proxy", self, "typed-proxy", "--listen", typedSock, "--runtime-endpoint", rtSock)
	if err != nil {
		return nil, nil, err
	}
	defer typedProc.stop()
	relayProc, err := start(dir, "byte-relay", self, "l4-relay", "--listen", relaySock, "--runtime-endpoint", rtSock)
	if err != nil {
		return nil, nil, err
	}
	defer relayProc.stop()
	for sock, c := range map[string]*child{shimSock: shim, typedSock: typedProc, relaySock: relayProc} {
		if _, err := waitServing(sock, time.Now(), 10*time.Second); err != nil {
			return nil, nil, fmt.Errorf("%s: %w (log %s)", c.name, err, c.log)
		}
	}
	var clients [numPaths]*client
	for p, sock := range [numPaths]string{rtSock, shimSock, typedSock, relaySock} {
		if clients[p], err = dial(sock); err != nil {
			return nil, nil, err
		}
		defer clients[p].conn.Close()
	}
	nd, err := readNode(clients[direct], o.containers)
	if err != nil {
		return nil, nil, err
	}

	fmt.Fprintf(os.Stderr, "fake node: %d containers in %d pods, full ListContainers response %.2f MB; %d profiles loaded\n",
		len(nd.containers), len(nd.sandboxes), float64(nd.listBytes)/1e6, o.profiles)

	r := func(id string) *row { return rows.byID[id] }
	ctx := context.Background()
	createReq, err := proto.Marshal(createRequest(nd.sandboxes[0], benchProfile(o.profiles/2)))
	if err != nil {
		return nil, nil, err
	}
	typedCreate := createRequest(nd.sandboxes[0], benchProfile(o.profiles/2))

	// P1, P2 and the end-to-end CreateContainer: each run measures every
	// path, starting with a different one each run.
	for run := 0; run < o.runs && o.want("calls"); run++ {
		fmt.Fprintf(os.Stderr, "run %d/%d: P1 P2 P4 ...\n", run+1, o.runs)
		for k := 0; k < numPaths; k++ {
			p := (run + k) % numPaths
			c := clients[p]
			warm(ctx, c, nd)
			lists, err := timeCalls(o.listCalls, func(int) error {
				resp, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
				if err == nil && len(resp.Containers) != len(nd.containers) {
					err = fmt.Errorf("ListContainers returned %d containers, want %d", len(resp.Containers), len(nd.containers))
				}
				return err
			})
			if err != nil {
				return nil, nil, fmt.Errorf("%s: P1: %w", pathNames[p], err)
			}
			r("P1").vals[p] = append(r("P1").vals[p], median(lists)/1000)

			versions, err := timeCalls(o.unaryCalls, func(int) error {
				_, err := c.rt.Version(ctx, &runtimeapi.VersionRequest{})
				return err
			})
			if err != nil {
				return nil, nil, fmt.Errorf("%s: P2 Version: %w", pathNames[p], err)
			}
			r("P2a").vals[p] = append(r("P2a").vals[p], quantile(versions, 0.5))
			r("P2b").vals[p] = append(r("P2b").vals[p], quantile(versions, 0.99))

			statuses, err := timeCalls(o.unaryCalls, func(i int) error {
				_, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: nd.containers[i%len(nd.containers)]})
				return err
			})
			if err != nil {
				return nil, nil, fmt.Errorf("%s: P2 ContainerStatus: %w", pathNames[p], err)
			}
			r("P2c").vals[p] = append(r("P2c").vals[p], quantile(statuses, 0.5))
			r("P2d").vals[p] = append(r("P2d").vals[p], quantile(statuses, 0.99))

			creates, err := timeCalls(o.createCalls, func(int) error {
				_, err := c.rt.CreateContainer(ctx, typedCreate)
				return err
			})
			if err != nil {
				return nil, nil, fmt.Errorf("%s: P4 CreateContainer: %w", pathNames[p], err)
			}
			r("P4c").vals[p] = append(r("P4c").vals[p], quantile(creates, 0.5))
		}

		// P4 in process: armorshim's own decision work, no RPC.
		cached, bumped, err := decisionTimes(inprocSys, createReq, o.decisions, o.bumps)
		if err != nil {
			return nil, nil, fmt.Errorf("P4: %w", err)
		}
		r("P4a").vals[armorshim] = append(r("P4a").vals[armorshim], quantile(micros(cached), 0.5))
		r("P4b").vals[armorshim] = append(r("P4b").vals[armorshim], quantile(micros(bumped), 0.5))
	}

	procs := [numPaths]*child{direct: nil, armorshim: shim, typed: typedProc, relay: relayProc}

	// The peak RSS so far (P1's megabyte lists pass through), for context.
	for _, p := range []int{armorshim, typed, relay} {
		if v, err := procs[p].procStatus("VmHWM"); err == nil && o.want("calls") {
			r("P5c").vals[p] = append(r("P5c").vals[p], v)
		}
	}

	// P3 and the proxies' peak RSS under it: the peak is reset before each
	// measurement and read right after.
	for run := 0; run < o.runs && o.want("mix"); run++ {
		fmt.Fprintf(os.Stderr, "run %d/%d: P3 ...\n", run+1, o.runs)
		for k := 0; k < numPaths; k++ {
			p := (run + k) % numPaths
			if procs[p] != nil {
				if err := procs[p].resetPeakRSS(); err != nil {
					return nil, nil, fmt.Errorf("reset peak RSS: %w", err)
				}
			}
			tput, err := mix(ctx, clients[p], nd, o.callers, o.mixDuration)
			if err != nil {
				return nil, nil, fmt.Errorf("%s: P3: %w", pathNames[p], err)
			}
			r("P3").vals[p] = append(r("P3").vals[p], tput)
			if procs[p] != nil {
				hwm, err := procs[p].procStatus("VmHWM")
				if err != nil {
					return nil, nil, err
				}
				r("P5a").vals[p] = append(r("P5a").vals[p], hwm)
			}
		}
	}

	// P6: StartContainer with attestation, against a second armorshim with
	// attestation off.
	var p6 *p6Result
	if o.want("start") {
		offSock := filepath.Join(dir, "armorshim-off.sock")
		if p6, err = measureStarts(ctx, o, dir, nd, rows, clients[direct], clients[armorshim], shim, metricsAddr, procfs,
			offSock, shimArgsWith(offSock, offConfig)); err != nil {
			return nil, nil, fmt.Errorf("P6: %w", err)
		}
	}

	// P5 time to ready: fresh processes on fresh sockets.
	if o.want("ready") {
		fmt.Fprintln(os.Stderr, "P5: time to ready ...")
	}
	for i := 0; i < o.readyStarts && o.want("ready"); i++ {
		for _, p := range []int{armorshim, typed, relay} {
			sock := filepath.Join(dir, fmt.Sprintf("ready-%d-%d.sock", p, i))
			argv := map[int][]string{
				armorshim: shimArgs(sock),
				typed:     {self, "typed-proxy", "--listen", sock, "--runtime-endpoint", rtSock},
				relay:     {self, "l4-relay", "--listen", sock, "--runtime-endpoint", rtSock},
			}[p]
			t0 := time.Now()
			c, err := start(dir, fmt.Sprintf("ready-%d-%d", p, i), argv...)
			if err != nil {
				return nil, nil, err
			}
			d, err := waitServing(sock, t0, 10*time.Second)
			rss, _ := c.procStatus("VmRSS")
			c.stop()
			if err != nil {
				return nil, nil, fmt.Errorf("%s: %w (log %s)", pathNames[p], err, c.log)
			}
			r("P5b").vals[p] = append(r("P5b").vals[p], float64(d)/float64(time.Millisecond))
			r("P5d").vals[p] = append(r("P5d").vals[p], rss)
		}
	}

	return nd, p6, nil
}

// rows are the table's lines, in order, with their targets (issue 5).
type rowSet struct {
	list []*row
	byID map[string]*row
}

func newRows(o options) *rowSet {
	ratioMax := func(text string, limit float64) *target {
		return &target{text: text, onRatio: true, max: true, limit: limit}
	}
	rs := &rowSet{byID: map[string]*row{}}
	for _, r := range []*row{
		{id: "P1", name: fmt.Sprintf("ListContainers, %d containers", o.containers), unit: "ms/call", target: ratioMax("≤ 1.10×", 1.10)},
		{id: "P2a", name: "Version p50", unit: "µs", target: ratioMax("≤ 2.3×", 2.3)},
		{id: "P2b", name: "Version p99", unit: "µs"},
		{id: "P2c", name: "ContainerStatus p50", unit: "µs", target: ratioMax("≤ 2.3×", 2.3)},
		{id: "P2d", name: "ContainerStatus p99", unit: "µs"},
		{id: "P3", name: fmt.Sprintf("kubelet mix, %d callers", o.callers), unit: "calls/s", target: &target{text: "≥ 0.6×", onRatio: true, limit: 0.6}},
		{id: "P4a", name: fmt.Sprintf("decision p50, %d profiles, cached", o.profiles), unit: "µs", target: &target{text: "≤ 20 µs", max: true, limit: 20}},
		{id: "P4b", name: "decision p50, after a revision change", unit: "µs"},
		{id: "P4c", name: "CreateContainer p50, end to end", unit: "µs"},
		{id: "P5a", name: "peak RSS under P3 (VmHWM)", unit: "MiB", target: &target{text: "≤ 30 MiB", max: true, limit: 30}},
		{id: "P5b", name: "start to serving (Version answered)", unit: "ms", target: &target{text: "≤ 100 ms", max: true, limit: 100}},
		{id: "P5c", name: "peak RSS after P1/P2/P4 (VmHWM)", unit: "MiB"},
		{id: "P5d", name: "RSS when ready", unit: "MiB"},
		{id: "P6a", name: "StartContainer p50, attestation on", unit: "µs"},
		{id: "P6b", name: "StartContainer p99, attestation on", unit: "µs"},
		{id: "P6c", name: "StartContainer p50, attestation off", unit: "µs"},
		{id: "P6d", name: "StartContainer p99, attestation off", unit: "µs"},
		// The limit is set once measured: P6f + P6g + P6h of the same runs.
		{id: "P6e", name: "attestation's own cost p50 (on − off)", unit: "µs", target: &target{text: "≤ P6f+g+h", max: true}},
		{id: "P6f", name: "1 verbose ContainerStatus p50 (direct)", unit: "µs"},
		{id: "P6g", name: "decoding its info JSON p50 (in process)", unit: "µs"},
		{id: "P6h", name: "attestation's file reads p50 (in process)", unit: "µs"},
		{id: "P6i", name: "its cost, container created before armorshim (on − off)", unit: "µs"},
	} {
		rs.list = append(rs.list, r)
		rs.byID[r.id] = r
	}
	for _, r := range abuseRows(o) {
		rs.list = append(rs.list, r)
		rs.byID[r.id] = r
	}
	return rs
}

func printHeader(o options, nd *node) {
	var runs []string
	if nd != nil {
		runs = append(runs, fmt.Sprintf("%d runs", o.runs))
	}
	if o.want("abuse") {
		runs = append(runs, fmt.Sprintf("P7 %d runs", o.abuseRuns))
	}
	fmt.Printf("armorshim-bench: %s; median [min–max] over the runs; ratios are per run, to direct\n", strings.Join(runs, ", "))
	fmt.Printf("machine: %d CPUs (%s), %s, %s\n", runtime.NumCPU(), cpuModel(), kernel(), runtime.Version())
	if nd != nil {
		fmt.Printf("fake node: %d containers in %d pods; full ListContainers response %.2f MB; %d loaded profiles\n",
			len(nd.containers), len(nd.sandboxes), float64(nd.listBytes)/1e6, o.profiles)
	}
	fmt.Println()
}

// readNode lists the fake node once; want < 0 accepts any size.
func readNode(c *client, want int) (*node, error) {
	ctx := context.Background()
	cs, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
	if err != nil {
		return nil, err
	}
	if want >= 0 && len(cs.Containers) != want {
		return nil, fmt.Errorf("fake runtime has %d containers, want %d", len(cs.Containers), want)
	}
	sbs, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return nil, err
	}
	nd := &node{listBytes: proto.Size(cs)}
	for _, x := range cs.Containers {
		nd.containers = append(nd.containers, x.Id)
		nd.sandboxOf = append(nd.sandboxOf, x.PodSandboxId)
		nd.nameOf = append(nd.nameOf, x.GetMetadata().GetName())
	}
	for _, s := range sbs.Items {
		nd.sandboxes = append(nd.sandboxes, s.Id)
		nd.uids = append(nd.uids, s.Metadata.Uid)
	}
	return nd, nil
}

// warm makes a few calls of each kind so that connections, buffers and the
// proxies' caches are warm before timing.
func warm(ctx context.Context, c *client, nd *node) {
	for i := 0; i < 50; i++ {
		c.rt.Version(ctx, &runtimeapi.VersionRequest{})
		c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: nd.containers[i]})
	}
	c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
}

// timeCalls makes n calls one after the other and returns each one's
// duration in microseconds.
func timeCalls(n int, call func(i int) error) ([]float64, error) {
	out := make([]float64, 0, n)
	for i := 0; i < n; i++ {
		t0 := time.Now()
		if err := call(i); err != nil {
			return nil, err
		}
		out = append(out, float64(time.Since(t0))/float64(time.Microsecond))
	}
	return out, nil
}

// mixCalls are the kubelet's usual calls, by weight: status polls of
// containers and sandboxes, per-pod lists (by sandbox, by pod UID label),
// stats, and the image filesystem (eviction manager).
var mixCalls = []func(ctx context.Context, c *client, nd *node, i int) error{
	func(ctx context.Context, c *client, nd *node, i int) error {
		_, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: nd.containers[i%len(nd.containers)]})
		return err
	},
	func(ctx context.Context, c *client, nd *node, i int) error {
		_, err := c.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: nd.sandboxes[i%len(nd.sandboxes)]})
		return err
	},
	func(ctx context.Context, c *client, nd *node, i int) error {
		_, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{Filter: &runtimeapi.ContainerFilter{PodSandboxId: nd.sandboxes[i%len(nd.sandboxes)]}})
		return err
	},
	func(ctx context.Context, c *client, nd *node, i int) error {
		_, err := c.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
			LabelSelector: map[string]string{"io.kubernetes.pod.uid": nd.uids[i%len(nd.uids)]}}})
		return err
	},
	func(ctx context.Context, c *client, nd *node, i int) error {
		_, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: nd.containers[(i*7)%len(nd.containers)]})
		return err
	},
	func(ctx context.Context, c *client, nd *node, i int) error {
		_, err := c.rt.ContainerStats(ctx, &runtimeapi.ContainerStatsRequest{ContainerId: nd.containers[i%len(nd.containers)]})
		return err
	},
	func(ctx context.Context, c *client, nd *node, i int) error {
		_, err := c.rt.ListContainerStats(ctx, &runtimeapi.ListContainerStatsRequest{Filter: &runtimeapi.ContainerStatsFilter{PodSandboxId: nd.sandboxes[i%len(nd.sandboxes)]}})
		return err
	},
	func(ctx context.Context, c *client, nd *node, i int) error {
		_, err := c.im.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
		return err
	},
}

// mix runs callers goroutines making mixCalls round-robin for d and returns
// the completed calls per second.
func mix(ctx context.Context, c *client, nd *node, callers int, d time.Duration) (float64, error) {
	var done atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	t0 := time.Now()
	deadline := t0.Add(d)
	for g := 0; g < callers; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := g * 977; time.Now().Before(deadline); i++ {
				if err := mixCalls[i%len(mixCalls)](ctx, c, nd, i); err != nil {
					firstErr.CompareAndSwap(nil, err)
					return
				}
				done.Add(1)
			}
		}(g)
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return math.NaN(), err
	}
	return float64(done.Load()) / time.Since(t0).Seconds(), nil
}
