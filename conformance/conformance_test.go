//go:build conformance

package conformance

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// knownDifferences are the cases known to pass against gRPC-Go directly
// and fail through armorshim's relay, keyed "<suite> <target> <case>"
// (for example "h2spec armorshim http2/5.1/1"), with what the relay does
// instead. They are reported on every run (and not run again) but do not
// fail it; any other such case does. The relay (cri/h2relay) is to be
// fixed, not this list: remove an entry once its case passes.
//
// None today.
var knownDifferences = map[string]string{}

// Targets: where the suites send their calls.
const (
	direct    = "direct"     // gRPC-Go's interop server itself
	relay     = "relay"      // cri/h2relay in front of it, every call streamed
	relayHeld = "relay-held" // the same, unary calls held whole
	armorshim = "armorshim"  // the real `armorshim serve` in front of it
)

var targetTitle = map[string]string{
	direct:    "gRPC-Go direct",
	relay:     "h2relay",
	relayHeld: "h2relay, unary held",
	armorshim: "armorshim serve",
}

// suite is one conformance suite's results on each target.
type suite struct {
	name, version string
	targets       []string
	cases         []caseInfo
	mu            sync.Mutex
	results       map[string]map[string]outcome // target → case → outcome
	// retried are the cases that failed through a target and passed there
	// when run again: target → case → the first failure.
	retried map[string]map[string]string
	// differences are the cases that pass directly and fail through a
	// target, key → detail.
	differences map[string]string
}

func newSuite(name, version string, targets ...string) *suite {
	s := &suite{name: name, version: version, targets: targets, results: map[string]map[string]outcome{},
		retried: map[string]map[string]string{}, differences: map[string]string{}}
	for _, tg := range targets {
		s.results[tg] = map[string]outcome{}
		s.retried[tg] = map[string]string{}
	}
	return s
}

func (s *suite) set(target, id string, o outcome) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.results[target][id] = o
}

func (s *suite) key(target, id string) string { return s.name + " " + target + " " + id }

// compare finds the cases that pass directly and fail through a target.
// Each one not in knownDifferences is run again (retry returns its
// outcome) up to twice: one that then passes counts as passed and is
// reported as retried.
func (s *suite) compare(t *testing.T, retry func(target, id string) outcome) {
	for _, c := range s.cases {
		if s.results[direct][c.ID].Result != pass {
			continue
		}
		for _, tg := range s.targets[1:] {
			first := s.results[tg][c.ID]
			if first.Result != fail {
				continue
			}
			o := first
			_, known := knownDifferences[s.key(tg, c.ID)]
			for try := 0; try < 2 && o.Result == fail && !known; try++ {
				o = retry(tg, c.ID)
			}
			if o.Result != fail {
				s.results[tg][c.ID] = o
				s.retried[tg][c.ID] = first.Detail
				t.Logf("%s: %s failed through %s, then passed when run again (first: %s)", s.name, c.ID, tg, first.Detail)
				continue
			}
			s.differences[s.key(tg, c.ID)] = o.Detail
		}
	}
}

// check fails the test for each difference not in knownDifferences.
func (s *suite) check(t *testing.T) {
	for k, d := range s.differences {
		if why, ok := knownDifferences[k]; ok {
			t.Logf("known difference %s: %s (knownDifferences: %s)", k, d, why)
			continue
		}
		t.Errorf("%s: passes against gRPC-Go directly, fails through armorshim: %s", k, d)
	}
	for k := range knownDifferences {
		if strings.HasPrefix(k, s.name+" ") {
			if _, ok := s.differences[k]; !ok {
				t.Logf("knownDifferences lists %s, which no longer differs: remove it", k)
			}
		}
	}
}

