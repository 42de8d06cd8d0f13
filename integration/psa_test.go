//go:build integration

package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/armorshim/armorshim/internal/psafixtures"
)

// psaLine is one Pod Security Admission fixture run through the kubelet
// (guest/kubelet.sh), as the kubelet and containerd reported it.
type psaLine struct {
	Fixture          string `json:"fixture"`
	Pod              string `json:"pod"`
	Outcome          string `json:"outcome"`
	Request          string `json:"request"`
	Container        string `json:"container"`
	Message          string `json:"message"`
	SandboxRequested string `json:"sandbox_requested"`
	Containerd       int    `json:"containerd_containers"`
	Seconds          int    `json:"seconds"`
}

// The images of the guest (prepare.sh) the fixtures run with.
var psaImages = psafixtures.Images{
	Root:    "registry.k8s.io/e2e-test-images/busybox:1.29-2",
	NonRoot: "gcr.io/k8s-staging-cri-tools/test-image-user-uid:latest",
}

// writePSAPods writes every fixture as a static pod, and the list the
// guest reads, into dir/psa-pods.
func writePSAPods(t *testing.T, dir string) []*psafixtures.Fixture {
	t.Helper()
	data, err := psafixtures.Dir()
	if err != nil {
		t.Fatal(err)
	}
	fixtures, err := psafixtures.Load(data)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "psa-pods")
	_ = os.RemoveAll(out)
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	var list strings.Builder
	all := os.Getenv("ARMORSHIM_PSA") == "all"
	seen := map[string]bool{}
	var run []*psafixtures.Fixture
	for _, f := range fixtures {
		if !all && !sampled(f, seen) {
			continue
		}
		run = append(run, f)
		pod := psafixtures.StaticPod(f, psaImages)
		b, err := psafixtures.Manifest(pod)
		if err != nil {
			t.Fatal(err)
		}
		file := pod.Namespace + "-" + pod.Name + ".yaml"
		if err := os.WriteFile(filepath.Join(out, file), b, 0o644); err != nil {
			t.Fatal(err)
		}
		hostPorts := 0
		for _, c := range append(append([]corev1.Container(nil), pod.Spec.InitContainers...), pod.Spec.Containers...) {
			for _, p := range c.Ports {
				if p.HostPort != 0 {
					hostPorts = 1
				}
			}
		}
		fmt.Fprintf(&list, "%s %s %s %d %d %s\n", file, pod.Namespace, pod.Name, len(pod.Spec.Containers), hostPorts, f.Path)
	}
	if err := os.WriteFile(filepath.Join(out, "list"), []byte(list.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return run
}

// restrictedPasses are the restricted pass fixtures the sample runs: the
// ones that turn on what the kubelet derives (seccomp, the image's user).
var restrictedPasses = map[string]bool{"base": true, "runasnonroot": true, "runasuser": true,
	"seccompprofile_restricted": true, "capabilities_restricted": true, "apparmorprofile": true}

// sampled picks, unless ARMORSHIM_PSA=all (or recording), the first fail
// fixture of every check at each level and a few restricted passes: a
// pod takes minutes under TCG, and all of them are replayed from the
// recorded requests in make unit.
func sampled(f *psafixtures.Fixture, seen map[string]bool) bool {
	family := strings.TrimRight(f.Name, "0123456789")
	if f.Pass && (f.Level != "restricted" || !restrictedPasses[family]) {
		return false
	}
	key := fmt.Sprintf("%s/%v/%s", f.Level, f.Pass, family)
	if seen[key] {
		return false
	}
	seen[key] = true
	return true
}

// nodeResult turns what the guest saw into the comparison's terms.
func (l psaLine) nodeResult() psafixtures.NodeResult {
	n := psafixtures.NodeResult{Outcome: l.Outcome, Container: l.Container, Message: l.Message}
	if l.Outcome == "unsettled" && l.SandboxRequested == "no" {
		n.Outcome = psafixtures.Unreached
	}
	return n
}

type psaRow struct {
	fixture, upstream, class, detail string
	line                             psaLine
}

// comparePSA compares every fixture's outcome through the kubelet with
// upstream Pod Security Admission's verdict.
func (r *report) comparePSA(b *boot, fixtures []*psafixtures.Fixture) {
	if b.mode != "kubelet" || len(b.results) == 0 {
		return
	}
	seen := map[string]psaLine{}
	for _, l := range b.psa {
		seen[l.Fixture] = l
	}
	for _, f := range fixtures {
		l, ok := seen[f.Path]
		up := psafixtures.Upstream(f.Level, f.Pod)
		upstream := "allowed"
		if !up.Allowed {
			upstream = "refused"
		}
		if !ok {
			r.psa = append(r.psa, psaRow{fixture: f.Path, upstream: upstream, class: "difference", detail: "not run through the kubelet"})
			r.fail("Pod Security parity: fixture %s was not run through the kubelet", f.Path)
			continue
		}
		class, detail := psafixtures.Compare(f, l.nodeResult(), psafixtures.BlindSpots)
		r.psa = append(r.psa, psaRow{fixture: f.Path, upstream: upstream, class: class, detail: detail, line: l})
		if class == "difference" {
			r.fail("Pod Security parity: %s: %s", f.Path, detail)
		}
	}
}

func (r *report) psaMarkdown(w func(string, ...any)) {
	if len(r.psa) == 0 {
		return
	}
	count := map[string]int{}
	for _, p := range r.psa {
		count[p.class]++
	}
	w("\n## Pod Security parity through the real kubelet\n\n")
	w("Pod fixtures k8s.io/pod-security-admission ships for baseline and restricted at `latest` (all of them with `ARMORSHIM_PSA=all`, as `make record-kubelet` runs them, else the first fail fixture of every check and a few restricted passes; all recorded ones are replayed by `make unit`), each run as a static pod by the kubelet through armorshim enforcing its level; the outcome is read from the kubelet's pod status and log and from containerd, and compared with upstream's verdict on the pod spec. A refusal must word what upstream says of the pod holding only the refused container (the node judges containers one at a time).\n\n")
	w("| fixtures | equal | blind spots | differences |\n|---|---|---|---|\n| %d | %d | %d | %d |\n\n", len(r.psa), count["equal"], count["blind spot"], count["difference"])
	rows := append([]psaRow(nil), r.psa...)
	sort.SliceStable(rows, func(i, j int) bool { return rows[i].class+rows[i].fixture < rows[j].class+rows[j].fixture })
	w("<details><summary>Per fixture</summary>\n\n| fixture | upstream | node (kubelet, containerd) | class | detail |\n|---|---|---|---|---|\n")
	for _, p := range rows {
		node := p.line.Outcome
		if p.line.Request != "" {
			node += " at " + p.line.Request
		}
		if p.line.Container != "" {
			node += " of " + p.line.Container
		}
		node += fmt.Sprintf("; %d container(s) in containerd; %d s", p.line.Containerd, p.line.Seconds)
		w("| %s | %s | %s | %s | %s |\n", p.fixture, p.upstream, mdEscape(node), p.class, mdEscape(truncate(p.detail, 600)))
	}
	w("\n</details>\n")
}

// recordKubelet copies the requests the kubelet sent into the unit tests'
// golden files when ARMORSHIM_RECORD=1 (make record-kubelet).
func recordKubelet(t *testing.T, dir string, b *boot) {
	if os.Getenv("ARMORSHIM_RECORD") != "1" {
		return
	}
	src := filepath.Join(b.artefacts, "kubelet-requests")
	files, err := filepath.Glob(filepath.Join(src, "*.json"))
	if err != nil || len(files) == 0 {
		t.Errorf("record: no requests recorded in %s", src)
		return
	}
	// A run of every fixture replaces the recordings; a sample adds to them.
	dst := filepath.Join(dir, "..", "cri", "testdata", "kubelet")
	outcomes := map[string]psafixtures.NodeResult{}
	if os.Getenv("ARMORSHIM_PSA") == "all" {
		_ = os.RemoveAll(dst)
	} else if b, err := os.ReadFile(filepath.Join(dst, "outcomes.json")); err == nil {
		if err := json.Unmarshal(b, &outcomes); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, filepath.Base(f)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range b.psa {
		outcomes[l.Fixture] = l.nodeResult()
	}
	js, err := json.MarshalIndent(outcomes, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dst, "outcomes.json"), append(js, '\n'), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("record: %d requests and %d outcomes written to %s", len(files), len(outcomes), dst)
}
