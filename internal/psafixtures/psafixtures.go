// Package psafixtures serves the tests that compare armorshim's node-side
// Pod Security with upstream Pod Security Admission: it loads the pod
// fixtures that k8s.io/pod-security-admission ships for baseline and
// restricted, evaluates them with the upstream checks, and turns them into
// static pods a real kubelet can run in the integration guest.
package psafixtures

import (
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
	"sigs.k8s.io/yaml"
)

// Fixture is one pod of the upstream test data.
type Fixture struct {
	Level api.Level
	Pass  bool   // under pass/ (upstream allows it at Level), else fail/
	Name  string // file name without .yaml
	Path  string // relative to the test data: restricted/v1.37/fail/sysctls0.yaml
	Pod   *corev1.Pod
}

// Namespace is where the suite runs a fixture: one namespace per level,
// enforcing that level.
func (f *Fixture) Namespace() string { return "psa-" + string(f.Level) }

// PodName is the fixture's pod name in the suite (DNS-safe, unique per
// level).
func (f *Fixture) PodName() string {
	kind := "fail"
	if f.Pass {
		kind = "pass"
	}
	return kind + "-" + strings.ReplaceAll(f.Name, "_", "-")
}

// Annotation names the fixture on the pod the suite runs, so a recorded
// CRI request leads back to its fixture.
const Annotation = "armorshim.io/psa-fixture"

// Levels are the levels whose fixtures are compared.
var Levels = []api.Level{api.LevelBaseline, api.LevelRestricted}

// Dir is the test data of the k8s.io/pod-security-admission module this
// module requires, from the module cache.
func Dir() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}", "k8s.io/pod-security-admission").Output()
	if err != nil {
		return "", fmt.Errorf("go list k8s.io/pod-security-admission: %w", err)
	}
	dir := filepath.Join(strings.TrimSpace(string(out)), "test", "testdata")
	if _, err := os.Stat(dir); err != nil {
		return "", err
	}
	return dir, nil
}

// LatestDir is the newest version of the test data, what "latest" evaluates
// as (v1.37 for k8s.io/pod-security-admission v0.37).
func LatestDir(dir string) (string, error) {
	best, bestMinor := "", -1
	names, _ := filepath.Glob(filepath.Join(dir, string(api.LevelRestricted), "v1.*"))
	for _, n := range names {
		var minor int
		if _, err := fmt.Sscanf(filepath.Base(n), "v1.%d", &minor); err == nil && minor > bestMinor {
			best, bestMinor = filepath.Base(n), minor
		}
	}
	if best == "" {
		return "", fmt.Errorf("no versions under %s", dir)
	}
	return best, nil
}

// Load reads every pass and fail fixture of Levels at the latest version.
func Load(dir string) ([]*Fixture, error) {
	latest, err := LatestDir(dir)
	if err != nil {
		return nil, err
	}
	var out []*Fixture
	for _, level := range Levels {
		for _, kind := range []string{"pass", "fail"} {
			rel := filepath.Join(string(level), latest, kind)
			names, err := filepath.Glob(filepath.Join(dir, rel, "*.yaml"))
			if err != nil {
				return nil, err
			}
			if len(names) == 0 {
				return nil, fmt.Errorf("no fixtures in %s", filepath.Join(dir, rel))
			}
			sort.Strings(names)
			for _, n := range names {
				f, err := loadOne(dir, filepath.Join(rel, filepath.Base(n)))
				if err != nil {
					return nil, err
				}
				f.Level, f.Pass = level, kind == "pass"
				out = append(out, f)
			}
		}
	}
	return out, nil
}

func loadOne(dir, rel string) (*Fixture, error) {
	b, err := os.ReadFile(filepath.Join(dir, rel))
	if err != nil {
		return nil, err
	}
	pod := &corev1.Pod{}
	if err := yaml.UnmarshalStrict(b, pod); err != nil {
		return nil, fmt.Errorf("%s: %w", rel, err)
	}
	// The API server's defaulting, which the checks see: a volume without
	// a source is an emptyDir.
	for i, v := range pod.Spec.Volumes {
		if v.VolumeSource == (corev1.VolumeSource{}) {
			pod.Spec.Volumes[i].EmptyDir = &corev1.EmptyDirVolumeSource{}
		}
	}
	return &Fixture{Name: strings.TrimSuffix(filepath.Base(rel), ".yaml"), Path: rel, Pod: pod}, nil
}

