package main

import (
	"context"
	"flag"
	"fmt"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// runLoad is the load mode, for profiling a proxy with perf or pprof while
// it runs: it drives one scenario against --socket for --duration and prints
// its rate. Start the fake runtime and the proxy by hand (see
// docs/performance.md).
func runLoad(args []string) error {
	fs := flag.NewFlagSet("load", flag.ContinueOnError)
	sock := fs.String("socket", "", "unix socket path of the CRI endpoint to load")
	kind := fs.String("kind", "version", "version (serial Version calls), status (serial ContainerStatus), verbose-status, start (serial StartContainer, P6), list (serial full ListContainers) or mix (P3)")
	callers := fs.Int("callers", 64, "concurrent callers for mix")
	d := fs.Duration("duration", 10*time.Second, "how long to load")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := dial(*sock)
	if err != nil {
		return err
	}
	defer c.conn.Close()
	ctx := context.Background()
	nd, err := readNode(c, -1)
	if err != nil {
		return err
	}
	if *kind == "mix" {
		rate, err := mix(ctx, c, nd, *callers, *d)
		if err != nil {
			return err
		}
		fmt.Printf("mix: %.0f calls/s\n", rate)
		return nil
	}
	calls := map[string]func(i int) error{
		"version": func(int) error {
			_, err := c.rt.Version(ctx, &runtimeapi.VersionRequest{})
			return err
		},
		"status": func(i int) error {
			_, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: nd.containers[i%len(nd.containers)]})
			return err
		},
		"start": func(i int) error {
			_, err := c.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: nd.containers[i%len(nd.containers)]})
			return err
		},
		"verbose-status": func(i int) error {
			_, err := c.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: nd.containers[i%len(nd.containers)], Verbose: true})
			return err
		},
		"list": func(int) error {
			_, err := c.rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
			return err
		},
	}
	call, ok := calls[*kind]
	if !ok {
		return fmt.Errorf("unknown --kind %q", *kind)
	}
	var times []float64
	for t0 := time.Now(); time.Since(t0) < *d; {
		ts, err := timeCalls(100, call)
		if err != nil {
			return err
		}
		times = append(times, ts...)
	}
	fmt.Printf("%s: %d calls, p50 %.1f µs, p99 %.1f µs\n", *kind, len(times), quantile(times, 0.5), quantile(times, 0.99))
	return nil
}
