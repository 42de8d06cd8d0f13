package deploy

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/armorshim/armorshim/shim"
)

// TestInstallerManifest decodes deploy/installer.yaml strictly and checks
// what the installer relies on: its environment, its volumes, the rights
// its API calls need, and a configuration armorshim loads and the kubelet
// drop-in agrees with.
func TestInstallerManifest(t *testing.T) {
	data, err := os.ReadFile("installer.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds *appsv1.DaemonSet
	var cm *corev1.ConfigMap
	var vap *admissionv1.ValidatingAdmissionPolicy
	var vapb *admissionv1.ValidatingAdmissionPolicyBinding
	var roleObjs []*rbacv1.Role
	var bindings []*rbacv1.RoleBinding
	for i, doc := range regexp.MustCompile(`(?m)^---[ \t]*$`).Split(string(data), -1) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("document %d: %v", i, err)
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 ServiceAccount":
			obj = &corev1.ServiceAccount{}
		case "admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy":
			vap = &admissionv1.ValidatingAdmissionPolicy{}
			obj = vap
		case "admissionregistration.k8s.io/v1 ValidatingAdmissionPolicyBinding":
			vapb = &admissionv1.ValidatingAdmissionPolicyBinding{}
			obj = vapb
		case "v1 ConfigMap":
			cm = &corev1.ConfigMap{}
			obj = cm
		case "apps/v1 DaemonSet":
			ds = &appsv1.DaemonSet{}
			obj = ds
		case "rbac.authorization.k8s.io/v1 ClusterRole", "rbac.authorization.k8s.io/v1 Role":
			r := &rbacv1.Role{}
			obj = r
			roleObjs = append(roleObjs, r)
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding", "rbac.authorization.k8s.io/v1 RoleBinding":
			b := &rbacv1.RoleBinding{}
			obj = b
			bindings = append(bindings, b)
		default:
			t.Fatalf("document %d: unexpected %q", i, tm.APIVersion+" "+tm.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("document %d (%s): %v", i, tm.Kind, err)
		}
	}
	var roles []rbacv1.PolicyRule
	for _, r := range roleObjs {
		roles = append(roles, r.Rules...)
	}
	var bound []string
	for _, b := range bindings {
		for _, s := range b.Subjects {
			bound = append(bound, b.RoleRef.Kind+"/"+b.RoleRef.Name+"->"+s.Kind+"/"+s.Namespace+"/"+s.Name)
		}
	}
	if ds == nil || cm == nil {
		t.Fatal("want a DaemonSet and a ConfigMap")
	}
	// The policy that keeps the patch right to its node and labels binds,
	// denies, and names the pod's account.
	if vap == nil || vapb == nil || vapb.Spec.PolicyName != vap.Name || !slices.Contains(vapb.Spec.ValidationActions, admissionv1.Deny) ||
		len(vap.Spec.MatchConditions) != 1 || !strings.Contains(vap.Spec.MatchConditions[0].Expression,
		"system:serviceaccount:"+ds.Namespace+":"+ds.Spec.Template.Spec.ServiceAccountName) {
		t.Errorf("the ValidatingAdmissionPolicy limiting the installer: %+v %+v", vap, vapb)
	}
	spec := ds.Spec.Template.Spec
	c := spec.Containers[0]
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = "field:" + e.ValueFrom.FieldRef.FieldPath
		} else {
			env[e.Name] = e.Value
		}
	}
	if env["NODE_NAME"] != "field:spec.nodeName" || env["POD_NAMESPACE"] != "field:metadata.namespace" || env["DAEMONSET_NAME"] != ds.Name {
		t.Errorf("the installer's environment: %v", env)
	}
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("the installer must be privileged (chroot into the host)")
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	for _, v := range spec.Volumes {
		switch {
		case v.HostPath != nil:
			if v.HostPath.Path != "/" || mounts[v.Name] != "/host" {
				t.Errorf("host volume %s: %s at %s, want / at /host", v.Name, v.HostPath.Path, mounts[v.Name])
			}
		case v.ConfigMap != nil:
			if v.ConfigMap.Name != cm.Name || mounts[v.Name] != "/etc/armorshim-installer" {
				t.Errorf("ConfigMap volume %s: %s at %s", v.Name, v.ConfigMap.Name, mounts[v.Name])
			}
		}
	}
	if p := c.ReadinessProbe; p == nil || p.Exec == nil || strings.Join(p.Exec.Command, " ") != "/armorshim-installer ready" || ds.Spec.MinReadySeconds < 10 {
		t.Error("without a readiness probe on the installer's work, a failed install does not stop the rollout")
	}
	if !spec.HostPID {
		t.Error("the installer needs the host's PID namespace (systemd checks its peer's credentials)")
	}
	if spec.TerminationGracePeriodSeconds == nil || *spec.TerminationGracePeriodSeconds < 120 {
		t.Error("the uninstall needs a grace period of minutes (it restarts the kubelet)")
	}
	// The API calls: patch its node, get its DaemonSet, by the pod's account.
	can := func(group, resource, verb string) bool {
		for _, r := range roles {
			if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
				return true
			}
		}
		return false
	}
	if !can("", "nodes", "patch") || !can("apps", "daemonsets", "get") {
		t.Errorf("the installer's rights: %+v", roles)
	}
	for _, b := range []string{"ClusterRole/armorshim-installer->ServiceAccount/kube-system/" + spec.ServiceAccountName,
		"Role/armorshim-installer->ServiceAccount/kube-system/" + spec.ServiceAccountName} {
		if !slices.Contains(bound, b) {
			t.Errorf("no binding %s in %q", b, bound)
		}
	}
	// The configuration loads, and listens where the kubelet drop-in points.
	path := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(path, []byte(cm.Data["config.yaml"]), 0o644)
	cfg, err := shim.LoadConfig(path)
	if err != nil {
		t.Fatalf("the ConfigMap's config.yaml: %v", err)
	}
	if _, err := cfg.Validate(); err != nil {
		t.Fatalf("the ConfigMap's config.yaml: %v", err)
	}
	dropin, _ := os.ReadFile("../systemd/kubelet.conf.d/90-armorshim.conf")
	if !strings.Contains(string(dropin), "containerRuntimeEndpoint: "+cfg.Listen) {
		t.Errorf("armorshim listens on %s; the kubelet drop-in says:\n%s", cfg.Listen, dropin)
	}
}
