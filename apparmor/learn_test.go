package apparmor

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

func learnRequest(ns string, annotations map[string]string) *runtimeapi.CreateContainerRequest {
	return &runtimeapi.CreateContainerRequest{
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "web", Attempt: 2},
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
				Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_RuntimeDefault}}}},
		SandboxConfig: &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "web-1", Namespace: ns, Uid: "0f3c2a4e-5b6d"},
			Annotations: annotations},
	}
}

func TestDecideLearning(t *testing.T) {
	pol := &Policy{LearnNamespaces: []string{"dev"}, RequireEnforce: true, Allowed: []Profile{{Type: RuntimeDefault}}}
	// Not asked: nothing to decide here.
	if _, _, asked, err := DecideLearning(learnRequest("dev", nil), pol); asked || err != nil {
		t.Fatalf("no annotation: asked %v, %v", asked, err)
	}
	// Asked where the node allows it: the request runs under its own
	// learning profile, whatever allowedProfiles and requireEnforce say.
	req := learnRequest("dev", map[string]string{LearnAnnotation: "k8s-learned-web"})
	l, dec, asked, err := DecideLearning(req, pol)
	if !asked || err != nil {
		t.Fatalf("allowed: asked %v, %v", asked, err)
	}
	want := "armorshim-learn.k8s-learned-web.0f3c2a4e-5b6d.web.2"
	if l.Name != "k8s-learned-web" || l.Profile.Name != want || dec.Source != SourceLearning || !dec.Modified {
		t.Errorf("learning %+v, decision %+v", l, dec)
	}
	sc := req.Config.Linux.SecurityContext
	if sc.Apparmor.ProfileType != runtimeapi.SecurityProfile_Localhost || sc.Apparmor.LocalhostRef != want || sc.ApparmorProfile != "localhost/"+want {
		t.Errorf("forwarded security context %v", sc)
	}
	if name, ok := LearnedName(want + "//null-/bin/helper"); !ok || name != "k8s-learned-web" {
		t.Errorf("LearnedName = %q, %v", name, ok)
	}
	// Refused: a namespace not listed, a node that lists none, a bad name.
	for _, c := range []struct {
		ns, name string
		pol      *Policy
		msg      string
	}{
		{"prod", "k8s-learned-web", pol, `Forbidden: armorshim.io/learn: learning a profile is not allowed in namespace "prod" on this node`},
		{"dev", "k8s-learned-web", &Policy{}, `Forbidden: armorshim.io/learn: learning a profile is not allowed in namespace "dev" on this node`},
		{"dev", "Web Profile", pol, `Forbidden: armorshim.io/learn: "Web Profile" cannot name a profile: the name may hold only`},
		{"dev", "armorshim-learn.x", pol, `the name is reserved`},
	} {
		_, _, asked, err := DecideLearning(learnRequest(c.ns, map[string]string{LearnAnnotation: c.name}), c.pol)
		r, ok := err.(*Refusal)
		if !asked || !ok || r.Code != codes.PermissionDenied || !strings.Contains(r.Message, c.msg) {
			t.Errorf("%s/%s: asked %v, %v; want %q", c.ns, c.name, asked, err, c.msg)
		}
	}
}

// No pod may ask for a learning profile itself: it would run in complain
// mode under another container's profile.
func TestLearningProfilesAreReserved(t *testing.T) {
	req := learnRequest("prod", nil)
	req.Config.Linux.SecurityContext.Apparmor = &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost,
		LocalhostRef: "armorshim-learn.k8s-learned-web.0f3c2a4e-5b6d.web.2"}
	host := &Snapshot{Enabled: true, Profiles: map[string]Mode{"armorshim-learn.k8s-learned-web.0f3c2a4e-5b6d.web.2": ModeComplain}}
	_, err := Decide(req, host, &Policy{})
	r, ok := err.(*Refusal)
	if !ok || r.Reason != ReasonForbidden || !strings.Contains(r.Message, "is reserved") {
		t.Fatalf("Decide = %v", err)
	}
	// Attestation expects the learning profile in complain mode even where
	// enforce mode is required.
	e, _ := Expect(Profile{Type: Localhost, Name: "armorshim-learn.a.b.c.0"}, false, &Policy{RequireEnforce: true})
	if m := e.Check("armorshim-learn.a.b.c.0 (complain)", nil); m != "" {
		t.Errorf("learning container in complain mode: %s", m)
	}
}

