package host

import (
	"bytes"
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
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/apparmor"
)

// ProfileFile is the state of one file of the profile directory.
type ProfileFile struct {
	Name string `json:"file"`
	// Loaded: the last load of this version of the file succeeded.
	Loaded bool `json:"loaded"`
	// Refused says why the file is not trusted (see trust.go); such a file
	// is never given to the parser.
	Refused string `json:"refused,omitempty"`
	// Error is the parser's message for the last failed load.
	Error string `json:"error,omitempty"`
	// Profiles are the profiles the file defines, known after a load when
	// the loader watches the kernel.
	Profiles []string `json:"profiles,omitempty"`
	// Failures counts the failed loads of this version of the file in a
	// row; the next one is at Retry.
	Failures int       `json:"failures,omitempty"`
	Retry    time.Time `json:"retry,omitzero"`
	When     time.Time `json:"when"`
}

// State is loaded, refused or failed.
func (f ProfileFile) State() string {
	switch {
	case f.Refused != "":
		return "refused"
	case f.Loaded:
		return "loaded"
	}
	return "failed"
}

// Loader loads the AppArmor profiles of a directory with apparmor_parser in
// replace mode, and loads each file again when it changes. It loads only
// files that nobody but root can have written (trust.go). A failed load is
// tried again after a delay that grows with each failure (a transient
// "Cannot allocate memory" must not leave the profile out until the file
// changes). Given the kernel's state, it loads a file again when one of its
// profiles is gone from the kernel (apparmor_parser -R, a package upgrade)
// while the file is still there. It never unloads a profile: containers may
// be running under it.
type Loader struct {
	Dir string
	// Parser is the apparmor_parser command, looked up in PATH if bare.
	Parser string
	// Enabled reports whether AppArmor is on; loads are skipped while off.
	Enabled func() bool
	// Kernel, if set, returns the loaded profiles (Reader.Snapshot, which
	// reads them again only when securityfs's revision changes). The
	// loader then asks the parser which profiles each file defines and
	// loads the file again when one is missing.
	Kernel func() *apparmor.Snapshot
	// Timeout bounds one parser run.
	Timeout time.Duration
	// TrustedUID is the owner profile files must have: root (0).
	// Directories may be owned by root or by it. Tests set their own uid.
	TrustedUID uint32
	// Backoff is the delay before retrying a file whose last n loads
	// failed; RetryBackoff if nil.
	Backoff func(n int) time.Duration
	// Now is the clock; time.Now if nil.
	Now func() time.Time
	// StatusFile, if set, is where Run writes Status for armorshim check.
	StatusFile string

	run sync.Mutex // one Sync at a time; Status does not wait for it

	mu      sync.Mutex
	files   map[string]*fileState
	blocked string // why nothing can be loaded now, or ""
	totals  Totals

	// Used by Run only: the status last written to StatusFile, and the
	// last error writing it.
	written  string
	writeErr string
}

// Totals counts the loader's work since it started.
type Totals struct {
	// LoadFailures counts the parser runs that failed.
	LoadFailures uint64
	// Reloads counts the loads of a file because profiles it defines were
	// missing from the kernel.
	Reloads uint64
}

// Totals returns the loader's counts.
func (l *Loader) Totals() Totals {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.totals
}

// maxRetry is RetryBackoff's longest delay.
const maxRetry = 5 * time.Minute

// RetryBackoff is the delay before retrying a file whose last n loads
// failed: 1s, doubling with each failure, at most 5 minutes. The retry
// itself happens at the first sync after it.
func RetryBackoff(n int) time.Duration {
	d := time.Second
	for i := 1; i < n && d < maxRetry; i++ {
		d *= 2
	}
	return min(d, maxRetry)
}

func (l *Loader) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

func (l *Loader) backoff(n int) time.Duration {
	if l.Backoff != nil {
		return l.Backoff(n)
	}
	return RetryBackoff(n)
}

type fileState struct {
	key fileKey // the version last given to the parser
	ProfileFile
	// gone counts the loads in a row made because profiles of the file were
	// missing from the kernel; the next one may not happen before next.
	gone int
	next time.Time
}

type fileKey struct {
	dev, ino  uint64
	size      int64
	mtimeNano int64
}

// entry is a file of the directory as scan found it.
type entry struct {
	name    string
	key     fileKey
	refused string
}

// Status returns the directory's files, by name, and why loading is
// impossible right now ("" when it is possible).
func (l *Loader) Status() ([]ProfileFile, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]ProfileFile, 0, len(l.files))
	for _, f := range l.files {
		out = append(out, f.ProfileFile)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, l.blocked
}

