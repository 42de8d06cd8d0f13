package pss_test

import (
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"

	"k8s.io/pod-security-admission/api"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/pss"
)

// seedAdmission is the seed's cluster-level-pss.yaml, verbatim.
var seedAdmission = mustRead("testdata/cluster-level-pss.yaml")

func TestParseConfiguration(t *testing.T) {
	bare := func(version string) string {
		return `apiVersion: pod-security.admission.config.k8s.io/` + version + `
kind: PodSecurityConfiguration
defaults:
  enforce: baseline
  enforce-version: v1.30
  warn: restricted
exemptions:
  namespaces: [kube-system]
  runtimeClasses: [kata]
  usernames: [system:serviceaccount:ci:deployer]
`
	}
	tests := []struct {
		name, data             string
		enforce, audit, warn   string
		namespaces, rcs, users []string
	}{
		{name: "seed AdmissionConfiguration", data: seedAdmission, enforce: "baseline:latest", audit: "restricted:latest", warn: "restricted:latest", namespaces: []string{"kube-system"}, rcs: []string{}, users: []string{}},
		{name: "bare v1", data: bare("v1"), enforce: "baseline:v1.30", audit: "privileged:latest", warn: "restricted:latest", namespaces: []string{"kube-system"}, rcs: []string{"kata"}, users: []string{"system:serviceaccount:ci:deployer"}},
		{name: "bare v1beta1", data: bare("v1beta1"), enforce: "baseline:v1.30", audit: "privileged:latest", warn: "restricted:latest", namespaces: []string{"kube-system"}, rcs: []string{"kata"}, users: []string{"system:serviceaccount:ci:deployer"}},
		{name: "plugin by path", data: "apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: PodSecurity\n  path: pss.yaml\n", enforce: "baseline:v1.30", audit: "privileged:latest", warn: "restricted:latest", namespaces: []string{"kube-system"}, rcs: []string{"kata"}, users: []string{"system:serviceaccount:ci:deployer"}},
	}
	read := func(p string) ([]byte, error) {
		if p != "pss.yaml" {
			return nil, errors.New("no such file")
		}
		return []byte(bare("v1")), nil
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pc, err := pss.ParseConfiguration([]byte(tc.data), read)
			if err != nil {
				t.Fatal(err)
			}
			var c pss.Config
			if err := c.FromAdmission(pc); err != nil {
				t.Fatal(err)
			}
			if got := []string{c.Defaults.Enforce.String(), c.Defaults.Audit.String(), c.Defaults.Warn.String()}; !reflect.DeepEqual(got, []string{tc.enforce, tc.audit, tc.warn}) {
				t.Errorf("defaults %v, want %v", got, []string{tc.enforce, tc.audit, tc.warn})
			}
			if !reflect.DeepEqual(c.ExemptNamespaces, tc.namespaces) || !reflect.DeepEqual(c.ExemptRuntimeClasses, tc.rcs) || !reflect.DeepEqual(c.ExemptUsernames, tc.users) {
				t.Errorf("exemptions %q %q %q", c.ExemptNamespaces, c.ExemptRuntimeClasses, c.ExemptUsernames)
			}
		})
	}
}

func TestParseConfigurationErrors(t *testing.T) {
	for name, tc := range map[string]struct{ data, want string }{
		"bad level":        {"apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\ndefaults:\n  enforce: strict\n", "defaults.enforce"},
		"bad version":      {"apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\ndefaults:\n  enforce-version: \"1.30\"\n", "defaults.enforce-version"},
		"unknown field":    {"apiVersion: pod-security.admission.config.k8s.io/v1\nkind: PodSecurityConfiguration\ndefault:\n  enforce: baseline\n", "default"},
		"no plugin":        {"apiVersion: apiserver.config.k8s.io/v1\nkind: AdmissionConfiguration\nplugins:\n- name: EventRateLimit\n  path: x.yaml\n", "no PodSecurity plugin"},
		"wrong apiVersion": {"apiVersion: apiserver.config.k8s.io/v2\nkind: AdmissionConfiguration\nplugins: []\n", "apiserver.config.k8s.io/v1"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := pss.ParseConfiguration([]byte(tc.data), nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one naming %q", err, tc.want)
			}
		})
	}
}