func TestGenerateProfile(t *testing.T) {
	accesses := []Access{
		{Class: "file", Operation: "open", Name: "/etc/app/app.conf", Mask: "r"},
		{Class: "file", Operation: "file_mmap", Name: "/usr/lib/libc.so.6", Mask: "rm"},
		{Class: "file", Operation: "mkdir", Name: "/data/", Mask: "c"},
		{Class: "file", Operation: "open", Name: "/data/out.log", Mask: "wc"},
		{Class: "file", Operation: "open", Name: "/data/out.log", Mask: "a"},
		{Class: "file", Operation: "exec", Name: "/usr/local/bin/helper", Mask: "x"},
		{Class: "file", Operation: "open", Name: "/proc/4242/status", Mask: "r"},
		{Class: "file", Operation: "open", Name: "/proc/4242/task/4250/stat", Mask: "r"},
		{Class: "file", Operation: "open", Name: "/tmp/tmp.a8Xk2", Mask: "wc"},
		{Class: "file", Operation: "open", Name: "/tmp/tmp.Qq91b", Mask: "wc"},
		{Class: "file", Operation: "open", Name: "/tmp/tmp.Zz0fe", Mask: "wc"},
		{Class: "file", Operation: "open", Name: "/srv/my file", Mask: "r"},
		{Class: "cap", Operation: "capable", Capname: "net_bind_service"},
		{Class: "net", Operation: "create", Family: "inet", SockType: "stream", Mask: "create"},
		{Class: "net", Operation: "connect", Family: "inet", SockType: "stream", Mask: "connect"},
		{Class: "signal", Operation: "signal", Mask: "send", Signal: "term", Peer: SelfPeer},
		{Class: "ptrace", Operation: "ptrace", Mask: "read", Peer: "unconfined"},
	}
	from := LearnedFrom{Pods: []string{"dev/web-1 (container web)"}, First: time.Date(2026, 12, 5, 10, 0, 0, 0, time.UTC),
		Last: time.Date(2026, 12, 5, 10, 30, 0, 0, time.UTC), Records: 40}
	got := GenerateProfile("k8s-learned-web", accesses, from)
	for _, want := range []string{
		"# Learned from: dev/web-1 (container web)\n",
		"# Between 2026-12-05T10:00:00Z and 2026-12-05T10:30:00Z (30m0s), 40 distinct accesses.\n",
		"abi <abi/3.0>,\n\ninclude <tunables/global>\n",
		"profile k8s-learned-web flags=(attach_disconnected,mediate_deleted) {\n  include <abstractions/base>\n",
		"  capability net_bind_service,\n",
		"  network inet stream,\n",
		"  signal (send) set=(term) peer=k8s-learned-web,\n",
		"  ptrace (read) peer=unconfined,\n",
		"  /etc/app/app.conf r,\n",
		"  /usr/lib/libc.so.6 rm,\n",
		"  /data/ w,\n",
		"  /data/out.log w,\n", // w covers append
		"  /usr/local/bin/helper ix,\n",
		"  @{PROC}/@{pid}/status r,\n",
		"  @{PROC}/@{pid}/task/@{tid}/stat r,\n",
		"  /tmp/tmp.* w,\n",
		"  \"/srv/my file\" r,\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "tmp.a8Xk2") || strings.Count(got, "network inet stream,") != 1 {
		t.Errorf("not collapsed or not merged:\n%s", got)
	}
	if !strings.HasSuffix(got, "}\n") {
		t.Errorf("unterminated:\n%s", got)
	}
	// Two files are no pattern: each keeps its own rule.
	got = GenerateProfile("p", []Access{{Name: "/tmp/a1", Mask: "r", Operation: "open"}, {Name: "/tmp/a2", Mask: "r", Operation: "open"}}, LearnedFrom{})
	if !strings.Contains(got, "/tmp/a1 r,") || !strings.Contains(got, "/tmp/a2 r,") {
		t.Errorf("two files collapsed:\n%s", got)
	}
}

