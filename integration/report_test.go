//go:build integration

package integration

import (
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// What each step proves, for the results file.
var stepTitle = map[string]string{
	"setup-containerd":    "setup: containerd up, images imported into k8s.io",
	"setup-armorshim":     "setup: armorshim serving on its socket",
	"s1-field":            "1. loaded profile via the CRI field (apparmor.localhost_ref)",
	"s1-string":           "1. loaded profile via the deprecated apparmor_profile string",
	"s1-annotation":       "1. loaded profile via the pod annotation only",
	"s2-refused":          "2. profile not loaded: CreateContainer refused, nothing created",
	"s2-after-load":       "2. same request after loading the profile runs, write works",
	"s3-runtime-default":  "3. runtime/default runs under cri-containerd.apparmor.d",
	"s4-unconfined":       "4. unconfined runs unconfined",
	"s5-refused":          "5. apparmor=0: localhost profile refused",
	"s5-no-profile":       "5. apparmor=0: no profile still runs",
	"s6-invalid":          "6. invalid reference foo/bar refused with InvalidArgument",
	"s7-critest-apparmor": "7. critest -ginkgo.focus=AppArmor through armorshim",
	"s7-critest-full":     "7. full critest: same passes/failures direct and through armorshim",
	"s8-oci-spec":         "8. OCI spec holds the resolved profile (crictl inspect)",

	"n4-default-profile":      "policy: defaultProfile applied to a container asking none",
	"n4-allowed-refused":      "policy: a profile outside allowedProfiles is Forbidden",
	"n4-profile-directory":    "profiles: a file dropped into the directory is usable without a restart",
	"n4-nfd-labels":           "node labels: the NFD feature file lists AppArmor and each loaded profile",
	"n4-check":                "check --output json: policy, profile directory, nothing missing",
	"n13-refused-owner":       "profiles: a file owned by nobody, mode 0666, refused, shown by check and counted",
	"n13-refused-symlink":     "profiles: a symlink to a root file in /tmp (world-writable) refused",
	"n13-reloaded":            "profiles: a directory profile removed with apparmor_parser -R is loaded again at the next sync",
	"n4-complain-refused":     "policy: requireEnforce refuses a profile loaded in complain mode",
	"n4-disabled":             "policy: enabled: false forbids profiles, a container asking none runs",
	"n6-hostnetwork-refused":  "Pod Security: a host-network sandbox refused under enforce=baseline",
	"n6-privileged-refused":   "Pod Security: a privileged container refused under enforce=baseline",
	"n6-exempt-namespace":     "Pod Security: the same pod in the exempt kube-system namespace runs",
	"n6-nginx-warned":         "Pod Security: the documentation's nginx pod admitted, restricted warning logged and audited",
	"n7-attested":             "attestation: the documentation's deny-write container attested at start",
	"n7-attest-event-pid":     "attestation: the started container's pid taken from containerd's task start event, no ContainerStatus",
	"n7-swap-detected":        "attestation: a profile swapped under a created container stops it at start",
	"n7-attested-from-config": "attestation: a container created around armorshim is attested from containerd's copy of its config",
	"n7-denial-attributed":    "denials: touch /tmp/test gives exactly one denial attributed to the pod",
	"n7-attest-child":         "attestation: a process moved into a child profile (cx) is attested under its profile",
	"n7-attest-hat":           "attestation: a process moved into a hat (change_hat) is attested under its profile",
	"n7-attest-stack":         "attestation: a process that stacked a second profile is attested under its profile",
	"n7-attest-complain":      "attestation: its profiles reloaded in complain mode under requireEnforce: stopped at start, refused at create",
	"l1-learn-refused":        "learning: a pod of a namespace the node does not list is refused with Forbidden",
	"l2-learned":              "learning: the workload runs under its own learning profile in complain mode, its accesses recorded",
	"l3-generated":            "learning: armorshim profile generate writes a profile apparmor_parser accepts (the profile below)",
	"l4-enforced":             "learning: the same workload runs under the generated profile in enforce mode with zero denials",
	"l5-undone-denied":        "learning: what the workload never did (touch /tmp/test, a write to /etc) is denied and attributed to the pod",

	"deb-install":           "Debian package: dpkg -i puts binary, units, conffile and profiles.d in place; postinst only reloads systemd",
	"deb-kubelet-untouched": "Debian package: installing it neither switches the kubelet nor enables armorshim, and says how",
	"deb-serves":            "Debian package: the packaged unit's command and configuration serve CRI in front of containerd",
	"deb-remove":            "Debian package: dpkg -r restores a switched kubelet before armorshim stops, keeps the configuration",
	"deb-purge":             "Debian package: dpkg -P leaves nothing of the package, its configuration or its run time",

	"k-setup":                        "kubelet: a real kubelet (standalone, static pods) serving through armorshim",
	"k-apparmor-annotation":          "kubelet: the AppArmor tutorial's hello-apparmor (beta annotation) runs confined, write denied",
	"k-apparmor-field":               "kubelet: the same through securityContext.appArmorProfile",
	"k-apparmor-blocked":             "kubelet: hello-apparmor-2 (profile not loaded) is CreateContainerError with the Blocked message",
	"k-apparmor-loaded-then-running": "kubelet: the profile dropped into the profile directory, the kubelet's retry runs it",
	"k-nginx-warn":                   "kubelet: the namespace-level tutorial's nginx pod admitted with its four restricted warnings",
	"k-nginx-enforce":                "kubelet: the same pod refused under enforce=restricted with the same four violations",
	"k-exempt-namespace":             "kubelet: the cluster-level tutorial's defaults refuse a host-network pod; in the exempt kube-system it runs",
	"k-psa":                          "kubelet: every Pod Security Admission fixture run (parity table below)",
	"c-setup":                        "cluster: etcd, kube-apiserver, controller manager and scheduler; the kubelet registered and Ready through armorshim",
	"c-apparmor-deny-write":          "cluster: the AppArmor tutorial's hello-apparmor; kubectl exec shows its profile, the write denied; kubectl logs",
	"c-apparmor-blocked":             "cluster: hello-apparmor-2: kubectl get shows CreateContainerError, describe and events the Blocked message",
	"c-apparmor-daemonset":           "cluster: kubectl apply of deploy/profiles-daemonset.yaml delivers the profile; the blocked pod runs on the kubelet's retry",
	"c-node-labels":                  "cluster: the feature file's labels on the Node; the README's nodeSelector schedules, a missing profile does not",
	"c-ns-example":                   "cluster: namespace-level tutorial: kubectl apply -n example warns; armorshim's warning identical, audited",
	"c-ns-default":                   "cluster: namespace-level tutorial: kubectl apply -n default, no warning from either",
	"c-dry-run":                      "cluster: kubectl label --dry-run=server ns --all enforce=baseline|restricted against armorshim pss check",
	"c-cluster-nginx":                "cluster: cluster-level tutorial (API server and armorshim read its file): the nginx pod's warnings identical",
	"c-cluster-exempt":               "cluster: cluster-level defaults refuse a host-network pod; kube-system exempt on both",
	"c-static-pod":                   "cluster: a static pod violating its namespace's level: API server refuses the mirror pod, armorshim the pod",
	"f1-setup":                       "fleet: systemd as PID 1; the cluster with the kubelet as a systemd unit on containerd; the tutorial's first pod",
	"f2-blocked":                     "fleet: kubectl apply -f deploy/installer.yaml on a node whose kubelet unit it does not know: labelled, nothing changed",
	"f3-install":                     "fleet: the kubelet unit in kubeadm's layout: armorshim installed, the kubelet on it, the node labelled, pods untouched",
	"f4-decided":                     "fleet: a new pod is decided by the installed armorshim (the Blocked message)",
	"f5-profiles":                    "fleet: profiles from a ConfigMap (deploy/profiles-daemonset.yaml): loaded, shown by armorshim check, no restart",
	"f6-config":                      "fleet: the ConfigMap's policy changed: armorshim reloaded without a restart and enforces it",
	"f7-upgrade":                     "fleet: kubectl set image: armorshim replaced and restarted, the kubelet not, pods untouched",
	"f8-uninstall":                   "fleet: kubectl delete daemonset: the kubelet back on containerd, armorshim removed, label gone, pods untouched",
}

type report struct {
	prep       map[string]string
	prepPhases []phase
	prepWall   time.Duration
	total      time.Duration
	boots      []*boot
	rows       []row
	failures   []string
	critest    map[string]junitCounts
	diffs      []string
	psa        []psaRow
}

type row struct {
	step     string
	mode     string
	ok       bool
	evidence []string
}

func (r *report) fail(format string, args ...any) {
	r.failures = append(r.failures, fmt.Sprintf(format, args...))
}

// evaluate checks that a boot finished and reported every expected step.
func (r *report) evaluate(b *boot, steps []string) {
	if !b.done {
		r.fail("%s guest: no ARMORSHIM-DONE after %d attempt(s): hang, panic or crash (see serial-%s-*.log)", b.mode, b.attempts, b.mode)
	}
	for _, f := range b.fatal {
		r.fail("%s guest: %s", b.mode, f)
	}
	for _, s := range steps {
		res, ok := b.results[s]
		if !ok {
			r.fail("%s guest: step %s did not run", b.mode, s)
			r.rows = append(r.rows, row{step: s, mode: b.mode, evidence: []string{"step did not run"}})
			continue
		}
		if !res.OK {
			r.fail("%s guest: step %s failed: %s", b.mode, s, strings.Join(res.Evidence, " | "))
		}
		r.rows = append(r.rows, row{step: s, mode: b.mode, ok: res.OK, evidence: res.Evidence})
	}
}

type junitCounts struct {
	passed, failed, skipped int
	status                  map[string]string // test name -> passed|failed|skipped
}

type junitSuites struct {
	Suites []struct {
		Cases []struct {
			Name    string    `xml:"name,attr"`
			Status  string    `xml:"status,attr"`
			Failure *struct{} `xml:"failure"`
			Error   *struct{} `xml:"error"`
			Skipped *struct{} `xml:"skipped"`
		} `xml:"testcase"`
	} `xml:"testsuite"`
}

func readJUnit(path string) (junitCounts, error) {
	c := junitCounts{status: map[string]string{}}
	data, err := os.ReadFile(path)
	if err != nil {
		return c, err
	}
	var js junitSuites
	if err := xml.Unmarshal(data, &js); err != nil {
		return c, err
	}
	for _, s := range js.Suites {
		for _, tc := range s.Cases {
			st := tc.Status
			switch {
			case st == "passed" || st == "failed" || st == "skipped":
			case tc.Failure != nil || tc.Error != nil:
				st = "failed"
			case tc.Skipped != nil:
				st = "skipped"
			default:
				st = "passed"
			}
			if st == "pending" || st == "timedout" || st == "panicked" || st == "interrupted" || st == "aborted" {
				st = "failed"
			}
			// suite-level nodes ([BeforeSuite] ...) are not tests
			if strings.HasPrefix(tc.Name, "[BeforeSuite]") || strings.HasPrefix(tc.Name, "[AfterSuite]") ||
				strings.HasPrefix(tc.Name, "[SynchronizedBeforeSuite]") || strings.HasPrefix(tc.Name, "[ReportAfterSuite]") {
				if st == "failed" {
					c.failed++
					c.status[tc.Name] = st
				}
				continue
			}
			c.status[tc.Name] = st
			switch st {
			case "passed":
				c.passed++
			case "failed":
				c.failed++
			default:
				c.skipped++
			}
		}
	}
	return c, nil
}

// compareCritest reads the JUnit reports of the main boot and compares the
// full runs direct vs through armorshim test by test.
func (r *report) compareCritest(b *boot) {
	r.critest = map[string]junitCounts{}
	for _, run := range critestRuns {
		if _, ok := b.critest[run]; !ok {
			r.fail("critest run %s did not run", run)
		}
		c, err := readJUnit(filepath.Join(b.artefacts, "critest-"+run+".xml"))
		if err != nil {
			r.fail("critest run %s: no JUnit report: %v", run, err)
			continue
		}
		r.critest[run] = c
	}
	d, okd := r.critest["full-direct"]
	s, oks := r.critest["full-shim"]
	if !okd || !oks {
		r.rows = append(r.rows, row{step: "s7-critest-full", evidence: []string{"a full critest run is missing"}})
		return
	}
	names := map[string]bool{}
	for n := range d.status {
		names[n] = true
	}
	for n := range s.status {
		names[n] = true
	}
	for n := range names {
		if d.status[n] != s.status[n] {
			r.diffs = append(r.diffs, fmt.Sprintf("%s: direct=%s, armorshim=%s", n, orNone(d.status[n]), orNone(s.status[n])))
		}
	}
	sort.Strings(r.diffs)
	ev := []string{
		fmt.Sprintf("direct: %d passed, %d failed, %d skipped", d.passed, d.failed, d.skipped),
		fmt.Sprintf("through armorshim: %d passed, %d failed, %d skipped", s.passed, s.failed, s.skipped),
		fmt.Sprintf("%d tests differ", len(r.diffs)),
	}
	ok := len(r.diffs) == 0 && d.passed > 0
	if !ok {
		r.fail("full critest differs direct vs through armorshim (%d tests): %s", len(r.diffs), strings.Join(r.diffs, "; "))
	}
	r.rows = append(r.rows, row{step: "s7-critest-full", ok: ok, evidence: ev})
}

func orNone(s string) string {
	if s == "" {
		return "absent"
	}
	return s
}

func mdEscape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ", "<", "&lt;", ">", "&gt;").Replace(s)
}

