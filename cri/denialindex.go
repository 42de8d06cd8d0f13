package cri

import (
	"container/list"
	"strings"
	"unique"

	"github.com/armorshim/armorshim/apparmor"
)

// Bounds of the denial index.
const (
	// maxIndexed containers are remembered; past it the least recently
	// used is forgotten.
	maxIndexed = 8192
	// maxIDLen and maxNameLen bound what is stored of an ID and of a
	// namespace, pod or container name (Kubernetes names fit in 253).
	maxIDLen   = 256
	maxNameLen = 253
)

// indexed is what the index knows of one container.
type indexed struct {
	id, sandbox string
	target      apparmor.Target
	profile     string // the profile it was started under (the root of a label); "" if unknown or unconfined
	running     bool
	// named: target holds the runtime's names; false for a container the
	// runtime did not know (target "unknown"), remembered so that its next
	// denial asks nothing.
	named bool
	elem  *list.Element
}

// denialIndex maps container IDs to what attributing a denial needs, kept
// current from the container and sandbox calls armorshim relays. Every
// operation costs the same whatever its size; it holds at most maxIndexed
// containers. It is not safe for concurrent use.
type denialIndex struct {
	lru       *list.List // of *indexed, most recently used first
	byID      map[string]*indexed
	bySandbox map[string]map[*indexed]struct{}
	// running holds, by profile, the running containers confined by it.
	running map[string]map[*indexed]struct{}
}

func newDenialIndex() *denialIndex {
	return &denialIndex{
		lru:       list.New(),
		byID:      map[string]*indexed{},
		bySandbox: map[string]map[*indexed]struct{}{},
		running:   map[string]map[*indexed]struct{}{},
	}
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// put records a container, replacing what was known of it.
func (x *denialIndex) put(id, sandbox string, t apparmor.Target, profile string, running, named bool) {
	if id == "" || len(id) > maxIDLen {
		return
	}
	if len(sandbox) > maxIDLen {
		sandbox = ""
	}
	x.remove(id)
	if profile == apparmor.UnconfinedRef {
		profile = ""
	}
	profile, _, _ = strings.Cut(profile, "//") // a child profile or hat of it
	c := &indexed{
		id: id, sandbox: sandbox, named: named,
		target: apparmor.Target{
			Namespace: clip(t.Namespace, maxNameLen), Pod: clip(t.Pod, maxNameLen), Container: clip(t.Container, maxNameLen),
		},
		// Profiles are few and shared by many containers: keep one copy.
		profile: unique.Make(profile).Value(),
	}
	c.elem = x.lru.PushFront(c)
	x.byID[id] = c
	if sandbox != "" {
		add(x.bySandbox, sandbox, c)
	}
	x.setRunning(c, running)
	for x.lru.Len() > maxIndexed {
		x.remove(x.lru.Back().Value.(*indexed).id)
	}
}

func add(m map[string]map[*indexed]struct{}, key string, c *indexed) {
	set := m[key]
	if set == nil {
		set = map[*indexed]struct{}{}
		m[key] = set
	}
	set[c] = struct{}{}
}

func del(m map[string]map[*indexed]struct{}, key string, c *indexed) {
	if set := m[key]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(m, key)
		}
	}
}

func (x *denialIndex) setRunning(c *indexed, running bool) {
	if c.profile != "" && c.running != running {
		if running {
			add(x.running, c.profile, c)
		} else {
			del(x.running, c.profile, c)
		}
	}
	c.running = running
}

// started and stopped follow StartContainer and StopContainer.
func (x *denialIndex) started(id string) { x.setState(id, true) }
func (x *denialIndex) stopped(id string) { x.setState(id, false) }

func (x *denialIndex) setState(id string, running bool) {
	if c := x.byID[id]; c != nil {
		x.setRunning(c, running)
		x.lru.MoveToFront(c.elem)
	}
}

// remove forgets a container (RemoveContainer).
func (x *denialIndex) remove(id string) {
	c := x.byID[id]
	if c == nil {
		return
	}
	x.setRunning(c, false)
	if c.sandbox != "" {
		del(x.bySandbox, c.sandbox, c)
	}
	x.lru.Remove(c.elem)
	delete(x.byID, id)
}

// sandboxStopped marks the containers of a sandbox stopped
// (StopPodSandbox stops them all).
func (x *denialIndex) sandboxStopped(sandbox string) {
	for c := range x.bySandbox[sandbox] {
		x.setRunning(c, false)
	}
}

// sandboxRemoved forgets the containers of a sandbox (RemovePodSandbox
// removes them all).
func (x *denialIndex) sandboxRemoved(sandbox string) {
	for c := range x.bySandbox[sandbox] {
		x.remove(c.id)
	}
}

// get returns what is known of container id.
func (x *denialIndex) get(id string) (*indexed, bool) {
	c := x.byID[id]
	if c == nil {
		return nil, false
	}
	x.lru.MoveToFront(c.elem)
	return c, true
}

// only returns the one running container confined by profile, if exactly
// one is. A denial names the profile or hat that denied
// (k8s-web//nginx); containers are indexed by the profile they were
// started under (k8s-web).
func (x *denialIndex) only(profile string) (*indexed, bool) {
	root, _, _ := strings.Cut(profile, "//")
	set := x.running[root]
	if len(set) != 1 {
		return nil, false
	}
	for c := range set {
		return c, true
	}
	return nil, false
}
