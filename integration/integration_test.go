//go:build integration

package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Steps each boot must report, in the order they appear in the results.
var (
	mainSteps = []string{"setup-containerd", "setup-armorshim",
		"s1-field", "s1-string", "s1-annotation", "s2-refused", "s2-after-load",
		"s3-runtime-default", "s4-unconfined", "s6-invalid", "s7-critest-apparmor", "s8-oci-spec",
		// issues 4, 6, 7 and 13 (guest/node.sh)
		"n4-default-profile", "n7-attested", "n7-attest-event-pid", "n7-denial-attributed", "n4-allowed-refused", "n4-profile-directory",
		"n4-nfd-labels", "n4-check", "n13-refused-owner", "n13-refused-symlink", "n13-reloaded", "n4-complain-refused", "n7-swap-detected", "n7-attested-from-config",
		"n4-disabled",
		"n6-hostnetwork-refused", "n6-privileged-refused", "n6-exempt-namespace", "n6-nginx-warned",
		// attestation against the kernel's labels (guest.sh, scenarios_attest)
		"n7-attest-child", "n7-attest-hat", "n7-attest-stack", "n7-attest-complain",
		// a profile learned from a workload (guest/learn.sh)
		"l1-learn-refused", "l2-learned", "l3-generated", "l4-enforced", "l5-undone-denied",
		// the Debian package (guest/package.sh)
		"deb-install", "deb-kubelet-untouched", "deb-serves", "deb-remove", "deb-purge"}
	noaaSteps = []string{"setup-containerd", "setup-armorshim", "s5-refused", "s5-no-profile"}
	// the kubelet boot (guest/kubelet.sh); its Pod Security Admission
	// fixtures are judged by psa_test.go
	kubeletSteps = []string{"setup-containerd", "k-setup", "k-apparmor-annotation", "k-apparmor-field",
		"k-apparmor-blocked", "k-apparmor-loaded-then-running", "k-nginx-warn", "k-nginx-enforce", "k-exempt-namespace", "k-psa"}
	// the cluster boot (guest/cluster.sh): the tutorials with kubectl on a
	// one-node cluster
	clusterSteps = []string{"setup-containerd", "c-setup", "c-apparmor-deny-write", "c-apparmor-blocked",
		"c-apparmor-daemonset", "c-node-labels", "c-ns-example", "c-ns-default", "c-dry-run",
		"c-cluster-nginx", "c-cluster-exempt", "c-static-pod"}
	// the fleet boot (guest/fleet.sh): systemd as PID 1, armorshim installed,
	// reconfigured, upgraded and removed with deploy/installer.yaml
	fleetSteps = []string{"setup-containerd", "f1-setup", "f2-blocked", "f3-install", "f4-decided", "f5-profiles",
		"f6-config", "f7-upgrade", "f8-uninstall"}
	// critest runs of the main boot; each leaves a JUnit report in the artefacts.
	critestRuns = []string{"apparmor-shim", "full-direct", "full-shim"}
)

// Hard limits per boot (TCG is slow; the full critest suite runs twice in
// the main boot). A boot that ends without ARMORSHIM-DONE is retried once.
var bootTimeout = map[string]time.Duration{"main": 60 * time.Minute, "noaa": 10 * time.Minute, "kubelet": 50 * time.Minute, "cluster": 40 * time.Minute, "fleet": 40 * time.Minute}

// Time kept back from a boot for what runs after it (the report), and the
// least a retry needs to be worth starting.
const (
	reserve  = 2 * time.Minute
	minRetry = 5 * time.Minute
)

type result struct {
	Step     string   `json:"step"`
	OK       bool     `json:"ok"`
	Mode     string   `json:"mode"`
	Evidence []string `json:"evidence"`
}

type critestLine struct {
	Run      string `json:"run"`
	Endpoint string `json:"endpoint"`
	RC       int    `json:"rc"`
	Summary  string `json:"summary"`
	Ran      string `json:"ran"`
	Seconds  int    `json:"seconds"`
}

type phase struct {
	Phase   string `json:"phase"`
	Seconds int    `json:"seconds"`
	Cached  *bool  `json:"cached,omitempty"`
}

// boot is what one guest boot reported on its serial console.
type boot struct {
	mode      string
	attempts  int
	wall      time.Duration
	done      bool
	fatal     []string
	results   map[string]result
	critest   map[string]critestLine
	phases    []phase
	artefacts string // directory with the files the guest wrote onto its out disk
	psa       []psaLine
}