func TestNamespaceLabels(t *testing.T) {
	pc, err := pss.ParseConfiguration([]byte(seedAdmission), nil)
	if err != nil {
		t.Fatal(err)
	}
	c := pss.Config{Namespaces: map[string]map[string]string{
		"example": {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/enforce-version": "v1.29"},
		"legacy":  {"pod-security.kubernetes.io/enforce": "privileged"},
	}}
	if err := c.FromAdmission(pc); err != nil {
		t.Fatal(err)
	}
	e := evaluator(t, c)
	for ns, want := range map[string]string{
		"example": "enforce=restricted:v1.29 audit=restricted:latest warn=restricted:latest",
		"legacy":  "enforce=privileged:latest audit=restricted:latest warn=restricted:latest",
		"default": "enforce=baseline:latest audit=restricted:latest warn=restricted:latest",
	} {
		p := e.Policy(ns)
		if got := "enforce=" + p.Enforce.String() + " audit=" + p.Audit.String() + " warn=" + p.Warn.String(); got != want {
			t.Errorf("%s: %s, want %s", ns, got, want)
		}
	}
	if got := e.Exemption("kube-system", ""); got != pss.ExemptNamespace {
		t.Errorf("kube-system exemption %q", got)
	}
	for name, labels := range map[string]map[string]string{
		"unknown key": {"pod-security.kubernetes.io/enforcee": "baseline"},
		"bad level":   {"pod-security.kubernetes.io/warn": "strict"},
		"bad version": {"pod-security.kubernetes.io/warn-version": "1.29"},
	} {
		if _, err := pss.NewEvaluator(pss.Config{Namespaces: map[string]map[string]string{"example": labels}}); err == nil || !strings.Contains(err.Error(), "namespaces.example") {
			t.Errorf("%s: error %v, want one naming namespaces.example", name, err)
		}
	}
}

func TestEvaluateModes(t *testing.T) {
	pc, _ := pss.ParseConfiguration([]byte(seedAdmission), nil)
	var c pss.Config
	if err := c.FromAdmission(pc); err != nil {
		t.Fatal(err)
	}
	e := evaluator(t, c)
	req := kubeletCreate("default", "static-web", "nginx")
	req.SandboxConfig.Linux.SecurityContext.NamespaceOptions.Network = 2 // NODE
	req.Config.Linux.SecurityContext.Privileged = true
	d := e.Evaluate(pss.ContainerPod(req, apparmor.Profile{}, &pss.ImageUser{}, e.Config()))
	v, denied := d.Denied()
	want := `violates PodSecurity "baseline:latest": host namespaces (hostNetwork=true), privileged (container "nginx" must not set securityContext.privileged=true)`
	if !denied || v.Message() != want {
		t.Fatalf("enforce: %q, want %q", v.Message(), want)
	}
	if _, ok := d.Mode(pss.Warn); ok {
		t.Error("warn evaluated for a refused pod")
	}
	a, ok := d.Mode(pss.Audit)
	if !ok || a.Allowed() || !strings.HasPrefix(a.Message(), `would violate PodSecurity "restricted:latest": host namespaces (hostNetwork=true), privileged`) {
		t.Errorf("audit: %q", a.Message())
	}
}

func TestNamespaceWarnings(t *testing.T) {
	e := evaluator(t, pss.Config{})
	pod := func(name string, mutate func(*pss.Pod)) *pss.Pod {
		p := pss.ContainerPod(kubeletCreate("kube-system", name, "c"), apparmor.Profile{}, &pss.ImageUser{}, e.Config())
		if mutate != nil {
			mutate(p)
		}
		return p
	}
	hostNet := func(p *pss.Pod) { p.Spec.HostNetwork = true }
	got := e.NamespaceWarnings("kube-system", level(t, "baseline", "latest"), []*pss.Pod{
		pod("kube-proxy-m6hwf", func(p *pss.Pod) { hostNet(p); p.Spec.Containers[0].SecurityContext.Privileged = ptr(true) }),
		pod("etcd-b", hostNet), pod("etcd-a", hostNet), pod("kube-apiserver", hostNet), pod("kube-scheduler", hostNet),
		pod("coredns", nil),
	})
	want := []string{
		`existing pods in namespace "kube-system" violate the new PodSecurity enforce level "baseline:latest"`,
		`etcd-a (and 3 other pods): host namespaces`,
		`kube-proxy-m6hwf: host namespaces, privileged`,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
	if got := e.NamespaceWarnings("default", api.LevelVersion{Level: api.LevelRestricted, Version: api.LatestVersion()}, nil); got != nil {
		t.Errorf("no pods: %q", got)
	}
}

func mustRead(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	return string(b)
}