// Sync loads every trusted file that is new or changed since the last Sync,
// or whose last load failed and whose retry is due, and returns what it did
// in this call: the files it tried to load and those it refused for the
// first time or for a new reason.
func (l *Loader) Sync(ctx context.Context) ([]ProfileFile, error) {
	l.run.Lock()
	defer l.run.Unlock()
	entries, err := l.scan()
	if err != nil {
		l.mu.Lock()
		l.setBlocked(err.Error())
		l.mu.Unlock()
		return nil, err
	}
	now := l.now()
	var kernel map[string]apparmor.Mode
	if l.Kernel != nil {
		if snap := l.Kernel(); snap.Err == nil && snap.Enabled {
			kernel = snap.Profiles
		}
	}
	var done []ProfileFile
	var todo []entry
	gone := map[string][]string{}
	l.mu.Lock()
	if l.files == nil {
		l.files = map[string]*fileState{}
	}
	present := make(map[string]bool, len(entries))
	for _, e := range entries {
		present[e.name] = true
		st := l.files[e.name]
		if e.refused != "" {
			if st == nil || st.Refused != e.refused {
				klog.InfoS("Refusing an untrusted AppArmor profile file", "file", filepath.Join(l.Dir, e.name), "reason", e.refused)
				st = &fileState{ProfileFile: ProfileFile{Name: e.name, Refused: e.refused, When: now}}
				l.files[e.name] = st
				done = append(done, st.ProfileFile)
			}
			continue
		}
		switch {
		case st == nil || st.Refused != "" || st.key != e.key:
			todo = append(todo, e)
		case !st.Loaded && !now.Before(st.Retry):
			todo = append(todo, e)
		case kernel != nil:
			if missing := missingFrom(kernel, st.Profiles); len(missing) == 0 {
				st.gone, st.next = 0, time.Time{}
			} else if !now.Before(st.next) {
				todo = append(todo, e)
				gone[e.name] = missing
			}
		}
	}
	for name := range l.files {
		if !present[name] {
			klog.InfoS("Profile file removed; its profiles stay loaded", "file", filepath.Join(l.Dir, name))
			delete(l.files, name)
		}
	}
	if len(todo) > 0 {
		if why := l.cannotLoad(); why != "" {
			l.setBlocked(why)
			l.mu.Unlock()
			return done, errors.New(why)
		}
	}
	l.setBlocked("")
	l.mu.Unlock()
	for _, e := range todo {
		if missing := gone[e.name]; missing != nil {
			klog.InfoS("AppArmor profiles of a file of the profile directory are no longer loaded; loading it again",
				"file", filepath.Join(l.Dir, e.name), "missing", missing)
		}
		f := l.load(ctx, e.name)
		l.mu.Lock()
		prev := l.files[e.name]
		next := &fileState{key: e.key, ProfileFile: f}
		if gone[e.name] != nil {
			l.totals.Reloads++
			// Should the profiles stay missing, load again after a backoff.
			next.gone = prev.gone + 1
			next.next = f.When.Add(l.backoff(next.gone))
		}
		if !f.Loaded {
			f.Failures = 1
			if prev != nil && prev.key == e.key && prev.Refused == "" && !prev.Loaded {
				f.Failures = prev.Failures + 1
			}
			f.Retry = f.When.Add(l.backoff(f.Failures))
			l.totals.LoadFailures++
			klog.ErrorS(nil, "Loading AppArmor profile file failed", "file", filepath.Join(l.Dir, e.name), "parser", f.Error,
				"failures", f.Failures, "retryIn", f.Retry.Sub(f.When).String())
		}
		next.ProfileFile = f
		l.files[e.name] = next
		l.mu.Unlock()
		done = append(done, f)
	}
	sort.Slice(done, func(i, j int) bool { return done[i].Name < done[j].Name })
	return done, nil
}

func (l *Loader) setBlocked(why string) {
	if why != l.blocked && why != "" {
		klog.InfoS("Cannot load AppArmor profiles", "directory", l.Dir, "reason", why)
	}
	l.blocked = why
}

func (l *Loader) parser() string {
	if l.Parser == "" {
		return "apparmor_parser"
	}
	return l.Parser
}

// cannotLoad says why no profile can be loaded now, or "".
func (l *Loader) cannotLoad() string {
	if l.Enabled != nil && !l.Enabled() {
		return "AppArmor is not enabled on the host"
	}
	if _, err := exec.LookPath(l.parser()); err != nil {
		return fmt.Sprintf("%s not found: install the apparmor package", l.parser())
	}
	return ""
}

func (l *Loader) load(ctx context.Context, name string) ProfileFile {
	timeout := l.Timeout
	if timeout <= 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	path := filepath.Join(l.Dir, name)
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, l.parser(), "--replace", "--", path)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	f := ProfileFile{Name: name, Loaded: err == nil, When: l.now()}
	if err != nil {
		f.Error = strings.TrimSpace(out.String())
		if f.Error == "" {
			f.Error = err.Error()
		}
	} else {
		klog.InfoS("Loaded AppArmor profile file", "file", path)
		if l.Kernel != nil {
			if f.Profiles, err = l.names(ctx, path); err != nil {
				klog.ErrorS(err, "Cannot list the profiles of a file: they will not be loaded again if removed from the kernel", "file", path)
			}
		}
	}
	return f
}

