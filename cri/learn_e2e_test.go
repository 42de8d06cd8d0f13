package cri_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/cri"
	"github.com/armorshim/armorshim/host"
	"github.com/armorshim/armorshim/shim"
)

// learnEnv is the chain with learning allowed in namespace "dev": a fake
// apparmor_parser logs what it is asked to load, and securityfs has a
// .remove file.
type learnEnv struct {
	*env
	dir, parserLog string
}

func newLearnEnv(t *testing.T) *learnEnv {
	t.Helper()
	e := &learnEnv{env: &env{backend: startBackend(t)}, dir: t.TempDir()}
	e.sysfs = newFakeSysfs(t, "Y", "cri-containerd.apparmor.d (enforce)")
	e.sysfs.write("kernel/security/apparmor/.remove", "")
	e.parserLog = filepath.Join(e.dir, "parser.log")
	parser := filepath.Join(e.dir, "apparmor_parser")
	if err := os.WriteFile(parser, []byte("#!/bin/sh\necho \"$*\" >>"+e.parserLog+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	e.shim = startArmorshim(t, e.backend.sock, e.sysfs, func(c *shim.Config) {
		c.Denials.AuditNetlink = true // followed, nothing comes in these tests
		c.Profiles.Parser = parser
		c.Learning.Namespaces = []string{"dev"}
		c.Learning.Directory = filepath.Join(e.dir, "learning")
	})
	e.through = dial(t, e.shim.sock)
	e.runtime = runtimeapi.NewRuntimeServiceClient(e.through)
	return e
}

func (e *learnEnv) create(t *testing.T, ns, learn string, sc *runtimeapi.LinuxContainerSecurityContext) (string, error) {
	t.Helper()
	ctx := ctxTimeout(t, 10*time.Second)
	sandbox := &runtimeapi.PodSandboxConfig{Metadata: &runtimeapi.PodSandboxMetadata{Name: "web-1", Namespace: ns, Uid: "uid-" + ns},
		Annotations: map[string]string{}}
	if learn != "" {
		sandbox.Annotations["armorshim.io/learn"] = learn
	}
	sb, err := e.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sandbox})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sb.PodSandboxId, SandboxConfig: sandbox,
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: "app"}, Image: &runtimeapi.ImageSpec{Image: "busybox"},
			Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: sc}}})
	return resp.GetContainerId(), err
}

// A pod of a namespace the node lists runs under its own learning profile,
// loaded before the container is created and removed with it.
func TestLearningRunsThePodUnderItsLearningProfile(t *testing.T) {
	e := newLearnEnv(t)
	id, err := e.create(t, "dev", "k8s-learned-web", nil)
	if err != nil {
		t.Fatalf("CreateContainer: %v", err)
	}
	const profile = "armorshim-learn.k8s-learned-web.uid-dev.app.0"
	reqs, _ := e.backend.createRequests()
	sc := reqs[len(reqs)-1].GetConfig().GetLinux().GetSecurityContext()
	if sc.GetApparmor().GetProfileType() != runtimeapi.SecurityProfile_Localhost || sc.GetApparmor().GetLocalhostRef() != profile || sc.GetApparmorProfile() != "localhost/"+profile {
		t.Errorf("containerd got %v", sc)
	}
	file := filepath.Join(e.dir, "learning", "k8s-learned-web", profile+".learning")
	log, _ := os.ReadFile(e.parserLog)
	text, _ := os.ReadFile(file)
	if string(log) != "--replace -- "+file+"\n" || !strings.Contains(string(text), "profile "+profile+" flags=(complain,") {
		t.Errorf("parser asked %q to load:\n%s", log, text)
	}
	if _, err := e.runtime.RemoveContainer(ctxTimeout(t, 10*time.Second), &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(e.sysfs.root, "kernel/security/apparmor/.remove")); string(b) != profile {
		t.Errorf(".remove got %q, want the learning profile removed", b)
	}
	// Removing the pod removes the learning profiles of the containers
	// left in it (crictl rmp sends no RemoveContainer).
	e.sysfs.write("kernel/security/apparmor/.remove", "")
	if _, err := e.create(t, "dev", "k8s-learned-web", nil); err != nil {
		t.Fatal(err)
	}
	reqs, _ = e.backend.createRequests()
	if _, err := e.runtime.RemovePodSandbox(ctxTimeout(t, 10*time.Second), &runtimeapi.RemovePodSandboxRequest{PodSandboxId: reqs[len(reqs)-1].PodSandboxId}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(e.sysfs.root, "kernel/security/apparmor/.remove")); string(b) != profile {
		t.Errorf("after RemovePodSandbox .remove got %q, want the learning profile removed", b)
	}
}

