package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"k8s.io/pod-security-admission/api"

	"github.com/armorshim/armorshim/cri"
	"github.com/armorshim/armorshim/pss"
	"github.com/armorshim/armorshim/shim"
)

// podSecurity runs `armorshim pss SUBCOMMAND`.
func podSecurity(args []string) int {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprintln(os.Stderr, "Usage: armorshim pss check --level LEVEL [--version V] [--namespace N] [--runtime-endpoint E]")
		return 2
	}
	return pssCheck(args[1:], os.Stdout, os.Stderr)
}

// pssCheck evaluates the pods running on this node at one level, as
// `kubectl label --dry-run=server ns --all pod-security.kubernetes.io/enforce=LEVEL`
// does for a cluster, and exits 1 if any pod would violate it.
func pssCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("armorshim pss check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	levelFlag := fs.String("level", "", "level to check: privileged, baseline or restricted")
	versionFlag := fs.String("version", "", `policy version: "latest" or "v1.N" (default: each namespace's enforce-version, as when only the enforce label changes)`)
	namespace := fs.String("namespace", "", "only this namespace (default: all)")
	configPath := fs.String("config", defaultConfigPath, "armorshim's configuration, for podSecurity's exemptions, kubeletRootDir and kubeletSeccompDefault (defaults are used if the default file does not exist)")
	runtimeEndpoint := fs.String("runtime-endpoint", "", "the container runtime's CRI socket (default: the configuration's runtimeEndpoint)")
	imageEndpoint := fs.String("image-endpoint", "", "the image service's CRI socket (default: the runtime endpoint)")
	timeout := fs.Duration("timeout", 30*time.Second, "how long the runtime may take to answer")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: armorshim pss check --level LEVEL [flags]\n\n")
		fs.PrintDefaults()
		fmt.Fprintf(stderr, "\nExit status: 0 when no pod would violate the level, 1 when some would\n(each listed as the API server words it), 2 on a usage, configuration or\nruntime error.\n")
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	level, err := api.ParseLevel(*levelFlag)
	if err != nil {
		fmt.Fprintf(stderr, "armorshim pss check: --level: %v\n", err)
		return 2
	}
	var version *api.Version
	if *versionFlag != "" {
		v, err := api.ParseVersion(*versionFlag)
		if err != nil {
			fmt.Fprintf(stderr, "armorshim pss check: --version: %v\n", err)
			return 2
		}
		version = &v
	}

	cfg, _, err := loadConfigForCheck(*configPath)
	if err != nil {
		fmt.Fprintf(stderr, "armorshim pss check: %v\n", err)
		return 2
	}
	ev, err := cfg.PodSecurity.Build()
	if err != nil {
		fmt.Fprintf(stderr, "armorshim pss check: %v\n", err)
		return 2
	}
	if ev == nil {
		// Not configured for serving: no exemptions, the configured paths.
		if ev, err = pss.NewEvaluator(pss.Config{KubeletRootDir: cfg.PodSecurity.KubeletRootDir, KubeletSeccompDefault: cfg.PodSecurity.KubeletSeccompDefault}); err != nil {
			fmt.Fprintf(stderr, "armorshim pss check: %v\n", err)
			return 2
		}
	}
	if *runtimeEndpoint != "" {
		cfg.RuntimeEndpoint = *runtimeEndpoint
		cfg.ImageEndpoint = ""
	}
	if *imageEndpoint != "" {
		cfg.ImageEndpoint = *imageEndpoint
	}
	runtime, err := shim.Dial(cfg.RuntimeEndpoint, cfg.MaxMessageSize)
	if err != nil {
		fmt.Fprintf(stderr, "armorshim pss check: runtime endpoint: %v\n", err)
		return 2
	}
	defer runtime.Close()
	image := runtime
	if cfg.Image() != cfg.RuntimeEndpoint {
		if image, err = shim.Dial(cfg.Image(), cfg.MaxMessageSize); err != nil {
			fmt.Fprintf(stderr, "armorshim pss check: image endpoint: %v\n", err)
			return 2
		}
		defer image.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	pods, skipped, err := cri.NodePods(ctx, runtime, image, *namespace, ev.Config())
	if err != nil {
		if c := status.Code(err); c == codes.Unavailable || c == codes.DeadlineExceeded {
			fmt.Fprintf(stderr, "armorshim pss check: no answer from the runtime at %s: %s\n", cfg.RuntimeEndpoint, dialReason(err))
			fmt.Fprintf(stderr, "armorshim pss check: is containerd running? Name its CRI socket with --runtime-endpoint, or runtimeEndpoint in %s\n", *configPath)
			return 2
		}
		fmt.Fprintf(stderr, "armorshim pss check: %v\n", err)
		return 2
	}
	for _, s := range skipped {
		fmt.Fprintf(stderr, "armorshim pss check: not evaluated: %s\n", s)
	}
	lines, enforced := nodeWarnings(ev, level, version, pods)
	for _, l := range lines {
		fmt.Fprintln(stdout, "Warning: "+l)
	}
	// Pods the API server would not name, since their namespace already
	// enforces the level: armorshim refuses them at their next start.
	for _, l := range enforced {
		fmt.Fprintln(stderr, "armorshim pss check: already enforced, refused at the next start: "+l)
	}
	if len(lines) > 0 || len(enforced) > 0 {
		return 1
	}
	return 0
}

// nodeWarnings groups pods by namespace, in order, and words each
// namespace's violations as the API server does on a label change to
// enforce=level (and enforce-version=version, when given; otherwise the
// namespace keeps its enforce version). Exempt namespaces are left out, as
// Pod Security Admission never checks them. So is a namespace whose enforce
// policy the change would not tighten: Pod Security Admission evaluates a
// namespace's pods on a label change only when its enforce level rises (or
// its version changes, to a level that is not privileged); the violations
// of those namespaces' pods come back as enforced, since armorshim enforces
// the level on them at their next start.
func nodeWarnings(ev *pss.Evaluator, level api.Level, version *api.Version, pods []*pss.Pod) (warnings, enforced []string) {
	byNS := map[string][]*pss.Pod{}
	for _, p := range pods {
		byNS[p.Meta.Namespace] = append(byNS[p.Meta.Namespace], p)
	}
	names := make([]string, 0, len(byNS))
	for ns := range byNS {
		names = append(names, ns)
	}
	sort.Strings(names)
	for _, ns := range names {
		if ev.Exemption(ns, "") != "" {
			continue
		}
		old := ev.Policy(ns).Enforce
		lv := api.LevelVersion{Level: level, Version: old.Version}
		if version != nil {
			lv.Version = *version
		}
		if tightens(old, lv) {
			warnings = append(warnings, ev.NamespaceWarnings(ns, lv, byNS[ns])...)
		} else if old.Level != api.LevelPrivileged {
			enforced = append(enforced, ev.NamespaceWarnings(ns, old, byNS[ns])...)
		}
	}
	return warnings, enforced
}

// tightens reports whether changing a namespace's enforce policy from old
// to new makes Pod Security Admission check its pods (ValidateNamespace of
// k8s.io/pod-security-admission: not when unchanged, not for privileged,
// not for a level no stricter at the same version).
func tightens(old, new api.LevelVersion) bool {
	if new == old || new.Level == api.LevelPrivileged {
		return false
	}
	return new.Version != old.Version || api.CompareLevels(new.Level, old.Level) > 0
}

// dialReason is why a runtime did not answer, without gRPC's wrapping.
func dialReason(err error) string {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		return err.Error()
	}
	msg := se.GRPCStatus().Message()
	const dialing = "Error while dialing: "
	if i := strings.LastIndex(msg, dialing); i >= 0 {
		msg = strings.TrimSuffix(msg[i+len(dialing):], `"`)
	}
	return msg
}