// File names are written as AppArmor reads them: its pattern characters
// escaped (a Next.js page [id].js is that file, not a character class),
// names with control characters left out; mount operations by kind.
func TestGenerateProfileEscapesAndMounts(t *testing.T) {
	got := GenerateProfile("p", []Access{
		{Class: "file", Operation: "open", Name: "/app/pages/[id].js", Mask: "r"},
		{Class: "file", Operation: "open", Name: "/app/a*b?{c}@d^e", Mask: "r"},
		{Class: "file", Operation: "open", Name: `/app/q"uote\`, Mask: "r"},
		{Class: "file", Operation: "open", Name: "/app/new\nline", Mask: "r"},
		{Class: "file", Operation: "open", Name: "/proc/12/fd/[x]", Mask: "r"},
		{Class: "mount", Operation: "mount", FsType: "tmpfs", SrcName: "tmpfs", Name: "/mnt/"},
		{Class: "mount", Operation: "umount", Name: "/mnt/"},
		{Class: "mount", Operation: "pivotroot", Name: "/new/"},
		{Class: "mount", Operation: "mount", Flags: "rw, remount", Name: "/srv/"},
		{Class: "mount", Operation: "umount", Name: "/mnt/\x01"}, // no pattern: no rule, never a bare umount
		{Class: "file", Operation: "open", Name: "/go/pkg/mod/github.com/!burnt!sushi/toml", Mask: "r"},
	}, LearnedFrom{})
	for _, want := range []string{
		`  "/app/pages/\[id\].js" r,`,
		`  "/app/a\*b\?\{c\}\@d\^e" r,`,
		`  "/app/q\042uote\134" r,`,
		`  "@{PROC}/@{pid}/fd/\[x\]" r,`,
		"  mount fstype=tmpfs tmpfs -> /mnt/,",
		"  umount /mnt/,",
		"  pivot_root /new/,",
		"  mount options=(rw,remount) -> /srv/,",
		`  "/go/pkg/mod/github.com/\!burnt\!sushi/toml" r,`,
	} {
		if !strings.Contains(got, want+"\n") {
			t.Errorf("no %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "line") || strings.Contains(got, "umount,") || strings.Count(got, "umount") != 1 {
		t.Errorf("a name with a control character was written, or its rule without it:\n%s", got)
	}
}

// Files are collapsed only where the workload made them in a temporary
// directory or one it made: three files it created in /etc never make
// /etc/sha*, which would allow /etc/shadow.
func TestGenerateProfileCollapsesOnlyItsOwnFiles(t *testing.T) {
	var accesses []Access
	for _, n := range []string{"/etc/sha1", "/etc/sha2", "/etc/sha3", "/work/out.1", "/work/out.2", "/work/out.3", "/var/log/app.1", "/var/log/app.2", "/var/log/app.3"} {
		accesses = append(accesses, Access{Class: "file", Operation: "open", Name: n, Mask: "wc"})
	}
	accesses = append(accesses, Access{Class: "file", Operation: "mkdir", Name: "/work/", Mask: "c"},
		Access{Class: "file", Operation: "open", Name: "/tmp/r1.x", Mask: "r"}, Access{Class: "file", Operation: "open", Name: "/tmp/r2.x", Mask: "r"},
		Access{Class: "file", Operation: "open", Name: "/tmp/r3.x", Mask: "r"})
	got := GenerateProfile("p", accesses, LearnedFrom{})
	for _, want := range []string{"  /work/out.* w,\n", "  /etc/sha1 w,\n", "  /var/log/app.3 w,\n", "  /tmp/r1.x r,\n"} {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "/etc/sha*") || strings.Contains(got, "/var/log/app.*") || strings.Contains(got, "/tmp/r*") {
		t.Errorf("collapsed files the workload did not make where it makes them:\n%s", got)
	}
}
