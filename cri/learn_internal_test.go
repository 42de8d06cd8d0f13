package cri

import (
	"context"
	"testing"
	"time"

	"github.com/armorshim/armorshim/apparmor"
)

type stopRecorder struct{ stopped []string }

func (s *stopRecorder) Start(context.Context, apparmor.Learning, apparmor.Target) error { return nil }
func (s *stopRecorder) Stop(profile string) error                                       { s.stopped = append(s.stopped, profile); return nil }
func (s *stopRecorder) Record(string, apparmor.Access, time.Time) (bool, error)         { return false, nil }

// A learning profile whose CreateContainer never came back (the relay
// aborted the call) is removed once orphanAfter has passed; one a created
// container runs under, or one still young, is kept.
func TestLearningSweepsOrphans(t *testing.T) {
	rec := &stopRecorder{}
	l := &learning{Learner: rec, byContainer: map[string]learningContainer{}, loading: map[string]time.Time{}}
	old := time.Now().Add(-orphanAfter - time.Minute)
	l.loading["armorshim-learn.a.u.c.0"] = old
	l.loading["armorshim-learn.b.u.c.0"] = time.Now()
	l.loading["armorshim-learn.c.u.c.0"] = old
	l.byContainer["id-c"] = learningContainer{profile: "armorshim-learn.c.u.c.0"}
	l.sweep()
	if len(rec.stopped) != 1 || rec.stopped[0] != "armorshim-learn.a.u.c.0" {
		t.Errorf("stopped %v, want only the orphan", rec.stopped)
	}
	if _, ok := l.loading["armorshim-learn.b.u.c.0"]; !ok {
		t.Error("a profile still loading was forgotten")
	}
	// created: no longer loading
	l.created("id-b", "armorshim-learn.b.u.c.0", "sb")
	if _, ok := l.loading["armorshim-learn.b.u.c.0"]; ok {
		t.Error("a created container's profile is still loading")
	}
}