func (r *report) markdown() string {
	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	verdict := "PASS"
	if len(r.failures) > 0 {
		verdict = fmt.Sprintf("FAIL (%d problems)", len(r.failures))
	}
	w("# armorshim integration results\n\n")
	w("Generated by `make integration` (`go test -tags integration -v -timeout 80m ./integration/`); see README.md.\n\n")
	w("- Run: %s, verdict **%s**, total wall time %s\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"), verdict, r.total.Round(time.Second))
	w("- Guest: Debian %s kernel, containerd %s, runc %s, crictl/critest %s, armorshim %s\n",
		r.prep["kernel_package"], r.prep["containerd"], r.prep["runc"], r.prep["critools"], r.prep["armorshim"])
	for _, b := range r.boots {
		w("- %s boot: %s wall, %d attempt(s), finished: %v\n", b.mode, b.wall.Round(time.Second), b.attempts, b.done)
	}
	w("\n## Scenarios (all requests through armorshim's socket)\n\n| scenario | result | key evidence |\n|---|---|---|\n")
	sorted := append([]row(nil), r.rows...)
	sort.SliceStable(sorted, func(i, j int) bool {
		return order(sorted[i].step)+sorted[i].mode < order(sorted[j].step)+sorted[j].mode
	})
	for _, rw := range sorted {
		res := "PASS"
		if !rw.ok {
			res = "**FAIL**"
		}
		title := stepTitle[rw.step]
		if title == "" {
			title = rw.step
		}
		ev := make([]string, len(rw.evidence))
		for i, e := range rw.evidence {
			ev[i] = "`" + strings.ReplaceAll(mdEscape(e), "`", "'") + "`"
		}
		if strings.HasPrefix(rw.step, "setup") {
			title += " [" + rw.mode + " boot]"
		}
		w("| %s (`%s`) | %s | %s |\n", title, rw.step, res, strings.Join(ev, "<br>"))
	}
	// every kubectl command of the cluster and fleet boots and its output,
	// as a user sees them (README's walkthroughs quote these)
	transcripts := map[string]string{"cluster": "The tutorials with kubectl (cluster boot)",
		"fleet": "Rolling armorshim out and back with its DaemonSet (fleet boot)"}
	for _, b := range r.boots {
		title := transcripts[b.mode]
		if title == "" || b.artefacts == "" {
			continue
		}
		if tr, err := os.ReadFile(filepath.Join(b.artefacts, b.mode+"-transcript.txt")); err == nil {
			w("\n## %s\n\n````text\n%s````\n", title, tr)
		} else {
			w("\n## %s\n\nNo transcript: %v\n", title, err)
		}
	}
	// the profile the main boot learned from its workload (guest/learn.sh)
	for _, b := range r.boots {
		if b.mode != "main" || b.artefacts == "" {
			continue
		}
		if p, err := os.ReadFile(filepath.Join(b.artefacts, "learned-k8s-learned-app.profile")); err == nil {
			w("\n## The profile learned from the workload (main boot, `l3-generated`)\n\n````text\n%s````\n", p)
		} else {
			w("\n## The profile learned from the workload (main boot)\n\nNo profile: %v\n", err)
		}
	}
	w("\n## critest\n\n| run | passed | failed | skipped | guest seconds | console summary |\n|---|---|---|---|---|---|\n")
	var mainBoot *boot
	for _, b := range r.boots {
		if b.mode == "main" {
			mainBoot = b
		}
	}
	for _, run := range critestRuns {
		if mainBoot == nil {
			break // make record-kubelet: no main boot
		}
		c, ok := r.critest[run]
		line := mainBoot.critest[run]
		if !ok {
			w("| %s | - | - | - | %d | missing |\n", run, line.Seconds)
			continue
		}
		w("| %s | %d | %d | %d | %d | %s |\n", run, c.passed, c.failed, c.skipped, line.Seconds, mdEscape(line.Ran+" "+line.Summary))
	}
	if len(r.diffs) == 0 {
		w("\nTests whose outcome differs direct vs through armorshim: none.\n")
	} else {
		w("\nTests whose outcome differs direct vs through armorshim (each is an armorshim bug):\n\n")
		for _, d := range r.diffs {
			w("- %s\n", mdEscape(d))
		}
	}
	if d, ok := r.critest["full-direct"]; ok {
		var failed []string
		for n, st := range d.status {
			if st == "failed" {
				failed = append(failed, n)
			}
		}
		sort.Strings(failed)
		w("\n<details><summary>%d tests failing on both paths (no registry, no portmap/iptables in the guest, ...)</summary>\n\n", len(failed))
		for _, n := range failed {
			w("- %s\n", mdEscape(n))
		}
		w("\n</details>\n")
	}
	r.psaMarkdown(w)
	w("\n## Wall time per phase\n\n| phase | seconds | note |\n|---|---|---|\n")
	for _, p := range r.prepPhases {
		note := "built"
		if p.Cached != nil && *p.Cached {
			note = "cached"
		}
		w("| host: %s | %d | %s |\n", p.Phase, p.Seconds, note)
	}
	w("| host: prepare total | %d | |\n", int(r.prepWall.Seconds()))
	for _, b := range r.boots {
		for _, p := range b.phases {
			w("| guest: %s | %d | |\n", p.Phase, p.Seconds)
		}
		w("| %s boot total (qemu wall) | %d | %d attempt(s) |\n", b.mode, int(b.wall.Seconds()), b.attempts)
	}
	if len(r.failures) > 0 {
		w("\n## Problems\n\n")
		for _, f := range r.failures {
			w("- %s\n", mdEscape(truncate(f, 1500)))
		}
	}
	return sb.String()
}

func order(step string) string {
	if strings.HasPrefix(step, "setup") {
		return "0" + step
	}
	return step
}
