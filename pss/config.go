package pss

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"

	admissionapi "k8s.io/pod-security-admission/admission/api"
	"k8s.io/pod-security-admission/admission/api/load"
	"k8s.io/pod-security-admission/admission/api/validation"
	"k8s.io/pod-security-admission/api"
)

// PluginName is the admission plugin whose configuration an
// AdmissionConfiguration carries for Pod Security Admission.
const PluginName = "PodSecurity"

// admissionConfiguration is the part of apiserver.config.k8s.io/v1
// AdmissionConfiguration that armorshim reads.
type admissionConfiguration struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Plugins    []admissionPlugin `json:"plugins"`
}

type admissionPlugin struct {
	Name          string          `json:"name"`
	Path          string          `json:"path,omitempty"`
	Configuration json.RawMessage `json:"configuration,omitempty"`
}

// ParseConfiguration reads a PodSecurity configuration as the API server
// accepts it: an AdmissionConfiguration (apiserver.config.k8s.io/v1, or
// apiserver.k8s.io/v1alpha1) whose PodSecurity plugin holds the
// configuration inline or names a file by path, or a bare
// PodSecurityConfiguration (pod-security.admission.config.k8s.io v1,
// v1beta1, v1alpha1). readPath reads a plugin's path (relative paths are
// the caller's to resolve); it may be nil when no path is allowed.
// Defaults are applied and the result is validated.
func ParseConfiguration(data []byte, readPath func(string) ([]byte, error)) (*admissionapi.PodSecurityConfiguration, error) {
	var meta struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	if err := yaml.Unmarshal(data, &meta); err != nil {
		return nil, err
	}
	if meta.Kind == "AdmissionConfiguration" {
		var err error
		if data, err = pluginConfiguration(data, readPath); err != nil {
			return nil, err
		}
	}
	cfg, err := load.LoadFromData(data)
	if err != nil {
		return nil, err
	}
	if errs := validation.ValidatePodSecurityConfiguration(cfg); len(errs) > 0 {
		return nil, errs.ToAggregate()
	}
	return cfg, nil
}

func pluginConfiguration(data []byte, readPath func(string) ([]byte, error)) ([]byte, error) {
	var ac admissionConfiguration
	if err := yaml.UnmarshalStrict(data, &ac); err != nil {
		return nil, err
	}
	switch ac.APIVersion {
	case "apiserver.config.k8s.io/v1", "apiserver.k8s.io/v1alpha1":
	default:
		return nil, fmt.Errorf("AdmissionConfiguration apiVersion %q: want apiserver.config.k8s.io/v1", ac.APIVersion)
	}
	for _, p := range ac.Plugins {
		if p.Name != PluginName {
			continue
		}
		switch {
		case len(p.Configuration) > 0 && string(p.Configuration) != "null":
			return p.Configuration, nil
		case p.Path != "":
			if readPath == nil {
				return nil, fmt.Errorf("plugin %s: path %q cannot be read here", PluginName, p.Path)
			}
			b, err := readPath(p.Path)
			if err != nil {
				return nil, fmt.Errorf("plugin %s: %w", PluginName, err)
			}
			return b, nil
		}
		// No configuration: the plugin's defaults, as in the API server.
		return nil, nil
	}
	return nil, fmt.Errorf("AdmissionConfiguration has no %s plugin", PluginName)
}

// Config is everything the node-side evaluation needs.
type Config struct {
	// Defaults is the policy of a namespace without labels.
	Defaults api.Policy
	// ExemptNamespaces and ExemptRuntimeClasses pass without evaluation.
	// Runtime classes are compared with the CRI runtime handler.
	ExemptNamespaces     []string
	ExemptRuntimeClasses []string
	// ExemptUsernames cannot be known on a node; kept to be reported.
	ExemptUsernames []string
	// Namespaces holds each namespace's pod-security.kubernetes.io labels.
	Namespaces map[string]map[string]string
	// KubeletRootDir is the kubelet's --root-dir: mounts from outside its
	// pods/<uid>/ directory are hostPath volumes.
	KubeletRootDir string
	// KubeletSeccompDefault says the kubelet runs with seccompDefault:
	// true, so a CRI seccomp profile Unconfined was asked for explicitly.
	// Otherwise the kubelet sends Unconfined for "not set" too, and
	// armorshim reads it as not set.
	KubeletSeccompDefault bool
}

// FromAdmission fills the defaults and exemptions from a parsed
// PodSecurityConfiguration.
func (c *Config) FromAdmission(pc *admissionapi.PodSecurityConfiguration) error {
	p, err := admissionapi.ToPolicy(pc.Defaults)
	if err != nil {
		return fmt.Errorf("defaults: %w", err)
	}
	c.Defaults = p
	c.ExemptNamespaces = pc.Exemptions.Namespaces
	c.ExemptRuntimeClasses = pc.Exemptions.RuntimeClasses
	c.ExemptUsernames = pc.Exemptions.Usernames
	return nil
}

// PrivilegedPolicy is Pod Security Admission's default: privileged:latest
// in every mode.
func PrivilegedPolicy() api.Policy {
	lv := api.LevelVersion{Level: api.LevelPrivileged, Version: api.LatestVersion()}
	return api.Policy{Enforce: lv, Audit: lv, Warn: lv}
}

var labelKeys = map[string]bool{
	api.EnforceLevelLabel: true, api.EnforceVersionLabel: true,
	api.AuditLevelLabel: true, api.AuditVersionLabel: true,
	api.WarnLevelLabel: true, api.WarnVersionLabel: true,
}

// namespacePolicies resolves each namespace's labels over the defaults, as
// Pod Security Admission does for namespace labels.
func namespacePolicies(labels map[string]map[string]string, defaults api.Policy) (map[string]api.Policy, error) {
	out := make(map[string]api.Policy, len(labels))
	names := make([]string, 0, len(labels))
	for ns := range labels {
		names = append(names, ns)
	}
	sort.Strings(names)
	for _, ns := range names {
		for k := range labels[ns] {
			if !labelKeys[k] {
				return nil, fmt.Errorf("namespaces.%s: unknown label %q (want %s)", ns, k, strings.Join(sortedKeys(labelKeys), ", "))
			}
		}
		p, errs := api.PolicyToEvaluate(labels[ns], defaults)
		if len(errs) > 0 {
			return nil, fmt.Errorf("namespaces.%s: %w", ns, errs.ToAggregate())
		}
		out[ns] = p
	}
	return out, nil
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
