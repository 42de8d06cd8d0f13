package apparmor_test

import (
	"errors"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/apparmor"
)

const (
	typeRuntimeDefault = runtimeapi.SecurityProfile_RuntimeDefault
	typeUnconfined     = runtimeapi.SecurityProfile_Unconfined
	typeLocalhost      = runtimeapi.SecurityProfile_Localhost

	notLoadedMsg   = `Blocked: Cannot enforce AppArmor: profile "k8s-apparmor-example-allow-write" is not loaded`
	notEnabledMsg  = `Blocked: Cannot enforce AppArmor: AppArmor is not enabled on the host`
	unreadableErr  = "open /sys/kernel/security/apparmor/profiles: permission denied"
	unreadableMsg  = "Blocked: Cannot enforce AppArmor: cannot read the host's AppArmor state: " + unreadableErr
	unknownHostMsg = "Blocked: Cannot enforce AppArmor: the host's AppArmor state is unknown"
)

// countingHost is a Host that counts how often a decision asks it.
type countingHost struct {
	snap  *apparmor.Snapshot
	calls atomic.Int32
}

func (h *countingHost) Snapshot() *apparmor.Snapshot {
	h.calls.Add(1)
	return h.snap
}

// loadedHost has AppArmor on and the tutorial's profiles loaded, but not
// k8s-apparmor-example-allow-write.
func loadedHost() *apparmor.Snapshot {
	return &apparmor.Snapshot{
		Enabled:  true,
		Revision: "7",
		Profiles: map[string]apparmor.Mode{
			denyWrite:   apparmor.ModeEnforce,
			testDeny:    apparmor.ModeEnforce,
			testAudit:   apparmor.ModeEnforce,
			dockerDflt:  apparmor.ModeEnforce,
			nginx:       apparmor.ModeEnforce,
			childName:   apparmor.ModeEnforce,
			nsName:      apparmor.ModeEnforce,
			spacedName:  apparmor.ModeEnforce,
			complainPrf: apparmor.ModeComplain,
			killPrf:     apparmor.Mode("kill"),
		},
	}
}

// disabledHost has AppArmor off. Its stale profile list must not matter.
func disabledHost() *apparmor.Snapshot {
	return &apparmor.Snapshot{
		Detail:   "the AppArmor module is disabled",
		Profiles: map[string]apparmor.Mode{denyWrite: apparmor.ModeEnforce},
	}
}

// brokenHost could not be read.
func brokenHost() *apparmor.Snapshot {
	return &apparmor.Snapshot{Err: errors.New(unreadableErr)}
}

type reqOpt func(*runtimeapi.CreateContainerRequest)

// newRequest is the kubelet's CreateContainer for container hello of pod
// default/hello-apparmor, with no AppArmor profile.
func newRequest(opts ...reqOpt) *runtimeapi.CreateContainerRequest {
	req := &runtimeapi.CreateContainerRequest{
		PodSandboxId: "4e1a9b9ac7b84ca6",
		Config: &runtimeapi.ContainerConfig{
			Metadata: &runtimeapi.ContainerMetadata{Name: "hello"},
			Image:    &runtimeapi.ImageSpec{Image: "busybox:1.28"},
			Command:  []string{"sh", "-c", "echo 'Hello AppArmor!' && sleep 1h"},
			Envs:     []*runtimeapi.KeyValue{{Key: "API_TOKEN", Value: []byte("s3cr3t")}},
			Labels: map[string]string{
				"io.kubernetes.pod.name":       "hello-apparmor",
				"io.kubernetes.pod.namespace":  "default",
				"io.kubernetes.pod.uid":        "9f3c1a2e-0000-4000-8000-000000000001",
				"io.kubernetes.container.name": "hello",
			},
			Linux: &runtimeapi.LinuxContainerConfig{
				SecurityContext: &runtimeapi.LinuxContainerSecurityContext{},
			},
		},
		SandboxConfig: &runtimeapi.PodSandboxConfig{
			Metadata: &runtimeapi.PodSandboxMetadata{
				Name: "hello-apparmor", Namespace: "default", Uid: "9f3c1a2e-0000-4000-8000-000000000001",
			},
			Annotations: map[string]string{"kubernetes.io/config.source": "api"},
		},
	}
	for _, o := range opts {
		o(req)
	}
	return req
}

// field sets config.linux.security_context.apparmor.
func field(typ runtimeapi.SecurityProfile_ProfileType, ref string) reqOpt {
	return func(r *runtimeapi.CreateContainerRequest) {
		r.Config.Linux.SecurityContext.Apparmor = &runtimeapi.SecurityProfile{ProfileType: typ, LocalhostRef: ref}
	}
}

// deprecated sets the deprecated apparmor_profile string.
func deprecated(ref string) reqOpt {
	return func(r *runtimeapi.CreateContainerRequest) {
		r.Config.Linux.SecurityContext.ApparmorProfile = ref
	}
}

// annotation sets the beta annotation for container in the sandbox config.
func annotation(container, ref string) reqOpt {
	return func(r *runtimeapi.CreateContainerRequest) {
		r.SandboxConfig.Annotations[apparmor.AnnotationPrefix+container] = ref
	}
}

func privileged() reqOpt {
	return func(r *runtimeapi.CreateContainerRequest) {
		r.Config.Linux.SecurityContext.Privileged = true
	}
}

func pod(name string) reqOpt {
	return func(r *runtimeapi.CreateContainerRequest) {
		r.SandboxConfig.Metadata.Name = name
		r.Config.Labels["io.kubernetes.pod.name"] = name
	}
}

func noLinux() reqOpt {
	return func(r *runtimeapi.CreateContainerRequest) { r.Config.Linux = nil }
}