func TestIntegration(t *testing.T) {
	t0 := time.Now()
	dir, _ := filepath.Abs(".")
	cache := os.Getenv("ARMORSHIM_CACHE")
	if cache == "" {
		cache = "/var/cache/armorshim-integration"
	}
	work := filepath.Join(cache, "last-run")
	if err := os.RemoveAll(work); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}

	fixtures := writePSAPods(t, filepath.Join(work, "payload-extra"))
	prep, prepPhases := prepare(t, dir, work)
	prepWall := time.Since(t0)

	// ARMORSHIM_IT_BOOTS picks boots for development; the test then fails
	// for the steps of the boots left out.
	boots := map[string]bool{"noaa": true, "kubelet": true, "cluster": true, "fleet": true, "main": true}
	if only := os.Getenv("ARMORSHIM_IT_BOOTS"); only != "" {
		boots = map[string]bool{}
		for _, m := range strings.Split(only, ",") {
			boots[strings.TrimSpace(m)] = true
		}
	}
	skipped := func(mode string) *boot {
		return &boot{mode: mode, results: map[string]result{}, critest: map[string]critestLine{}}
	}
	// the short boots first, so a long main boot cannot starve them
	noaaBoot, kubeletBoot, clusterBoot, fleetBoot, mainBoot := skipped("noaa"), skipped("kubelet"), skipped("cluster"), skipped("fleet"), skipped("main")
	if boots["noaa"] {
		noaaBoot = runBoot(t, prep, work, "noaa", []string{"apparmor=0"})
	}
	if boots["kubelet"] {
		kubeletBoot = runBoot(t, prep, work, "kubelet", nil)
		recordKubelet(t, dir, kubeletBoot)
	}
	if boots["cluster"] && os.Getenv("ARMORSHIM_RECORD") != "1" {
		clusterBoot = runBoot(t, prep, work, "cluster", nil)
	}
	if boots["fleet"] && os.Getenv("ARMORSHIM_RECORD") != "1" {
		// systemd as PID 1, quiet on the console
		fleetBoot = runBoot(t, prep, work, "fleet", []string{"systemd.show_status=0"})
	}
	base := newBaseline(dir, cache, prep)
	if boots["main"] {
		var mainArgs []string
		if base.cached() {
			mainArgs = append(mainArgs, "armorshim.direct=0")
		}
		mainBoot = runBoot(t, prep, work, "main", mainArgs)
		base.apply(t, mainBoot)
	}

	rep := &report{prep: prep, prepPhases: prepPhases, prepWall: prepWall,
		boots: []*boot{mainBoot, kubeletBoot, clusterBoot, fleetBoot, noaaBoot}}
	if os.Getenv("ARMORSHIM_RECORD") == "1" && !boots["main"] {
		// make record-kubelet: only the kubelet boot is judged
		rep.boots = []*boot{kubeletBoot}
	} else {
		rep.evaluate(mainBoot, mainSteps)
		rep.evaluate(noaaBoot, noaaSteps)
		rep.evaluate(clusterBoot, clusterSteps)
		rep.evaluate(fleetBoot, fleetSteps)
		rep.compareCritest(mainBoot)
	}
	rep.evaluate(kubeletBoot, kubeletSteps)
	rep.comparePSA(kubeletBoot, fixtures)
	rep.total = time.Since(t0)

	md := rep.markdown()
	if os.Getenv("ARMORSHIM_IT_BOOTS") == "" {
		if err := os.WriteFile(filepath.Join(dir, "results", "latest.md"), []byte(md), 0o644); err != nil {
			t.Errorf("write results: %v", err)
		}
	}
	fmt.Println(md)
	for _, f := range rep.failures {
		t.Error(f)
	}
}

// prepare runs prepare.sh and returns its ARMORSHIM-PREP key=value lines.
func prepare(t *testing.T, dir, work string) (map[string]string, []phase) {
	t.Helper()
	cmd := exec.Command("bash", filepath.Join(dir, "prepare.sh"), work)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("prepare.sh failed: %v", err)
	}
	prep := map[string]string{}
	var phases []phase
	for _, line := range strings.Split(string(out), "\n") {
		if kv, ok := strings.CutPrefix(line, "ARMORSHIM-PREP "); ok {
			k, v, _ := strings.Cut(kv, "=")
			prep[k] = v
		} else if js, ok := strings.CutPrefix(line, "ARMORSHIM-PHASE "); ok {
			var p phase
			if err := json.Unmarshal([]byte(js), &p); err != nil {
				t.Fatalf("bad phase line %q: %v", line, err)
			}
			phases = append(phases, p)
		}
	}
	for _, k := range []string{"kernel", "rootfs", "initrd", "out_main", "out_noaa", "out_kubelet", "out_cluster", "out_fleet"} {
		if prep[k] == "" {
			t.Fatalf("prepare.sh did not report %q", k)
		}
	}
	return prep, phases
}

// runBoot boots the guest in one mode, retrying once if it hangs or dies
// before reporting ARMORSHIM-DONE.
func runBoot(t *testing.T, prep map[string]string, work, mode string, extraArgs []string) *boot {
	t.Helper()
	var b *boot
	for attempt := 1; attempt <= 2; attempt++ {
		limit := bootTimeout[mode]
		if dl, ok := t.Deadline(); ok {
			limit = min(limit, time.Until(dl)-reserve)
		}
		if attempt > 1 && limit < minRetry {
			t.Logf("no time left to retry the %s boot", mode)
			break
		}
		b = bootOnce(t, prep, work, mode, extraArgs, attempt, limit)
		if b.done {
			break
		}
		t.Logf("%s boot attempt %d ended without ARMORSHIM-DONE (wall %s)", mode, attempt, b.wall.Round(time.Second))
	}
	return b
}

