package host

import (
	"bytes"
	"context"
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
)

// ProfileFile is the state of one file of the profile directory.
type ProfileFile struct {
	Name string `json:"file"`
	// Loaded: the last load of this version of the file succeeded.
	Loaded bool `json:"loaded"`
	// Error is the parser's message for a failed load.
	Error string    `json:"error,omitempty"`
	When  time.Time `json:"when"`
}

// Loader loads the AppArmor profiles of a directory with apparmor_parser in
// replace mode, and loads each file again when it changes. It never unloads
// a profile: containers may be running under it.
type Loader struct {
	Dir string
	// Parser is the apparmor_parser command, looked up in PATH if bare.
	Parser string
	// Enabled reports whether AppArmor is on; loads are skipped while off.
	Enabled func() bool
	// Timeout bounds one parser run.
	Timeout time.Duration

	mu      sync.Mutex
	seen    map[string]fileKey
	files   map[string]ProfileFile
	blocked string // why nothing can be loaded now, or ""
}

type fileKey struct {
	dev, ino  uint64
	size      int64
	mtimeNano int64
}

// Status returns the directory's files, by name, and why loading is
// impossible right now ("" when it is possible).
func (l *Loader) Status() ([]ProfileFile, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]ProfileFile, 0, len(l.files))
	for _, f := range l.files {
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, l.blocked
}

// Sync loads every file that is new or changed since the last Sync and
// returns what it did in this call.
func (l *Loader) Sync(ctx context.Context) ([]ProfileFile, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen, l.files = map[string]fileKey{}, map[string]ProfileFile{}
	}
	names, keys, err := scan(l.Dir)
	if err != nil {
		l.setBlocked(err.Error())
		return nil, err
	}
	for name := range l.seen {
		if _, ok := keys[name]; !ok {
			klog.InfoS("Profile file removed; its profiles stay loaded", "file", filepath.Join(l.Dir, name))
			delete(l.seen, name)
			delete(l.files, name)
		}
	}
	var todo []string
	for _, name := range names {
		if k, ok := l.seen[name]; !ok || k != keys[name] {
			todo = append(todo, name)
		}
	}
	if len(todo) == 0 {
		return nil, nil
	}
	if why := l.cannotLoad(); why != "" {
		l.setBlocked(why)
		return nil, errors.New(why)
	}
	l.setBlocked("")
	done := make([]ProfileFile, 0, len(todo))
	for _, name := range todo {
		f := l.load(ctx, name)
		l.seen[name], l.files[name] = keys[name], f
		done = append(done, f)
	}
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
	f := ProfileFile{Name: name, Loaded: err == nil, When: time.Now()}
	if err != nil {
		f.Error = strings.TrimSpace(out.String())
		if f.Error == "" {
			f.Error = err.Error()
		}
		klog.ErrorS(err, "Loading AppArmor profile file failed", "file", path, "parser", f.Error)
	} else {
		klog.InfoS("Loaded AppArmor profile file", "file", path)
	}
	return f
}

// Run syncs now and then every interval until ctx ends.
func (l *Loader) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		l.Sync(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// scan lists the profile files of dir: regular files, not hidden, not
// editor or package-manager leftovers.
func scan(dir string) ([]string, map[string]fileKey, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("profile directory %s does not exist", dir)
	}
	if err != nil {
		return nil, nil, err
	}
	var names []string
	keys := map[string]fileKey{}
	for _, e := range entries {
		name := e.Name()
		if strings.HasPrefix(name, ".") || strings.HasSuffix(name, "~") || strings.Contains(name, ".dpkg-") || strings.HasSuffix(name, ".rpmnew") || strings.HasSuffix(name, ".rpmsave") {
			continue
		}
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || !fi.Mode().IsRegular() {
			continue
		}
		k := fileKey{size: fi.Size(), mtimeNano: fi.ModTime().UnixNano()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			k.dev, k.ino = uint64(st.Dev), st.Ino
		}
		names = append(names, name)
		keys[name] = k
	}
	return names, keys, nil
}

// Names returns the profile names each file of the directory defines, as
// apparmor_parser --names reports them (no profile is loaded).
func (l *Loader) Names(ctx context.Context) (map[string][]string, error) {
	names, _, err := scan(l.Dir)
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath(l.parser()); err != nil {
		return nil, fmt.Errorf("%s not found: cannot tell which profiles the files define", l.parser())
	}
	out := map[string][]string{}
	for _, name := range names {
		b, err := exec.CommandContext(ctx, l.parser(), "--names", "--", filepath.Join(l.Dir, name)).Output()
		if err != nil {
			out[name] = nil
			continue
		}
		var profiles []string
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line != "" {
				profiles = append(profiles, line)
			}
		}
		out[name] = profiles
	}
	return out, nil
}