func noSecurityContext() reqOpt {
	return func(r *runtimeapi.CreateContainerRequest) { r.Config.Linux.SecurityContext = nil }
}

// decideCase is one row of a Decide table.
type decideCase struct {
	name string
	req  *runtimeapi.CreateContainerRequest
	snap *apparmor.Snapshot
	pol  *apparmor.Policy

	// Accepted requests (wantCode == codes.OK).
	wantProfile  apparmor.Profile
	wantSource   apparmor.Source
	wantModified bool

	// Refused requests: the status code, and the exact message or, if
	// wantMsg is empty, its prefix.
	wantCode      codes.Code
	wantMsg       string
	wantMsgPrefix string

	// How often the decision may ask the host for its snapshot.
	wantHostCalls int32

	// What enforcing every rule would have done instead (accepted
	// requests); nil: nothing. Its Refusal is checked against the policy
	// enforced, word for word; only Rule, Mode and Profile are given here.
	wantDryRun *apparmor.DryRun
}

// wantFields returns what the two CRI fields must hold after forwarding p.
func wantFields(p apparmor.Profile) (*runtimeapi.SecurityProfile, string) {
	sp := &runtimeapi.SecurityProfile{}
	switch p.Type {
	case apparmor.RuntimeDefault:
		sp.ProfileType = typeRuntimeDefault
	case apparmor.Unconfined:
		sp.ProfileType = typeUnconfined
	case apparmor.Localhost:
		sp.ProfileType = typeLocalhost
		sp.LocalhostRef = p.Name // bare name, no localhost/ prefix
	}
	return sp, p.String()
}

func runDecide(t *testing.T, tc decideCase) {
	t.Helper()
	h := &countingHost{snap: tc.snap}
	orig := proto.Clone(tc.req).(*runtimeapi.CreateContainerRequest)
	d, err := apparmor.Decide(tc.req, h, tc.pol)
	if got := h.calls.Load(); got != tc.wantHostCalls {
		t.Errorf("host asked %d times, want %d", got, tc.wantHostCalls)
	}

	if tc.wantCode != codes.OK {
		if err == nil {
			t.Fatalf("Decide accepted (%+v), want a %v refusal", d, tc.wantCode)
		}
		var ref *apparmor.Refusal
		if !errors.As(err, &ref) {
			t.Fatalf("error %v is a %T, want *apparmor.Refusal", err, err)
		}
		st, ok := status.FromError(err)
		if !ok {
			t.Fatalf("status.FromError(%v) is not a gRPC status", err)
		}
		if st.Code() != tc.wantCode {
			t.Errorf("code = %v, want %v (message %q)", st.Code(), tc.wantCode, st.Message())
		}
		switch {
		case tc.wantMsg != "" && st.Message() != tc.wantMsg:
			t.Errorf("message\n got %q\nwant %q", st.Message(), tc.wantMsg)
		case tc.wantMsg == "" && !strings.HasPrefix(st.Message(), tc.wantMsgPrefix):
			t.Errorf("message %q does not start with %q", st.Message(), tc.wantMsgPrefix)
		}
		if err.Error() != st.Message() {
			t.Errorf("Error() = %q, status message = %q; they must agree", err.Error(), st.Message())
		}
		if !proto.Equal(tc.req, orig) {
			t.Errorf("a refused request was modified:\n got %v\nwant %v", tc.req, orig)
		}
		return
	}

	if err != nil {
		t.Fatalf("Decide refused: %v", err)
	}
	if d.Profile != tc.wantProfile {
		t.Errorf("profile = %#v, want %#v", d.Profile, tc.wantProfile)
	}
	if d.Source != tc.wantSource {
		t.Errorf("source = %q, want %q", d.Source, tc.wantSource)
	}
	if d.Modified != tc.wantModified {
		t.Errorf("modified = %v, want %v", d.Modified, tc.wantModified)
	}
	checkDryRun(t, tc, orig, d.DryRun)

	// The forwarded request: both fields set to the profile when modified,
	// the original otherwise; nothing else touched.
	want := proto.Clone(orig).(*runtimeapi.CreateContainerRequest)
	if tc.wantModified {
		if want.Config.Linux == nil {
			want.Config.Linux = &runtimeapi.LinuxContainerConfig{}
		}
		if want.Config.Linux.SecurityContext == nil {
			want.Config.Linux.SecurityContext = &runtimeapi.LinuxContainerSecurityContext{}
		}
		sc := want.Config.Linux.SecurityContext
		sc.Apparmor, sc.ApparmorProfile = wantFields(tc.wantProfile)
	}
	if !proto.Equal(tc.req, want) {
		t.Errorf("forwarded request\n got %v\nwant %v", tc.req, want)
	}

	// Deciding again on the forwarded request yields the same profile and
	// no further change: the fields are consistent.
	again, err := apparmor.Decide(tc.req, &countingHost{snap: tc.snap}, tc.pol)
	if err != nil {
		t.Fatalf("second Decide on the forwarded request refused: %v", err)
	}
	if again.Profile != tc.wantProfile || again.Modified {
		t.Errorf("second Decide = %+v, want profile %#v unmodified", again, tc.wantProfile)
	}
}