func bootOnce(t *testing.T, prep map[string]string, work, mode string, extraArgs []string, attempt int, limit time.Duration) *boot {
	b := &boot{mode: mode, attempts: attempt, results: map[string]result{}, critest: map[string]critestLine{}}
	outDisk := prep["out_"+mode]
	// a fresh, empty artefact disk for every attempt
	if err := os.Truncate(outDisk, 0); err == nil {
		_ = os.Truncate(outDisk, 256<<20)
	}
	appendArgs := append([]string{"console=ttyS0", "quiet", "loglevel=3",
		"softlockup_panic=1", "panic=-1", "armorshim.mode=" + mode}, extraArgs...)
	if n := os.Getenv("CRITEST_PARALLEL"); n != "" {
		appendArgs = append(appendArgs, "armorshim.parallel="+n)
	}
	if n := os.Getenv("CRITEST_TIMEOUT"); n != "" {
		appendArgs = append(appendArgs, "armorshim.critest_timeout="+n)
	}
	if os.Getenv("ARMORSHIM_RECORD") == "1" {
		appendArgs = append(appendArgs, "armorshim.record=1")
	}
	if os.Getenv("ARMORSHIM_IT_FULL") == "0" {
		appendArgs = append(appendArgs, "armorshim.full=0")
	}
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "4096",
		"-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot", "-nic", "none",
		"-kernel", prep["kernel"], "-initrd", prep["initrd"],
		"-append", strings.Join(appendArgs, " "),
		"-drive", "file="+prep["rootfs"]+",format=raw,if=virtio,snapshot=on",
		"-drive", "file="+outDisk+",format=raw,if=virtio")
	cmd.WaitDelay = 10 * time.Second
	serialPath := filepath.Join(work, fmt.Sprintf("serial-%s-%d.log", mode, attempt))
	serial, err := os.Create(serialPath)
	if err != nil {
		t.Fatal(err)
	}
	defer serial.Close()
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = serial
	start := time.Now()
	t.Logf("booting the %s guest (attempt %d), serial console in %s", mode, attempt, serialPath)
	if err := cmd.Start(); err != nil {
		t.Fatalf("qemu: %v", err)
	}
	sc := bufio.NewScanner(io.TeeReader(stdout, serial))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		b.parseLine(t, strings.TrimRight(sc.Text(), "\r"))
	}
	err = cmd.Wait()
	b.wall = time.Since(start)
	if ctx.Err() != nil {
		t.Logf("%s guest hit the hard timeout of %s", mode, limit.Round(time.Second))
	} else if err != nil {
		t.Logf("qemu exited: %v", err)
	}
	b.artefacts = filepath.Join(work, "artefacts-"+mode)
	_ = os.RemoveAll(b.artefacts)
	_ = os.MkdirAll(b.artefacts, 0o755)
	if out, err := exec.Command("tar", "-C", b.artefacts, "-xf", outDisk).CombinedOutput(); err != nil {
		t.Logf("no artefacts from the %s guest: %v %s", mode, err, bytes.TrimSpace(out))
	}
	return b
}

// parseLine handles one serial console line; markers may follow kernel noise.
func (b *boot) parseLine(t *testing.T, line string) {
	i := strings.Index(line, "ARMORSHIM-")
	if i < 0 {
		return
	}
	line = line[i:]
	kind, js, _ := strings.Cut(line, " ")
	if testing.Verbose() {
		fmt.Printf("[%s] %s\n", b.mode, truncate(line, 400))
	}
	var err error
	switch kind {
	case "ARMORSHIM-RESULT":
		var r result
		if err = json.Unmarshal([]byte(js), &r); err == nil {
			b.results[r.Step] = r
		}
	case "ARMORSHIM-CRITEST":
		var c critestLine
		if err = json.Unmarshal([]byte(js), &c); err == nil {
			b.critest[c.Run] = c
		}
	case "ARMORSHIM-PHASE":
		var p phase
		if err = json.Unmarshal([]byte(js), &p); err == nil {
			b.phases = append(b.phases, p)
		}
	case "ARMORSHIM-PSA":
		var p psaLine
		if err = json.Unmarshal([]byte(js), &p); err == nil {
			b.psa = append(b.psa, p)
		}
	case "ARMORSHIM-DONE":
		b.done = true
	case "ARMORSHIM-FATAL":
		b.fatal = append(b.fatal, js)
	}
	if err != nil {
		b.fatal = append(b.fatal, fmt.Sprintf("unparsable console line %q: %v", truncate(line, 200), err))
	}
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}
