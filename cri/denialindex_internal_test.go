package cri

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/armorshim/armorshim/apparmor"
)

func TestDenialIndexBounded(t *testing.T) {
	x := newDenialIndex()
	long := strings.Repeat("n", 10000)
	for i := range maxIndexed + 100 {
		id := fmt.Sprintf("c%05d", i)
		x.put(id, "sb"+id, apparmor.Target{Namespace: long, Pod: long, Container: long}, "p", true, true)
		if i == maxIndexed-1 {
			x.get("c00000") // used: kept
		}
	}
	if len(x.byID) != maxIndexed || x.lru.Len() != maxIndexed || len(x.bySandbox) != maxIndexed || len(x.running["p"]) != maxIndexed {
		t.Fatalf("index holds %d (lru %d, sandboxes %d, running %d), want %d", len(x.byID), x.lru.Len(), len(x.bySandbox), len(x.running["p"]), maxIndexed)
	}
	if _, ok := x.byID["c00000"]; !ok {
		t.Error("the container used recently was forgotten")
	}
	if _, ok := x.byID["c00001"]; ok {
		t.Error("the least recently used container was kept")
	}
	if c := x.byID["c00000"]; len(c.target.Pod) != maxNameLen {
		t.Errorf("a pod name of %d bytes is stored whole", len(c.target.Pod))
	}
	x.put(strings.Repeat("i", maxIDLen+1), "", apparmor.Target{}, "p", true, true)
	if len(x.byID) != maxIndexed {
		t.Error("an overlong ID was stored")
	}
}

func TestDenialIndexProfiles(t *testing.T) {
	x := newDenialIndex()
	x.put("a", "s", apparmor.Target{Pod: "a"}, "k8s-web//nginx", true, true)
	x.put("u", "s", apparmor.Target{Pod: "u"}, apparmor.UnconfinedRef, true, true)
	if c, ok := x.only("k8s-web//^worker"); !ok || c.id != "a" {
		t.Errorf("a hat of k8s-web: %v, %t; want container a", c, ok)
	}
	if _, ok := x.only(apparmor.UnconfinedRef); ok {
		t.Error("unconfined containers are indexed by profile")
	}
	x.put("a", "s", apparmor.Target{Pod: "a"}, "other", true, true) // replaced
	if _, ok := x.only("k8s-web"); ok || len(x.running) != 1 {
		t.Errorf("a replaced entry is still indexed under its old profile: %v", x.running)
	}
}

func TestRestartDelay(t *testing.T) {
	for failures, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 6: 32 * time.Second, 7: time.Minute, 1000: time.Minute} {
		if got := restartDelay(failures); got != want {
			t.Errorf("restartDelay(%d) = %v, want %v", failures, got, want)
		}
	}
}