func TestConformance(t *testing.T) {
	start := time.Now()
	tl := prepareTools(t)
	bin := armorshimBinary(t)
	built := time.Now()
	dir := t.TempDir()
	logs := filepath.Join(dir, "logs")
	if err := os.MkdirAll(logs, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := map[string]string{}
	addr[direct] = startInteropServer(t, tl.interopServer, dir)
	backendSock := filepath.Join(dir, "backend.sock")
	forwardUnix(t, backendSock, addr[direct])
	addr[relay] = startRelay(t, addr[direct], false)
	addr[relayHeld] = startRelay(t, addr[direct], true)
	addr[armorshim] = startArmorshim(t, bin, dir, backendSock)
	t.Logf("gRPC-Go interop server %s; h2relay %s, unary held %s; armorshim %s", addr[direct], addr[relay], addr[relayHeld], addr[armorshim])
	ready := time.Now()

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	h2 := newSuite("h2spec", tl.h2specVersion, direct, relay, armorshim)
	gi := newSuite("interop", tl.grpcVersion, direct, relay, relayHeld)
	gi.cases = interopCases

	// The three h2spec runs mostly wait for frames that do not come: they
	// run side by side, and beside the interop cases.
	var wg sync.WaitGroup
	errs := make(chan error, len(h2.targets))
	for _, tg := range h2.targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cases, res, err := runH2spec(ctx, tl.h2spec, addr[tg], logs, "h2spec-"+tg, h2specTimeout)
			if err != nil {
				errs <- err
				return
			}
			h2.mu.Lock()
			defer h2.mu.Unlock()
			h2.results[tg] = res
			if tg == direct {
				h2.cases = cases
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, c := range gi.cases {
			for _, tg := range gi.targets {
				gi.set(tg, c.ID, runInterop(ctx, tl.interopClient, addr[tg], logs, "interop-"+tg, c.ID))
			}
		}
	}()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	suites := time.Now()

	h2.compare(t, func(tg, id string) outcome {
		name := "h2spec-" + tg + "-retry-" + strings.ReplaceAll(id, "/", "_")
		_, res, err := runH2spec(ctx, tl.h2spec, addr[tg], logs, name, h2specRetryTimeout, id)
		if err != nil {
			return outcome{Result: fail, Detail: err.Error()}
		}
		return res[id]
	})
	gi.compare(t, func(tg, id string) outcome {
		return runInterop(ctx, tl.interopClient, addr[tg], logs, "interop-"+tg+"-retry", id)
	})

	toolsState := "built"
	if tl.cached {
		toolsState = "cached"
	}
	timing := fmt.Sprintf("tools %s in %s, servers up in %s, suites %s, retries %s", toolsState,
		built.Sub(start).Round(time.Second), ready.Sub(built).Round(100*time.Millisecond),
		suites.Sub(ready).Round(time.Second), time.Since(suites).Round(time.Second))
	rep := report(tl, h2, gi, timing)
	t.Log("\n" + rep)
	if doc := os.Getenv("ARMORSHIM_CONFORMANCE_DOC"); doc != "" {
		if !filepath.IsAbs(doc) {
			doc = filepath.Join("..", doc)
		}
		if err := writeResults(doc, rep); err != nil {
			t.Error(err)
		}
	}
	h2.check(t)
	gi.check(t)
	if t.Failed() {
		keepLogs(t, logs)
	}
}

// keepLogs copies the run's logs out of the test's temporary directory,
// which is removed when it ends.
func keepLogs(t *testing.T, logs string) {
	keep, err := os.MkdirTemp("", "armorshim-conformance-logs")
	if err != nil {
		return
	}
	entries, _ := os.ReadDir(logs)
	for _, e := range entries {
		if b, err := os.ReadFile(filepath.Join(logs, e.Name())); err == nil {
			os.WriteFile(filepath.Join(keep, e.Name()), b, 0o644)
		}
	}
	for _, f := range []string{"interop-server.log", "armorshim.log"} {
		if b, err := os.ReadFile(filepath.Join(filepath.Dir(logs), f)); err == nil {
			os.WriteFile(filepath.Join(keep, f), b, 0o644)
		}
	}
	t.Logf("logs kept in %s", keep)
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