// ByPath finds the fixture an Annotation names.
func ByPath(fixtures []*Fixture, path string) *Fixture {
	for _, f := range fixtures {
		if f.Path == path {
			return f
		}
	}
	return nil
}

var evaluator = func() policy.Evaluator {
	e, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		panic(err)
	}
	return e
}()

// Verdict is upstream's evaluation of a pod at a level (latest).
type Verdict struct {
	Allowed bool
	// Message is what Pod Security Admission's enforce says:
	// `violates PodSecurity "restricted:latest": ...` ("" when allowed).
	Message string
}

// Upstream evaluates pod as Pod Security Admission does at level:latest.
func Upstream(level api.Level, pod *corev1.Pod) Verdict {
	lv := api.LevelVersion{Level: level, Version: api.LatestVersion()}
	r := policy.AggregateCheckResults(evaluator.EvaluatePod(lv, &pod.ObjectMeta, &pod.Spec))
	if r.Allowed {
		return Verdict{Allowed: true}
	}
	return Verdict{Message: fmt.Sprintf("violates PodSecurity %q: %s", api.LevelVersion{Level: level, Version: api.LatestVersion()}.String(), r.ForbiddenDetail())}
}

// Reduced is the pod as the node sees it at one CRI request: pod-level
// fields and only the named container (init or regular); "" keeps no
// container (RunPodSandbox). The node judges every container on its own,
// so its refusal words what upstream says of this pod.
func Reduced(pod *corev1.Pod, container string) *corev1.Pod {
	p := pod.DeepCopy()
	p.Spec.InitContainers, p.Spec.Containers, p.Spec.EphemeralContainers = nil, nil, nil
	for _, c := range pod.Spec.InitContainers {
		if c.Name == container {
			p.Spec.InitContainers = []corev1.Container{*c.DeepCopy()}
		}
	}
	for _, c := range pod.Spec.Containers {
		if c.Name == container {
			p.Spec.Containers = []corev1.Container{*c.DeepCopy()}
		}
	}
	return p
}

func last(l []string) string {
	if len(l) == 0 {
		return ""
	}
	return l[len(l)-1]
}

// Containers lists a pod's containers in the order the kubelet creates
// them: init containers, then the others.
func Containers(pod *corev1.Pod) []string {
	var out []string
	for _, c := range pod.Spec.InitContainers {
		out = append(out, c.Name)
	}
	for _, c := range pod.Spec.Containers {
		out = append(out, c.Name)
	}
	return out
}

// Images the suite's guest holds, substituted for the fixtures' pause image.
type Images struct {
	Root    string // no USER: the kubelet sends run_as_user 0
	NonRoot string // a numeric non-root USER, for containers that must run as non-root
}

// StaticPod is the fixture as a static pod for the guest's kubelet: named
// and namespaced for the suite, annotated with its fixture, images the
// guest holds (never pulled), init containers that exit at once and
// containers that sleep. A container that must run as non-root and names
// no user gets the non-root image: with the root one the kubelet itself
// would refuse it before any CRI request. Security fields are untouched.
func StaticPod(f *Fixture, img Images) *corev1.Pod {
	p := f.Pod.DeepCopy()
	p.Name, p.Namespace = f.PodName(), f.Namespace()
	if p.Annotations == nil {
		p.Annotations = map[string]string{}
	}
	p.Annotations[Annotation] = f.Path
	grace := int64(1)
	p.Spec.TerminationGracePeriodSeconds = &grace
	fix := func(c *corev1.Container, cmd []string) {
		c.Image = img.Root
		if nonRoot(p.Spec.SecurityContext, c.SecurityContext) {
			c.Image = img.NonRoot
		}
		c.ImagePullPolicy = corev1.PullNever
		c.Command = cmd
	}
	for i := range p.Spec.InitContainers {
		fix(&p.Spec.InitContainers[i], []string{"true"})
	}
	for i := range p.Spec.Containers {
		fix(&p.Spec.Containers[i], []string{"sleep", "3600"})
	}
	return p
}

