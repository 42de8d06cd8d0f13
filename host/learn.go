package host

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/armorshim/armorshim/apparmor"
)

// LearningStore keeps what containers learning a profile did: it loads
// each container's learning profile (complain mode), appends the distinct
// accesses the kernel's ALLOWED records report to
// <Dir>/<name>/accesses.jsonl and each learning container to
// <Dir>/<name>/sessions.jsonl, and removes the learning profile from the
// kernel when the container is gone. ReadLearned reads them back for
// `armorshim profile generate`, which writes the profile into Dir too:
// never into the profile directory armorshim enforces.
type LearningStore struct {
	Dir string
	// Parser is the apparmor_parser command; Securityfs the AppArmor
	// directory of securityfs (for .remove).
	Parser, Securityfs string
	// MaxAccesses bounds the distinct accesses kept per learned profile;
	// MaxActive the containers learning at once.
	MaxAccesses, MaxActive int

	mu     sync.Mutex
	active map[string]bool // learning profiles loaded (or being loaded)
	seen   map[string]map[apparmor.Access]bool
	// dropped: distinct accesses not kept, past MaxAccesses (at most
	// MaxAccesses of them remembered; their count before a restart is
	// droppedBefore).
	dropped       map[string]map[apparmor.Access]bool
	droppedBefore map[string]int
	// failed: the last write failed; errs counts records not written.
	failed bool
	errs   uint64
}

// Session is one container that learned (a line of sessions.jsonl).
type Session struct {
	Profile   string    `json:"profile"`
	Namespace string    `json:"namespace"`
	Pod       string    `json:"pod"`
	Container string    `json:"container"`
	Started   time.Time `json:"started"`
}

// learnedAccess is a line of accesses.jsonl.
type learnedAccess struct {
	At     time.Time       `json:"at"`
	Access apparmor.Access `json:"access"`
}

// ErrTooManyLearning refuses a learning container past MaxActive.
var ErrTooManyLearning = errors.New("too many containers are learning on this node")

func (s *LearningStore) init() {
	if s.active == nil {
		s.active, s.seen = map[string]bool{}, map[string]map[apparmor.Access]bool{}
		s.dropped, s.droppedBefore = map[string]map[apparmor.Access]bool{}, map[string]int{}
	}
}

// Start loads l's learning profile in complain mode and records the
// session. It is called before the container is created.
func (s *LearningStore) Start(ctx context.Context, l apparmor.Learning, t apparmor.Target) error {
	s.mu.Lock()
	s.init()
	reserved := !s.active[l.Profile.Name]
	if reserved && s.MaxActive > 0 && len(s.active) >= s.MaxActive {
		s.mu.Unlock()
		return fmt.Errorf("%w (%d)", ErrTooManyLearning, s.MaxActive)
	}
	s.active[l.Profile.Name] = true // its place, while it loads
	s.mu.Unlock()
	err := s.start(ctx, l, t)
	if err != nil && reserved {
		s.mu.Lock()
		delete(s.active, l.Profile.Name)
		s.mu.Unlock()
	}
	return err
}

