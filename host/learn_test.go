package host

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/armorshim/armorshim/apparmor"
)

func TestLearningStore(t *testing.T) {
	dir, secfs := t.TempDir(), t.TempDir()
	parser, log := fakeParser(t)
	if err := os.WriteFile(filepath.Join(secfs, ".remove"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s := &LearningStore{Dir: dir, Parser: parser, Securityfs: secfs, MaxActive: 2, MaxAccesses: 3}
	l := apparmor.Learning{Name: "web", Profile: apparmor.Profile{Type: apparmor.Localhost, Name: apparmor.LearningProfileName("web", "uid-1", "app", 0)}}
	if err := s.Start(context.Background(), l, apparmor.Target{Namespace: "dev", Pod: "web-1", Container: "app"}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "web", l.Profile.Name+".learning")
	b, _ := os.ReadFile(log)
	text, _ := os.ReadFile(file)
	if string(b) != "--replace -- "+file+"\n" || !strings.Contains(string(text), "profile "+l.Profile.Name+" flags=(complain,") {
		t.Errorf("parser run: %s\n%s", b, text)
	}
	// Distinct accesses are kept once, up to the bound; other profiles'
	// records are not kept.
	at := time.Now().UTC().Truncate(time.Second).Add(time.Minute) // after the session started
	a := apparmor.Access{Class: "file", Operation: "open", Name: "/etc/app.conf", Mask: "r"}
	for i, c := range []struct {
		label string
		a     apparmor.Access
		isNew bool
	}{
		{l.Profile.Name, a, true},
		{l.Profile.Name + "//null-/bin/helper", a, false},
		{"k8s-nginx", apparmor.Access{Name: "/x", Mask: "r"}, false},
		{l.Profile.Name, apparmor.Access{Class: "cap", Capname: "chown"}, true},
		{l.Profile.Name, apparmor.Access{Class: "net", Family: "inet", SockType: "stream"}, true},
	} {
		isNew, err := s.Record(c.label, c.a, at.Add(time.Duration(i)*time.Minute))
		if isNew != c.isNew || err != nil {
			t.Errorf("record %d: new %v, %v; want %v", i, isNew, err, c.isNew)
		}
	}
	if isNew, err := s.Record(l.Profile.Name, apparmor.Access{Class: "cap", Capname: "kill"}, at); isNew || err == nil || !strings.Contains(err.Error(), "3 distinct accesses") {
		t.Errorf("past the bound: new %v, %v", isNew, err)
	}
	// the same dropped access again, and another: two distinct dropped
	s.Record(l.Profile.Name, apparmor.Access{Class: "cap", Capname: "kill"}, at)
	s.Record(l.Profile.Name, apparmor.Access{Class: "cap", Capname: "setuid"}, at)
	accesses, from, err := ReadLearned(dir, "web")
	if err != nil {
		t.Fatal(err)
	}
	if len(accesses) != 3 || accesses[0] != a || from.Records != 3 || len(from.Pods) != 1 || from.Pods[0] != "dev/web-1 (container app)" ||
		!from.Last.Equal(at.Add(4*time.Minute)) || from.First.IsZero() || from.Dropped != 2 {
		t.Errorf("ReadLearned: %+v, %+v", accesses, from)
	}
	// A new store (armorshim restarted) does not record twice what is on disk.
	s2 := &LearningStore{Dir: dir, MaxAccesses: 10}
	if isNew, _ := s2.Record(l.Profile.Name, a, at); isNew {
		t.Error("recorded again after a restart")
	}
	// Records of profiles armorshim did not load, or whose name would leave
	// the directory, are not kept.
	for _, label := range []string{"armorshim-learn.web.other-uid.app.0", "armorshim-learn.../../../x.a.b.0", "armorshim-learn.web/../../x.a.b.0"} {
		if isNew, err := s.Record(label, apparmor.Access{Class: "file", Name: "/**", Mask: "rw"}, at); isNew || err != nil {
			t.Errorf("record of %s kept: %v, %v", label, isNew, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "..", "x")); err == nil {
		t.Error("a record wrote outside the learning directory")
	}
	// Past MaxActive containers, no more learning profiles are loaded.
	l2 := l
	l2.Profile.Name = apparmor.LearningProfileName("web", "uid-2", "app", 0)
	if err := s.Start(context.Background(), l2, apparmor.Target{}); err != nil {
		t.Fatal(err)
	}
	l3 := l
	l3.Profile.Name = apparmor.LearningProfileName("web", "uid-3", "app", 0)
	if err := s.Start(context.Background(), l3, apparmor.Target{}); err == nil || !strings.Contains(err.Error(), "too many containers are learning") {
		t.Errorf("third learner: %v", err)
	}
	// Stop removes the profile from the kernel and frees its place.
	if err := s.Stop(l.Profile.Name); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(secfs, ".remove")); string(b) != l.Profile.Name {
		t.Errorf(".remove got %q", b)
	}
	if got := s.Active(); len(got) != 1 || got[0] != l2.Profile.Name {
		t.Errorf("active %v", got)
	}
	if _, _, err := ReadLearned(dir, "nothing"); err == nil || !strings.Contains(err.Error(), "no pod has learned it") {
		t.Errorf("ReadLearned of nothing: %v", err)
	}
}

// A parser that fails leaves the profile unloaded and says why.
func TestLearningStoreParserFails(t *testing.T) {
	s := &LearningStore{Dir: t.TempDir(), Parser: "/bin/false", MaxActive: 1}
	l := apparmor.Learning{Name: "web", Profile: apparmor.Profile{Type: apparmor.Localhost, Name: "armorshim-learn.web.u.c.0"}}
	if err := s.Start(context.Background(), l, apparmor.Target{}); err == nil || !strings.Contains(err.Error(), "apparmor_parser") {
		t.Fatalf("Start = %v", err)
	}
	if len(s.Active()) != 0 {
		t.Error("a profile that failed to load counts as active")
	}
}