// nonRoot says whether the kubelet will demand a non-root user without
// the pod naming one.
func nonRoot(pod *corev1.PodSecurityContext, c *corev1.SecurityContext) bool {
	var want *bool
	var uid *int64
	if pod != nil {
		want, uid = pod.RunAsNonRoot, pod.RunAsUser
	}
	if c != nil && c.RunAsNonRoot != nil {
		want = c.RunAsNonRoot
	}
	if c != nil && c.RunAsUser != nil {
		uid = c.RunAsUser
	}
	return want != nil && *want && uid == nil
}

// Manifest is a static pod as YAML.
func Manifest(p *corev1.Pod) ([]byte, error) {
	p = p.DeepCopy()
	p.APIVersion, p.Kind = "v1", "Pod"
	return yaml.Marshal(p)
}

// Node outcomes of a fixture.
const (
	Admitted       = "admitted"        // every container created
	Refused        = "refused"         // armorshim's Pod Security refusal
	KubeletRefused = "kubelet-refused" // the kubelet refused it before any CRI call
	Unreached      = "unreached"       // the kubelet never sent a CRI request for it
	Failed         = "error"           // another error
)

// NodeResult is what the node did with a fixture.
type NodeResult struct {
	Outcome   string `json:"outcome"`
	Container string `json:"container,omitempty"` // the container refused; "" for the sandbox
	Message   string `json:"message,omitempty"`   // the refusal as the kubelet reports it
}

// BlindSpot is a fixture the node cannot judge as upstream does, and what
// it does instead.
type BlindSpot struct {
	Match string // path.Match pattern over Fixture.Path
	// Node lists what the node may do instead: Admitted (it cannot see the
	// violation), Unreached (the kubelet never gets to the CRI), Failed
	// (the runtime or the kubelet fails the pod here, after armorshim
	// forwarded it), Reasons (the same verdict and the same reasons, with
	// other details) or Subset (refused for some of upstream's reasons,
	// those it can see).
	Node   []string
	Reason string
}

// Blind spot outcomes besides Admitted, Unreached and Failed.
const (
	Reasons = "reasons"
	Subset  = "subset"
)

// Compare classifies what the node did with a fixture against upstream:
// "equal", "blind spot" (as BlindSpots documents it) or "difference",
// with what was compared. A node refusal must word what upstream says of
// the pod reduced to the refused container (see Reduced).
func Compare(f *Fixture, n NodeResult, spots []BlindSpot) (class, detail string) {
	up := Upstream(f.Level, f.Pod)
	var want Verdict
	if n.Outcome == Refused {
		want = Upstream(f.Level, Reduced(f.Pod, n.Container))
	}
	switch {
	case up.Allowed && n.Outcome == Admitted:
		return "equal", "allowed; every container created"
	case !up.Allowed && n.Outcome == Refused && n.Message == "Forbidden: "+want.Message:
		return "equal", "refused: " + n.Message
	case !up.Allowed && n.Outcome == KubeletRefused:
		return "equal", "refused by the kubelet itself: " + n.Message
	case up.Allowed && n.Outcome == Failed && n.Container != "" && n.Container == last(Containers(f.Pod)):
		// armorshim forwarded every request; the runtime failed the last
		return "equal", "allowed; the runtime then failed: " + n.Message
	}
	for _, s := range spots {
		if ok, _ := path.Match(s.Match, f.Path); !ok {
			continue
		}
		for _, kind := range s.Node {
			if blindAs(kind, up, want, n) {
				return "blind spot", s.Reason
			}
		}
	}
	upstream := "allowed"
	if !up.Allowed {
		upstream = up.Message
		if want.Message != "" {
			upstream = want.Message + " (on the refused container)"
		}
	}
	return "difference", fmt.Sprintf("upstream: %s; node: %s %s %s", upstream, n.Outcome, n.Container, n.Message)
}