// missingFrom returns the profiles not in kernel.
func missingFrom(kernel map[string]apparmor.Mode, profiles []string) []string {
	var missing []string
	for _, p := range profiles {
		if _, ok := kernel[p]; !ok {
			missing = append(missing, p)
		}
	}
	return missing
}

// names returns the profiles the file at path defines.
func (l *Loader) names(ctx context.Context, path string) ([]string, error) {
	b, err := exec.CommandContext(ctx, l.parser(), "--names", "--", path).Output()
	if err != nil {
		return nil, err
	}
	var profiles []string
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" {
			profiles = append(profiles, line)
		}
	}
	return profiles, nil
}

// Run syncs now and then every interval until ctx ends, and keeps
// StatusFile current.
func (l *Loader) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		l.Sync(ctx)
		l.writeStatus()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// scan lists the profile files of the directory (regular files, not
// hidden, not editor or package-manager leftovers) and judges each; a
// file's own faults are named before its directory's.
func (l *Loader) scan() ([]entry, error) {
	dir, err := filepath.Abs(l.Dir)
	if err != nil {
		return nil, err
	}
	dirents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("profile directory %s does not exist", l.Dir)
	}
	if err != nil {
		return nil, err
	}
	t := newTrust(l.TrustedUID)
	real, err := t.directory(dir)
	var dirRefused refusal
	if err != nil && !errors.As(err, &dirRefused) {
		return nil, err
	}
	var entries []entry
	for _, d := range dirents {
		name := d.Name()
		if strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~") || strings.Contains(name, ".dpkg-") || strings.HasSuffix(name, ".rpmnew") || strings.HasSuffix(name, ".rpmsave") {
			continue
		}
		fi, err := t.file(filepath.Join(real, name))
		var r refusal
		switch {
		case errors.As(err, &r):
			entries = append(entries, entry{name: name, refused: string(r)})
		case err != nil:
			// not a profile file: a directory, a dangling link, gone
		case dirRefused != "":
			entries = append(entries, entry{name: name, refused: string(dirRefused)})
		default:
			k := fileKey{size: fi.Size(), mtimeNano: fi.ModTime().UnixNano()}
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				k.dev, k.ino = uint64(st.Dev), st.Ino
			}
			entries = append(entries, entry{name: name, key: k})
		}
	}
	return entries, nil
}

// Refused returns the files of the directory that are not trusted and why.
func (l *Loader) Refused() (map[string]string, error) {
	entries, err := l.scan()
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, e := range entries {
		if e.refused != "" {
			out[e.name] = e.refused
		}
	}
	return out, nil
}

// Names returns the profile names each trusted file of the directory
// defines, as apparmor_parser --names reports them (no profile is loaded).
func (l *Loader) Names(ctx context.Context) (map[string][]string, error) {
	entries, err := l.scan()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		if e.refused == "" {
			names = append(names, e.name)
		}
	}
	if _, err := exec.LookPath(l.parser()); err != nil {
		return nil, fmt.Errorf("%s not found: cannot tell which profiles the files define", l.parser())
	}
	out := map[string][]string{}
	for _, name := range names {
		out[name], _ = l.names(ctx, filepath.Join(l.Dir, name))
	}
	return out, nil
}

// LoaderStatus is what the serving armorshim writes to its status file for
// armorshim check, another process.
type LoaderStatus struct {
	Directory string        `json:"directory"`
	Blocked   string        `json:"blocked,omitempty"`
	Files     []ProfileFile `json:"files"`
	// Since is when the loader's state last changed.
	Since time.Time `json:"since"`
	Pid   int       `json:"pid"`
}

// writeStatus writes Status to StatusFile if it changed, as a whole: a
// temporary file renamed over it.
func (l *Loader) writeStatus() {
	if l.StatusFile == "" {
		return
	}
	files, blocked := l.Status()
	st := LoaderStatus{Directory: l.Dir, Blocked: blocked, Files: files, Pid: os.Getpid()}
	body, _ := json.Marshal(st)
	if string(body) == l.written {
		return
	}
	st.Since = l.now().UTC()
	data, _ := json.MarshalIndent(st, "", "  ")
	err := writeAtomic(l.StatusFile, append(data, '\n'))
	if err != nil {
		if err.Error() != l.writeErr {
			klog.ErrorS(err, "Cannot write the profile directory's status", "file", l.StatusFile)
		}
		l.writeErr = err.Error()
		return
	}
	l.written, l.writeErr = string(body), ""
}

func writeAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), path)
	}
	if err != nil {
		os.Remove(f.Name())
	}
	return err
}

// ReadStatus reads a status file written by a serving armorshim.
func ReadStatus(path string) (*LoaderStatus, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var st LoaderStatus
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &st, nil
}