// Elsewhere, learning is refused, and so is a learning profile asked by
// name: it never runs a container of another namespace in complain mode.
func TestLearningRefusedWhereNotAllowed(t *testing.T) {
	e := newLearnEnv(t)
	_, err := e.create(t, "prod", "k8s-learned-web", nil)
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != `Forbidden: armorshim.io/learn: learning a profile is not allowed in namespace "prod" on this node` {
		t.Errorf("learning in prod: %v", err)
	}
	_, err = e.create(t, "prod", "", &runtimeapi.LinuxContainerSecurityContext{Apparmor: &runtimeapi.SecurityProfile{
		ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "armorshim-learn.k8s-learned-web.uid-dev.app.0"}})
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "is reserved") {
		t.Errorf("a learning profile asked by name: %v", err)
	}
	if b, _ := os.ReadFile(e.parserLog); len(b) != 0 {
		t.Errorf("parser ran: %s", b)
	}
}

// The kernel's ALLOWED records of a learning profile (and of the child
// profiles the kernel makes for what it runs) are what it learns; they are
// no denials, and ALLOWED records of other complain-mode profiles are
// neither learned nor counted.
func TestLearningRecordsTheKernelsAllowedRecords(t *testing.T) {
	b := denialBackend(t, nil)
	d, reg := newDenials(t, b, cgroups{})
	store := &host.LearningStore{Dir: t.TempDir(), MaxAccesses: 100}
	cri.New(cri.Backends{}, &apparmor.Snapshot{Enabled: true}, nil, cri.WithDenials(d), cri.WithLearning(store))
	// The session, as Start writes it (no parser here).
	if err := os.MkdirAll(filepath.Join(store.Dir, "web"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(store.Dir, "web", "sessions.jsonl"), []byte(`{"profile":"armorshim-learn.web.u.app.0","namespace":"dev","pod":"web-1","container":"app","started":"2026-12-05T10:00:00Z"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// armorshim loaded that learning profile (records of others are forged)
	if err := os.WriteFile(filepath.Join(store.Dir, "web", "armorshim-learn.web.u.app.0.learning"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	const p = `6,2201,98000000,-;audit: type=1400 audit(1764900000.100:%d): apparmor="%s" operation="open" class="file" profile="%s" name="%s" pid=4242 comm="cat" requested_mask="r" denied_mask="r" fsuid=0 ouid=0`
	lines := []string{
		fmt.Sprintf(p, 1, "ALLOWED", "armorshim-learn.web.u.app.0", "/etc/app.conf"),
		fmt.Sprintf(p, 2, "ALLOWED", "armorshim-learn.web.u.app.0//null-/bin/helper", "/etc/helper.conf"),
		fmt.Sprintf(p, 3, "ALLOWED", "k8s-nginx", "/etc/nginx.conf"),
		fmt.Sprintf(p, 5, "ALLOWED", "armorshim-learn.web.other.app.0", "/etc/forged.conf"), // not loaded by armorshim
		fmt.Sprintf(p, 4, "DENIED", "k8s-apparmor-example-deny-write", "/tmp/test"),
	}
	if err := d.Run(context.Background(), strings.NewReader(strings.Join(lines, "\n")+"\n")); err != nil {
		t.Fatal(err)
	}
	accesses, _, err := host.ReadLearned(store.Dir, "web")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, a := range accesses {
		names = append(names, a.Name)
	}
	if strings.Join(names, " ") != "/etc/app.conf /etc/helper.conf" {
		t.Errorf("learned %v", names)
	}
	total := 0.0
	for _, prof := range []string{"armorshim-learn.web.u.app.0", "k8s-nginx", "k8s-apparmor-example-deny-write"} {
		total += metricValue(t, reg, "armorshim_apparmor_denials_total", map[string]string{"profile": prof})
	}
	if total != 1 {
		t.Errorf("%v denials counted, want the one DENIED record", total)
	}
}