func (s *LearningStore) start(ctx context.Context, l apparmor.Learning, t apparmor.Target) error {
	dir := filepath.Join(s.Dir, l.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	file := filepath.Join(dir, l.Profile.Name+".learning")
	if err := os.WriteFile(file, []byte(apparmor.LearningProfile(l.Profile.Name)), 0o600); err != nil {
		return err
	}
	// The session first: a profile loaded is never left without one.
	line, _ := json.Marshal(Session{Profile: l.Profile.Name, Namespace: t.Namespace, Pod: t.Pod, Container: t.Container, Started: time.Now().UTC()})
	if err := appendLine(filepath.Join(dir, "sessions.jsonl"), line); err != nil {
		return err
	}
	parser := s.Parser
	if parser == "" {
		parser = "apparmor_parser"
	}
	out, err := exec.CommandContext(ctx, parser, "--replace", "--", file).CombinedOutput()
	if err != nil {
		return fmt.Errorf("apparmor_parser: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Stop removes a learning profile from the kernel (its container is gone);
// what it learned stays.
func (s *LearningStore) Stop(profile string) error {
	s.mu.Lock()
	s.init()
	delete(s.active, profile)
	s.mu.Unlock()
	f, err := os.OpenFile(filepath.Join(s.Securityfs, ".remove"), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteString(profile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// Active returns the learning profiles loaded.
func (s *LearningStore) Active() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for p := range s.active {
		out = append(out, p)
	}
	sort.Strings(out)
	return out
}

// Record keeps an access a learning profile allowed; it reports whether
// it was new. label is the record's profile (a learning profile or one of
// its children).
func (s *LearningStore) Record(label string, a apparmor.Access, at time.Time) (bool, error) {
	name, ok := apparmor.LearnedName(label)
	if !ok || apparmor.ValidLearnName(name) != "" {
		return false, nil
	}
	root := apparmor.LabelRoot(label)
	// A peer or an exec target in the learning profile (or the children
	// the kernel made of it) is the profile itself, whichever container.
	if n, ok := apparmor.LearnedName(a.Peer); ok && n == name {
		a.Peer = apparmor.SelfPeer
	}
	if n, ok := apparmor.LearnedName(a.Target); ok && n == name {
		a.Target = apparmor.SelfPeer
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.init()
	if !s.active[root] {
		// Only profiles armorshim loaded: before a restart, those it wrote.
		if _, err := os.Stat(filepath.Join(s.Dir, name, root+".learning")); err != nil {
			return false, nil
		}
	}
	seen := s.seen[name]
	if seen == nil {
		seen = s.loadSeen(name)
		s.seen[name] = seen
	}
	if seen[a] {
		return false, nil
	}
	if s.MaxAccesses > 0 && len(seen) >= s.MaxAccesses {
		d := s.dropped[name]
		if d == nil {
			d = map[apparmor.Access]bool{}
			s.dropped[name] = d
		}
		if d[a] || len(d) >= s.MaxAccesses {
			return false, nil
		}
		d[a] = true
		n := s.droppedBefore[name] + len(d)
		// the count on disk, for the profile's header: once per distinct access
		writeAtomic(filepath.Join(s.Dir, name, "dropped"), []byte(fmt.Sprintf("%d\n", n)))
		if len(d) == 1 {
			return false, fmt.Errorf("profile %q: %d distinct accesses learned, the most kept; later ones are dropped", name, s.MaxAccesses)
		}
		return false, nil
	}
	line, err := json.Marshal(learnedAccess{At: at.UTC(), Access: a})
	if err != nil {
		return false, err
	}
	if err := appendLine(filepath.Join(s.Dir, name, "accesses.jsonl"), line); err != nil {
		s.errs++
		if !s.failed {
			s.failed = true
			return false, err
		}
		return false, nil
	}
	s.failed = false
	seen[a] = true
	return true, nil
}

// loadSeen reads what was learned before armorshim started (bounded).
func (s *LearningStore) loadSeen(name string) map[apparmor.Access]bool {
	seen := map[apparmor.Access]bool{}
	accesses, from, err := ReadLearned(s.Dir, name)
	if err != nil {
		return seen
	}
	s.droppedBefore[name] = from.Dropped
	for _, a := range accesses {
		seen[a] = true
	}
	return seen
}

// appendLine appends line and a newline in one write: a record is whole
// or, when the write fails, cut back to where it started.
func appendLine(path string, line []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if _, err := f.Write(append(line, '\n')); err != nil {
		f.Truncate(st.Size())
		return err
	}
	return nil
}

// maxLineBytes bounds a line of the learned files.
const maxLineBytes = 64 << 10

// ReadLearned reads what containers learning name recorded under dir: the
// distinct accesses, and where and when they come from.
func ReadLearned(dir, name string) ([]apparmor.Access, apparmor.LearnedFrom, error) {
	var from apparmor.LearnedFrom
	if why := apparmor.ValidLearnName(name); why != "" {
		return nil, from, fmt.Errorf("%q: %s", name, why)
	}
	base := filepath.Join(dir, name)
	pods := map[string]bool{}
	err := readLines(filepath.Join(base, "sessions.jsonl"), func(b []byte) {
		var s Session
		if json.Unmarshal(b, &s) != nil {
			return
		}
		pods[fmt.Sprintf("%s/%s (container %s)", s.Namespace, s.Pod, s.Container)] = true
		if from.First.IsZero() || s.Started.Before(from.First) {
			from.First = s.Started
		}
	})
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, from, fmt.Errorf("nothing learned for %q in %s: no pod has learned it on this node", name, dir)
		}
		return nil, from, err
	}
	for p := range pods {
		from.Pods = append(from.Pods, p)
	}
	sort.Strings(from.Pods)
	var out []apparmor.Access
	seen := map[apparmor.Access]bool{}
	err = readLines(filepath.Join(base, "accesses.jsonl"), func(b []byte) {
		var l learnedAccess
		if json.Unmarshal(b, &l) != nil {
			return
		}
		from.Records++
		if l.At.After(from.Last) {
			from.Last = l.At
		}
		if !seen[l.Access] {
			seen[l.Access] = true
			out = append(out, l.Access)
		}
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, from, err
	}
	if from.Last.Before(from.First) {
		from.Last = from.First
	}
	if b, err := os.ReadFile(filepath.Join(base, "dropped")); err == nil {
		fmt.Sscan(string(b), &from.Dropped)
	}
	return out, from, nil
}

func readLines(path string, fn func([]byte)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), maxLineBytes)
	for sc.Scan() {
		fn(sc.Bytes())
	}
	return sc.Err()
}