// blindAs says whether the node did what a blind spot of that kind does.
func blindAs(kind string, up, want Verdict, n NodeResult) bool {
	if want.Message == "" {
		// a sandbox refused for its containers' fields (host ports): the
		// reasons are the whole pod's
		want = up
	}
	switch kind {
	case Admitted:
		return !up.Allowed && n.Outcome == Admitted
	case Unreached:
		return n.Outcome == Unreached
	case KubeletRefused:
		return up.Allowed && n.Outcome == KubeletRefused
	case Failed:
		return n.Outcome == Failed && !strings.HasPrefix(n.Message, "Forbidden: ") && !strings.HasPrefix(n.Message, "Blocked: ")
	case Reasons:
		return !up.Allowed && n.Outcome == Refused && want.Message != "" &&
			strings.Join(reasonsOf(n.Message), ", ") == strings.Join(reasonsOf(want.Message), ", ")
	case Subset:
		if up.Allowed || n.Outcome != Refused || want.Message == "" {
			return false
		}
		all := map[string]bool{}
		for _, r := range reasonsOf(want.Message) {
			all[r] = true
		}
		got := reasonsOf(n.Message)
		for _, r := range got {
			if !all[r] {
				return false
			}
		}
		return len(got) > 0
	}
	return false
}

// reasonsOf lists the reasons of a Pod Security message, without their
// parenthesised details.
func reasonsOf(msg string) []string {
	if _, rest, ok := strings.Cut(msg, `": `); ok {
		msg = rest
	}
	var out []string
	depth, start := 0, 0
	var cur strings.Builder
	for i, r := range msg {
		switch {
		case r == '(':
			depth++
		case r == ')':
			depth--
		case depth == 0 && r == ',' && strings.HasPrefix(msg[i:], ", "):
			out = append(out, strings.TrimSpace(cur.String()))
			cur.Reset()
			start = i + 2
			continue
		}
		if depth == 0 && r != ')' && i >= start {
			cur.WriteRune(r)
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}

// BlindSpots are the fixtures a node cannot judge as the API server does,
// each with the reason (README's "What a node cannot see" says the same).
var BlindSpots = []BlindSpot{
	{Match: "*/*/*/procmount*.yaml", Node: []string{Failed},
		Reason: "pods with hostUsers: false: containerd needs idmapped overlayfs, which the guest's Linux 6.1 lacks, so the sandbox fails in containerd after armorshim forwarded it"},
	{Match: "*/*/fail/hostprobesandhostlifecycle*.yaml", Node: []string{Admitted, Failed},
		Reason: "probes and lifecycle handlers run in the kubelet: their host field never reaches the CRI (a failing handler then restarts the container)"},
	{Match: "restricted/*/*/restrictedvolumes*.yaml", Node: []string{Unreached, Admitted, KubeletRefused},
		Reason: "volumes the standalone kubelet cannot set up (no API server, no storage) keep it from any CRI request, and it refuses a static pod that references a secret; a volume no container mounts never reaches the CRI"},
	{Match: "*/*/pass/base_windows*.yaml", Node: []string{KubeletRefused},
		Reason: "a pod for Windows is refused by the kubelet of a Linux node (PodOSNotSupported) before any CRI request"},
	{Match: "*/*/fail/hostpathvolumes*.yaml", Node: []string{Admitted, Reasons},
		Reason: "a hostPath volume no container mounts never reaches the CRI (and gives nothing); a mounted one is named by its path, not the volume's name"},
	{Match: "*/*/fail/hostports*.yaml", Node: []string{Reasons},
		Reason: "the CRI's port mappings do not say which container asked for a host port: the sandbox is refused naming the stand-in container \"(port mappings)\""},
	{Match: "baseline/*/fail/seccompprofile_baseline*.yaml", Node: []string{Admitted},
		Reason: "without seccompDefault the kubelet sends Unconfined both for an explicit Unconfined and for no profile"},
	{Match: "restricted/*/fail/seccompprofile_*.yaml", Node: []string{Reasons},
		Reason: "without seccompDefault the kubelet sends Unconfined both for an explicit Unconfined and for no profile: refused as not set"},
	{Match: "restricted/*/fail/runasnonroot*.yaml", Node: []string{Reasons},
		Reason: "runAsNonRoot is not in the CRI: an explicit runAsNonRoot: false is judged by the user the container runs as"},
	{Match: "*/*/fail/windowshostprocess*.yaml", Node: []string{Subset},
		Reason: "Windows options are not in the Linux CRI: the pod is refused for its host network alone"},
}