func TestDecide(t *testing.T) {
	long := strings.Repeat("a", apparmor.MaxNameLength+1)
	tests := []decideCase{
		// Resolution and forwarding.
		{
			name: "localhost field as the kubelet sends it", req: newRequest(field(typeLocalhost, denyWrite)), snap: loadedHost(),
			wantProfile: localhost(denyWrite), wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "localhost field and string already consistent",
			req:  newRequest(field(typeLocalhost, denyWrite), deprecated("localhost/"+denyWrite)), snap: loadedHost(),
			wantProfile: localhost(denyWrite), wantSource: apparmor.SourceField, wantModified: false, wantHostCalls: 1,
		},
		{
			name: "localhost_ref with the localhost/ prefix (critest) is stripped",
			req:  newRequest(field(typeLocalhost, "localhost/"+denyWrite), deprecated("localhost/"+denyWrite)), snap: loadedHost(),
			wantProfile: localhost(denyWrite), wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "localhost_ref with the prefix and no string",
			req:  newRequest(field(typeLocalhost, "localhost/"+testDeny)), snap: loadedHost(),
			wantProfile: localhost(testDeny), wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "deprecated string only (older kubelet)", req: newRequest(deprecated("localhost/" + testDeny)), snap: loadedHost(),
			wantProfile: localhost(testDeny), wantSource: apparmor.SourceDeprecated, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "beta annotation only (hello-apparmor)", req: newRequest(annotation("hello", "localhost/"+denyWrite)), snap: loadedHost(),
			wantProfile: localhost(denyWrite), wantSource: apparmor.SourceAnnotation, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "annotation without a linux config builds the fields",
			req:  newRequest(noLinux(), annotation("hello", "localhost/"+denyWrite)), snap: loadedHost(),
			wantProfile: localhost(denyWrite), wantSource: apparmor.SourceAnnotation, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "annotation without a security context builds the fields",
			req:  newRequest(noSecurityContext(), annotation("hello", "runtime/default")), snap: loadedHost(),
			wantProfile: runtimeDefault, wantSource: apparmor.SourceAnnotation, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "fields disagree: the field wins and both are set to it",
			req:  newRequest(field(typeLocalhost, denyWrite), deprecated("localhost/"+allowWrite)), snap: loadedHost(),
			wantProfile: localhost(denyWrite), wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "fields disagree: runtime default field over unconfined string",
			req:  newRequest(field(typeRuntimeDefault, ""), deprecated("unconfined")), snap: loadedHost(),
			wantProfile: runtimeDefault, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "fields disagree: unconfined field over a missing localhost string",
			req:  newRequest(field(typeUnconfined, ""), deprecated("localhost/"+allowWrite)), snap: loadedHost(),
			wantProfile: unconfined, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 0,
		},
		{
			name: "string beats annotation",
			req:  newRequest(deprecated("unconfined"), annotation("hello", "localhost/"+allowWrite)), snap: loadedHost(),
			wantProfile: unconfined, wantSource: apparmor.SourceDeprecated, wantModified: true, wantHostCalls: 0,
		},
		{
			name: "field beats annotation",
			req:  newRequest(field(typeLocalhost, nginx), annotation("hello", "localhost/"+allowWrite)), snap: loadedHost(),
			wantProfile: localhost(nginx), wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "annotation for another container is ignored",
			req:  newRequest(annotation("sidecar", "localhost/"+allowWrite)), snap: loadedHost(),
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 0,
		},
		{
			name: "annotation for a container whose name extends this one is ignored",
			req:  newRequest(annotation("hello-2", "localhost/"+allowWrite), annotation("hell", "foo")), snap: loadedHost(),
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 0,
		},
		{
			name: "empty annotation value asks for nothing",
			req:  newRequest(annotation("hello", "")), snap: loadedHost(),
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 0,
		},
		{
			name: "nothing requested is forwarded unchanged", req: newRequest(), snap: loadedHost(),
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 0,
		},
		{
			name: "nothing requested without a linux config", req: newRequest(noLinux()), snap: loadedHost(),
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 0,
		},
		{
			name: "child profile name", req: newRequest(field(typeLocalhost, childName)), snap: loadedHost(),
			wantProfile: localhost(childName), wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "namespaced profile name", req: newRequest(deprecated("localhost/" + nsName)), snap: loadedHost(),
			wantProfile: localhost(nsName), wantSource: apparmor.SourceDeprecated, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "profile name with inner spaces", req: newRequest(field(typeLocalhost, spacedName)), snap: loadedHost(),
			wantProfile: localhost(spacedName), wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "complain-mode profile is loaded and accepted by default", req: newRequest(field(typeLocalhost, complainPrf)), snap: loadedHost(),
			wantProfile: localhost(complainPrf), wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "unconfined field only", req: newRequest(field(typeUnconfined, "")), snap: loadedHost(),
			wantProfile: unconfined, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 0,
		},
		{
			name: "unconfined consistent", req: newRequest(field(typeUnconfined, ""), deprecated("unconfined")), snap: loadedHost(),
			wantProfile: unconfined, wantSource: apparmor.SourceField, wantModified: false, wantHostCalls: 0,
		},
		{
			name: "runtime default consistent", req: newRequest(field(typeRuntimeDefault, ""), deprecated("runtime/default")), snap: loadedHost(),
			wantProfile: runtimeDefault, wantSource: apparmor.SourceField, wantModified: false, wantHostCalls: 1,
		},
		{
			name: "runtime default string only", req: newRequest(deprecated("runtime/default")), snap: loadedHost(),
			wantProfile: runtimeDefault, wantSource: apparmor.SourceDeprecated, wantModified: true, wantHostCalls: 1,
		},

		// Invalid references: InvalidArgument, and the host is not asked.
		{
			name: "localhost field with empty ref", req: newRequest(field(typeLocalhost, "")), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "localhost/": the localhost profile name must not be empty`,
		},
		{
			name: "localhost field with only the prefix", req: newRequest(field(typeLocalhost, "localhost/")), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "localhost/": the localhost profile name must not be empty`,
		},
		{
			name: "localhost field with a leading space", req: newRequest(field(typeLocalhost, " "+denyWrite)), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "localhost/ k8s-apparmor-example-deny-write": the profile name must not be padded with whitespace`,
		},
		{
			name: "localhost field with a trailing space", req: newRequest(field(typeLocalhost, denyWrite+" ")), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "localhost/k8s-apparmor-example-deny-write ": the profile name must not be padded with whitespace`,
		},
		{
			name: "localhost field with a 4096-byte name", req: newRequest(field(typeLocalhost, long)), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsgPrefix: `invalid AppArmor profile name: "localhost/aaaa`,
		},
		{
			name: "string without a known form", req: newRequest(deprecated("foo")), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "foo"`,
		},
		{
			name: "string foo/bar", req: newRequest(deprecated("foo/bar")), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "foo/bar"`,
		},
		{
			name: "string with a padded name", req: newRequest(deprecated("localhost/" + denyWrite + "\t")), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "localhost/k8s-apparmor-example-deny-write\t": the profile name must not be padded with whitespace`,
		},
		{
			name: "string with a 4096-byte name", req: newRequest(deprecated("localhost/" + long)), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsgPrefix: `invalid AppArmor profile name: "localhost/aaaa`,
		},
		{
			name: "annotation foo/bar", req: newRequest(annotation("hello", "foo/bar")), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "foo/bar"`,
		},
		{
			name: "annotation docker-default without prefix", req: newRequest(annotation("hello", dockerDflt)), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "docker-default"`,
		},
		{
			name: "annotation localhost/ with an empty name", req: newRequest(annotation("hello", "localhost/")), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "localhost/": the localhost profile name must not be empty`,
		},
		{
			name: "RuntimeDefault with a localhost_ref", req: newRequest(field(typeRuntimeDefault, nginx)), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "runtime/default": localhost_ref "k8s-nginx" is only valid with profile type Localhost`,
		},
		{
			name: "Unconfined with a localhost_ref", req: newRequest(field(typeUnconfined, "localhost/"+nginx)), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "unconfined": localhost_ref "localhost/k8s-nginx" is only valid with profile type Localhost`,
		},
		{
			name: "unknown profile type", req: newRequest(field(runtimeapi.SecurityProfile_ProfileType(99), "")), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "99": unknown profile type`,
		},
		{
			name: "an invalid field is not rescued by a valid string",
			req:  newRequest(field(typeLocalhost, ""), deprecated("localhost/"+denyWrite)), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsgPrefix: `invalid AppArmor profile name: "localhost/"`,
		},
		{
			name: "an invalid string is not rescued by a valid annotation",
			req:  newRequest(deprecated("foo"), annotation("hello", "localhost/"+denyWrite)), snap: loadedHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "foo"`,
		},
		{
			name: "invalid is reported even when the host is broken", req: newRequest(deprecated("foo")), snap: brokenHost(),
			wantCode: codes.InvalidArgument, wantMsg: `invalid AppArmor profile name: "foo"`,
		},

		// Host checks.
		{
			name: "localhost not loaded (hello-apparmor-2)",
			req:  newRequest(pod("hello-apparmor-2"), annotation("hello", "localhost/"+allowWrite)), snap: loadedHost(),
			wantCode: codes.FailedPrecondition, wantMsg: notLoadedMsg, wantHostCalls: 1,
		},
		{
			name: "localhost field not loaded", req: newRequest(field(typeLocalhost, allowWrite)), snap: loadedHost(),
			wantCode: codes.FailedPrecondition, wantMsg: notLoadedMsg, wantHostCalls: 1,
		},
		{
			name: "localhost field with prefix not loaded", req: newRequest(field(typeLocalhost, "localhost/"+allowWrite)), snap: loadedHost(),
			wantCode: codes.FailedPrecondition, wantMsg: notLoadedMsg, wantHostCalls: 1,
		},
		{
			name: "profile names are case-sensitive", req: newRequest(field(typeLocalhost, "K8S-nginx")), snap: loadedHost(),
			wantCode: codes.FailedPrecondition, wantMsg: `Blocked: Cannot enforce AppArmor: profile "K8S-nginx" is not loaded`, wantHostCalls: 1,
		},
		{
			name: "a child of a loaded profile is not loaded by itself", req: newRequest(field(typeLocalhost, nginx+"//hat")), snap: loadedHost(),
			wantCode: codes.FailedPrecondition, wantMsg: `Blocked: Cannot enforce AppArmor: profile "k8s-nginx//hat" is not loaded`, wantHostCalls: 1,
		},
		{
			name: "a profile of another namespace is not the root namespace's", req: newRequest(field(typeLocalhost, ":ns:"+denyWrite)), snap: loadedHost(),
			wantCode: codes.FailedPrecondition, wantMsg: `Blocked: Cannot enforce AppArmor: profile ":ns:k8s-apparmor-example-deny-write" is not loaded`, wantHostCalls: 1,
		},
		{
			name: "loaded profile on a host with AppArmor off", req: newRequest(field(typeLocalhost, denyWrite)), snap: disabledHost(),
			wantCode: codes.FailedPrecondition, wantMsg: notEnabledMsg, wantHostCalls: 1,
		},
		{
			name: "explicit runtime/default field on a host with AppArmor off", req: newRequest(field(typeRuntimeDefault, "")), snap: disabledHost(),
			wantCode: codes.FailedPrecondition, wantMsg: notEnabledMsg, wantHostCalls: 1,
		},
		{
			name: "explicit runtime/default string on a host with AppArmor off", req: newRequest(deprecated("runtime/default")), snap: disabledHost(),
			wantCode: codes.FailedPrecondition, wantMsg: notEnabledMsg, wantHostCalls: 1,
		},
		{
			name: "runtime/default annotation on a host with AppArmor off", req: newRequest(annotation("hello", "runtime/default")), snap: disabledHost(),
			wantCode: codes.FailedPrecondition, wantMsg: notEnabledMsg, wantHostCalls: 1,
		},
		{
			name: "unconfined on a host with AppArmor off", req: newRequest(field(typeUnconfined, "")), snap: disabledHost(),
			wantProfile: unconfined, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 0,
		},
		{
			name: "nothing requested on a host with AppArmor off", req: newRequest(), snap: disabledHost(),
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 0,
		},
		{
			name: "localhost on an unreadable host fails closed", req: newRequest(field(typeLocalhost, denyWrite)), snap: brokenHost(),
			wantCode: codes.FailedPrecondition, wantMsg: unreadableMsg, wantHostCalls: 1,
		},
		{
			name: "runtime/default on an unreadable host fails closed", req: newRequest(deprecated("runtime/default")), snap: brokenHost(),
			wantCode: codes.FailedPrecondition, wantMsg: unreadableMsg, wantHostCalls: 1,
		},
		{
			name:     "an error wins over an enabled flag",
			req:      newRequest(field(typeLocalhost, denyWrite)),
			snap:     &apparmor.Snapshot{Enabled: true, Err: errors.New(unreadableErr), Profiles: map[string]apparmor.Mode{denyWrite: apparmor.ModeEnforce}},
			wantCode: codes.FailedPrecondition, wantMsg: unreadableMsg, wantHostCalls: 1,
		},
		{
			name: "unconfined on an unreadable host", req: newRequest(deprecated("unconfined")), snap: brokenHost(),
			wantProfile: unconfined, wantSource: apparmor.SourceDeprecated, wantModified: true, wantHostCalls: 0,
		},
		{
			name: "nothing requested on an unreadable host", req: newRequest(), snap: brokenHost(),
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 0,
		},
		{
			name: "nil snapshot fails closed", req: newRequest(field(typeLocalhost, denyWrite)), snap: nil,
			wantCode: codes.FailedPrecondition, wantMsg: unknownHostMsg, wantHostCalls: 1,
		},
		{
			name: "nil snapshot with runtime/default fails closed", req: newRequest(field(typeRuntimeDefault, "")), snap: nil,
			wantCode: codes.FailedPrecondition, wantMsg: unknownHostMsg, wantHostCalls: 1,
		},
		{
			name: "nil snapshot with unconfined", req: newRequest(field(typeUnconfined, "")), snap: nil,
			wantProfile: unconfined, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 0,
		},
		{
			name: "empty snapshot (AppArmor off)", req: newRequest(field(typeLocalhost, denyWrite)), snap: &apparmor.Snapshot{},
			wantCode: codes.FailedPrecondition, wantMsg: notEnabledMsg, wantHostCalls: 1,
		},
		{
			name: "enabled host with no profiles", req: newRequest(field(typeLocalhost, denyWrite)), snap: &apparmor.Snapshot{Enabled: true},
			wantCode: codes.FailedPrecondition, wantMsg: `Blocked: Cannot enforce AppArmor: profile "k8s-apparmor-example-deny-write" is not loaded`, wantHostCalls: 1,
		},

		// Privileged containers.
		{
			name: "privileged: localhost loaded", req: newRequest(privileged(), field(typeLocalhost, denyWrite)), snap: loadedHost(),
			wantProfile: localhost(denyWrite), wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "privileged: localhost not loaded is still refused", req: newRequest(privileged(), field(typeLocalhost, allowWrite)), snap: loadedHost(),
			wantCode: codes.FailedPrecondition, wantMsg: notLoadedMsg, wantHostCalls: 1,
		},
		{
			name: "privileged: localhost on a host with AppArmor off", req: newRequest(privileged(), deprecated("localhost/"+denyWrite)), snap: disabledHost(),
			wantCode: codes.FailedPrecondition, wantMsg: notEnabledMsg, wantHostCalls: 1,
		},
		{
			name: "privileged: explicit runtime/default needs AppArmor", req: newRequest(privileged(), field(typeRuntimeDefault, "")), snap: disabledHost(),
			wantCode: codes.FailedPrecondition, wantMsg: notEnabledMsg, wantHostCalls: 1,
		},
		{
			name: "privileged: explicit runtime/default forwarded", req: newRequest(privileged(), field(typeRuntimeDefault, "")), snap: loadedHost(),
			wantProfile: runtimeDefault, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 1,
		},
		{
			name: "privileged: nothing requested on a host with AppArmor off", req: newRequest(privileged()), snap: disabledHost(),
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 0,
		},
		{
			name: "privileged: nothing requested on an unreadable host", req: newRequest(privileged()), snap: brokenHost(),
			wantProfile: apparmor.Profile{}, wantSource: apparmor.SourceNone, wantHostCalls: 0,
		},
		{
			name: "privileged: unconfined", req: newRequest(privileged(), field(typeUnconfined, "")), snap: brokenHost(),
			wantProfile: unconfined, wantSource: apparmor.SourceField, wantModified: true, wantHostCalls: 0,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { runDecide(t, tc) })
	}
}

// TestDecideSetsBothFields spells out the forwarded fields literally.
func TestDecideSetsBothFields(t *testing.T) {
	tests := []struct {
		name       string
		req        *runtimeapi.CreateContainerRequest
		wantField  *runtimeapi.SecurityProfile
		wantString string
	}{
		{
			name:       "localhost from a prefixed localhost_ref",
			req:        newRequest(field(typeLocalhost, "localhost/"+denyWrite)),
			wantField:  &runtimeapi.SecurityProfile{ProfileType: typeLocalhost, LocalhostRef: "k8s-apparmor-example-deny-write"},
			wantString: "localhost/k8s-apparmor-example-deny-write",
		},
		{
			name:       "localhost from the annotation",
			req:        newRequest(annotation("hello", "localhost/"+dockerDflt)),
			wantField:  &runtimeapi.SecurityProfile{ProfileType: typeLocalhost, LocalhostRef: "docker-default"},
			wantString: "localhost/docker-default",
		},
		{
			name:       "runtime default from the string",
			req:        newRequest(deprecated("runtime/default")),
			wantField:  &runtimeapi.SecurityProfile{ProfileType: typeRuntimeDefault},
			wantString: "runtime/default",
		},
		{
			name:       "unconfined from the field, overriding a stale string",
			req:        newRequest(field(typeUnconfined, ""), deprecated("localhost/"+nginx)),
			wantField:  &runtimeapi.SecurityProfile{ProfileType: typeUnconfined},
			wantString: "unconfined",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := apparmor.Decide(tt.req, loadedHost(), nil)
			if err != nil {
				t.Fatalf("Decide: %v", err)
			}
			if !d.Modified {
				t.Error("Modified = false, want true")
			}
			sc := tt.req.GetConfig().GetLinux().GetSecurityContext()
			if !proto.Equal(sc.GetApparmor(), tt.wantField) {
				t.Errorf("apparmor = %v, want %v", sc.GetApparmor(), tt.wantField)
			}
			if sc.GetApparmorProfile() != tt.wantString {
				t.Errorf("apparmor_profile = %q, want %q", sc.GetApparmorProfile(), tt.wantString)
			}
		})
	}
}

// TestRefusalDetails checks the google.rpc.ErrorInfo the kubelet's caller gets.
func TestRefusalDetails(t *testing.T) {
	tests := []struct {
		name       string
		req        *runtimeapi.CreateContainerRequest
		snap       *apparmor.Snapshot
		pol        *apparmor.Policy
		wantCode   codes.Code
		wantReason string
		wantMD     map[string]string
	}{
		{
			name:       "not loaded",
			req:        newRequest(pod("hello-apparmor-2"), annotation("hello", "localhost/"+allowWrite)),
			snap:       loadedHost(),
			wantCode:   codes.FailedPrecondition,
			wantReason: "Blocked",
			wantMD: map[string]string{
				"cause": "not-loaded", "profile": "localhost/k8s-apparmor-example-allow-write",
				"container": "hello", "pod": "hello-apparmor-2", "namespace": "default",
			},
		},
		{
			name:       "not enabled",
			req:        newRequest(field(typeRuntimeDefault, "")),
			snap:       disabledHost(),
			wantCode:   codes.FailedPrecondition,
			wantReason: "Blocked",
			wantMD: map[string]string{
				"cause": "not-enabled", "profile": "runtime/default",
				"container": "hello", "pod": "hello-apparmor", "namespace": "default",
			},
		},
		{
			name:       "unreadable",
			req:        newRequest(field(typeLocalhost, denyWrite)),
			snap:       brokenHost(),
			wantCode:   codes.FailedPrecondition,
			wantReason: "Blocked",
			wantMD: map[string]string{
				"cause": "host-unreadable", "profile": "localhost/k8s-apparmor-example-deny-write",
				"container": "hello", "pod": "hello-apparmor", "namespace": "default",
			},
		},
		{
			name:       "forbidden by policy",
			req:        newRequest(field(typeUnconfined, "")),
			snap:       loadedHost(),
			pol:        &apparmor.Policy{Disabled: true},
			wantCode:   codes.PermissionDenied,
			wantReason: "Forbidden",
			wantMD: map[string]string{
				"cause": "disabled", "profile": "unconfined",
				"container": "hello", "pod": "hello-apparmor", "namespace": "default",
			},
		},
		{
			name:       "invalid reference: no profile key",
			req:        newRequest(deprecated("foo/bar")),
			snap:       loadedHost(),
			wantCode:   codes.InvalidArgument,
			wantReason: "InvalidProfile",
			wantMD: map[string]string{
				"cause": "invalid", "container": "hello", "pod": "hello-apparmor", "namespace": "default",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := apparmor.Decide(tt.req, tt.snap, tt.pol)
			st, ok := status.FromError(err)
			if err == nil || !ok {
				t.Fatalf("Decide error %v is not a gRPC status", err)
			}
			if st.Code() != tt.wantCode {
				t.Errorf("code = %v, want %v", st.Code(), tt.wantCode)
			}
			if want := tt.wantReason + ": "; tt.wantReason != "InvalidProfile" && !strings.HasPrefix(st.Message(), want) {
				t.Errorf("message %q does not start with %q", st.Message(), want)
			}
			details := st.Details()
			if len(details) != 1 {
				t.Fatalf("details = %v, want exactly one ErrorInfo", details)
			}
			info, ok := details[0].(*errdetails.ErrorInfo)
			if !ok {
				t.Fatalf("detail is a %T, want *errdetails.ErrorInfo", details[0])
			}
			if info.GetReason() != tt.wantReason || info.GetDomain() != "armorshim.io" {
				t.Errorf("ErrorInfo reason/domain = %q/%q, want %q/armorshim.io", info.GetReason(), info.GetDomain(), tt.wantReason)
			}
			if !equalMaps(info.GetMetadata(), tt.wantMD) {
				t.Errorf("ErrorInfo metadata = %v, want %v", info.GetMetadata(), tt.wantMD)
			}
		})
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestRefusalStatusWithoutTarget: empty names are left out of the detail.
func TestRefusalStatusWithoutTarget(t *testing.T) {
	r := &apparmor.Refusal{
		Code: codes.FailedPrecondition, Reason: apparmor.ReasonBlocked, Cause: "not-enabled",
		Message: notEnabledMsg,
	}
	st := r.GRPCStatus()
	if st.Code() != codes.FailedPrecondition || st.Message() != notEnabledMsg {
		t.Errorf("status = %v %q", st.Code(), st.Message())
	}
	if len(st.Details()) != 1 {
		t.Fatalf("details = %v, want one", st.Details())
	}
	info := st.Details()[0].(*errdetails.ErrorInfo)
	if want := map[string]string{"cause": "not-enabled"}; !equalMaps(info.GetMetadata(), want) {
		t.Errorf("metadata = %v, want %v", info.GetMetadata(), want)
	}
	if r.Error() != notEnabledMsg {
		t.Errorf("Error() = %q", r.Error())
	}
}

// TestDecideHostOnlyWhenNeeded proves that unconfined and nothing requested
// never touch the host, whatever state it is in, while any confining profile
// asks it exactly once.
func TestDecideHostOnlyWhenNeeded(t *testing.T) {
	snaps := map[string]*apparmor.Snapshot{
		"loaded": loadedHost(), "disabled": disabledHost(), "broken": brokenHost(), "nil": nil,
	}
	reqs := []struct {
		name      string
		opts      []reqOpt
		wantCalls int32
	}{
		{"nothing", nil, 0},
		{"nothing, privileged", []reqOpt{privileged()}, 0},
		{"unconfined field", []reqOpt{field(typeUnconfined, "")}, 0},
		{"unconfined string", []reqOpt{deprecated("unconfined")}, 0},
		{"unconfined annotation", []reqOpt{annotation("hello", "unconfined")}, 0},
		{"invalid", []reqOpt{deprecated("foo")}, 0},
		{"runtime/default", []reqOpt{field(typeRuntimeDefault, "")}, 1},
		{"localhost", []reqOpt{field(typeLocalhost, denyWrite)}, 1},
	}
	for snapName, snap := range snaps {
		for _, r := range reqs {
			h := &countingHost{snap: snap}
			_, err := apparmor.Decide(newRequest(r.opts...), h, nil)
			if got := h.calls.Load(); got != r.wantCalls {
				t.Errorf("%s host, %s: Snapshot() called %d times, want %d", snapName, r.name, got, r.wantCalls)
			}
			if r.wantCalls == 0 && r.name != "invalid" && err != nil {
				t.Errorf("%s host, %s: refused: %v", snapName, r.name, err)
			}
		}
	}
}

func TestDecideNilHost(t *testing.T) {
	var typedNil *apparmor.Snapshot
	for name, h := range map[string]apparmor.Host{"nil interface": nil, "nil *Snapshot": typedNil} {
		_, err := apparmor.Decide(newRequest(field(typeLocalhost, denyWrite)), h, nil)
		if st, _ := status.FromError(err); err == nil || st.Code() != codes.FailedPrecondition || st.Message() != unknownHostMsg {
			t.Errorf("%s: localhost: err = %v, want %q", name, err, unknownHostMsg)
		}
		d, err := apparmor.Decide(newRequest(field(typeUnconfined, "")), h, nil)
		if err != nil || d.Profile != unconfined {
			t.Errorf("%s: unconfined: %+v, %v; want accepted", name, d, err)
		}
	}
}

func TestSnapshotIsAHost(t *testing.T) {
	s := loadedHost()
	var h apparmor.Host = s
	if h.Snapshot() != s {
		t.Error("(*Snapshot).Snapshot() does not return its receiver")
	}
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name       string
		req        *runtimeapi.CreateContainerRequest
		want       apparmor.Profile
		wantSource apparmor.Source
		wantErr    bool
	}{
		{"nil request", nil, apparmor.Profile{}, apparmor.SourceNone, false},
		{"empty request", &runtimeapi.CreateContainerRequest{}, apparmor.Profile{}, apparmor.SourceNone, false},
		{"nothing", newRequest(), apparmor.Profile{}, apparmor.SourceNone, false},
		{"field localhost", newRequest(field(typeLocalhost, denyWrite)), localhost(denyWrite), apparmor.SourceField, false},
		{"field localhost prefixed", newRequest(field(typeLocalhost, "localhost/"+denyWrite)), localhost(denyWrite), apparmor.SourceField, false},
		{"field localhost prefixed twice keeps the inner prefix", newRequest(field(typeLocalhost, "localhost/localhost/x")), localhost("localhost/x"), apparmor.SourceField, false},
		{"field runtime default", newRequest(field(typeRuntimeDefault, "")), runtimeDefault, apparmor.SourceField, false},
		{"field unconfined", newRequest(field(typeUnconfined, "")), unconfined, apparmor.SourceField, false},
		{"field over string", newRequest(field(typeUnconfined, ""), deprecated("runtime/default")), unconfined, apparmor.SourceField, false},
		{"field over annotation", newRequest(field(typeRuntimeDefault, ""), annotation("hello", "unconfined")), runtimeDefault, apparmor.SourceField, false},
		{"string", newRequest(deprecated("localhost/" + nginx)), localhost(nginx), apparmor.SourceDeprecated, false},
		{"string over annotation", newRequest(deprecated("runtime/default"), annotation("hello", "localhost/"+nginx)), runtimeDefault, apparmor.SourceDeprecated, false},
		{"annotation", newRequest(annotation("hello", "localhost/"+denyWrite)), localhost(denyWrite), apparmor.SourceAnnotation, false},
		{"annotation of another container", newRequest(annotation("other", "localhost/"+denyWrite)), apparmor.Profile{}, apparmor.SourceNone, false},
		{"empty annotation", newRequest(annotation("hello", "")), apparmor.Profile{}, apparmor.SourceNone, false},
		{
			"annotation with an empty container name is not matched",
			newRequest(func(r *runtimeapi.CreateContainerRequest) { r.Config.Metadata.Name = "" }, annotation("", "foo")),
			apparmor.Profile{}, apparmor.SourceNone, false,
		},
		{"invalid field", newRequest(field(typeLocalhost, "")), apparmor.Profile{}, apparmor.SourceField, true},
		{"invalid string", newRequest(deprecated("foo")), apparmor.Profile{}, apparmor.SourceDeprecated, true},
		{"invalid annotation", newRequest(annotation("hello", "foo/bar")), apparmor.Profile{}, apparmor.SourceAnnotation, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, src, err := apparmor.Resolve(tt.req)
			if (err != nil) != tt.wantErr {
				t.Fatalf("error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				var inv *apparmor.InvalidError
				if !errors.As(err, &inv) {
					t.Errorf("error is a %T, want *apparmor.InvalidError", err)
				}
			}
			if p != tt.want || src != tt.wantSource {
				t.Errorf("Resolve = %#v, %q; want %#v, %q", p, src, tt.want, tt.wantSource)
			}
		})
	}
}

func TestTargetOf(t *testing.T) {
	labelsOnly := newRequest()
	labelsOnly.Config.Metadata = nil
	labelsOnly.SandboxConfig = nil

	mixed := newRequest(pod("hello-apparmor-2"))
	mixed.Config.Labels["io.kubernetes.pod.name"] = "stale-label"
	mixed.SandboxConfig.Metadata.Namespace = ""
	mixed.Config.Labels["io.kubernetes.pod.namespace"] = "kube-system"

	tests := []struct {
		name string
		req  *runtimeapi.CreateContainerRequest
		want apparmor.Target
	}{
		{"metadata", newRequest(pod("hello-apparmor-2")), apparmor.Target{Namespace: "default", Pod: "hello-apparmor-2", Container: "hello"}},
		{"labels when metadata is missing", labelsOnly, apparmor.Target{Namespace: "default", Pod: "hello-apparmor", Container: "hello"}},
		{"metadata wins, labels fill gaps", mixed, apparmor.Target{Namespace: "kube-system", Pod: "hello-apparmor-2", Container: "hello"}},
		{"empty request", &runtimeapi.CreateContainerRequest{}, apparmor.Target{}},
		{"nil request", nil, apparmor.Target{}},
	}
	for _, tt := range tests {
		if got := apparmor.TargetOf(tt.req); got != tt.want {
			t.Errorf("%s: TargetOf = %+v, want %+v", tt.name, got, tt.want)
		}
	}
}

// FuzzResolve builds requests from fuzzed fields. Invariants: no panic; an
// error is an *InvalidError and Decide turns it into InvalidArgument; an
// accepted profile round-trips through its reference; a forwarded request
// resolves to the same profile from its field and needs no further change.
func FuzzResolve(f *testing.F) {
	f.Add(true, int32(2), denyWrite, "", "", "hello")
	f.Add(true, int32(2), "localhost/"+denyWrite, "localhost/"+allowWrite, "", "hello")
	f.Add(true, int32(0), "x", "", "", "hello")
	f.Add(false, int32(0), "", "unconfined", "localhost/"+nginx, "hello")
	f.Add(false, int32(0), "", "", "localhost/"+nginx, "hello")
	f.Add(false, int32(0), "", "", " localhost/x", "")
	f.Add(true, int32(7), "", "", "", "hello")
	f.Fuzz(func(t *testing.T, hasField bool, typ int32, ref, str, ann, container string) {
		req := newRequest(deprecated(str), annotation(container, ann))
		req.Config.Metadata.Name = container
		if hasField {
			req.Config.Linux.SecurityContext.Apparmor = &runtimeapi.SecurityProfile{
				ProfileType: runtimeapi.SecurityProfile_ProfileType(typ), LocalhostRef: ref,
			}
		}
		p, src, err := apparmor.Resolve(req)
		if err != nil {
			var inv *apparmor.InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("Resolve error %v is a %T", err, err)
			}
			_, derr := apparmor.Decide(req, loadedHost(), nil)
			if st, _ := status.FromError(derr); st.Code() != codes.InvalidArgument {
				t.Fatalf("Decide of an invalid request: %v, want InvalidArgument", derr)
			}
			return
		}
		if p.Type == apparmor.None {
			if src != apparmor.SourceNone {
				t.Fatalf("None from source %q", src)
			}
			return
		}
		if back, err := apparmor.ParseReference(p.String()); err != nil || back != p {
			t.Fatalf("profile %#v does not round-trip: %#v, %v", p, back, err)
		}
		snap := loadedHost()
		if p.Type == apparmor.Localhost {
			snap.Profiles[p.Name] = apparmor.ModeEnforce
		}
		d, err := apparmor.Decide(req, snap, nil)
		if err != nil {
			t.Fatalf("Decide of %#v on a host that has it loaded: %v", p, err)
		}
		if d.Profile != p || d.Source != src {
			t.Fatalf("Decide = %+v, Resolve = %#v from %q", d, p, src)
		}
		p2, src2, err := apparmor.Resolve(req)
		if err != nil || p2 != p || src2 != apparmor.SourceField {
			t.Fatalf("forwarded request resolves to %#v from %q (%v), want %#v from the field", p2, src2, err, p)
		}
		if again, err := apparmor.Decide(req, snap, nil); err != nil || again.Modified {
			t.Fatalf("second Decide = %+v, %v; want unmodified", again, err)
		}
	})
}
