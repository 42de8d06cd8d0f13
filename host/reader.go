package host

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/armorshim/armorshim/apparmor"
)

// Reader takes snapshots of the host's AppArmor state. It re-reads the
// profiles only when securityfs's policy revision changes, so a snapshot
// usually costs one non-blocking read. It is safe for concurrent use.
type Reader struct {
	sysfs, procfs string

	mu     sync.Mutex
	rev    *os.File // revision file, opened O_NONBLOCK; nil when unavailable
	cached *apparmor.Snapshot

	attrLayout atomic.Int32  // see attrUnknown
	initWait   time.Duration // StartedConfinement's wait; 0: initWait
}

// NewReader returns a Reader for the trees rooted at sysfs and procfs
// (normally /sys and /proc).
func NewReader(sysfs, procfs string) *Reader {
	return &Reader{sysfs: sysfs, procfs: procfs}
}

// SecurityfsDir is the AppArmor interface directory under the sysfs root.
func (r *Reader) SecurityfsDir() string {
	return filepath.Join(r.sysfs, "kernel", "security", "apparmor")
}

func (r *Reader) enabledParam() string {
	return filepath.Join(r.sysfs, "module", "apparmor", "parameters", "enabled")
}

// Snapshot returns the current host state. The profile set is reused while
// the revision is unchanged; the revision read never blocks.
func (r *Reader) Snapshot() *apparmor.Snapshot {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rev == nil {
		f, err := os.OpenFile(filepath.Join(r.SecurityfsDir(), "revision"), os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			// No revision to watch (AppArmor off, securityfs missing, or an
			// old kernel): read everything every time.
			r.cached = nil
			return r.load("")
		}
		r.rev = f
	}
	var buf [32]byte
	n, err := unix.Pread(int(r.rev.Fd()), buf[:], 0)
	switch {
	case errors.Is(err, unix.EAGAIN):
		// Unchanged since this descriptor last read it (or still 0).
		if r.cached == nil {
			r.cached = r.load("0")
		}
	case err != nil:
		r.rev.Close()
		r.rev = nil
		r.cached = nil
		return r.load("")
	default:
		rev := string(bytes.TrimSpace(buf[:n]))
		if r.cached == nil || r.cached.Revision != rev {
			r.cached = r.load(rev)
		}
	}
	snap := r.cached
	if snap.Err != nil {
		// Never keep a failed read until the next policy change: start over
		// with a fresh descriptor (which reads the revision at once) next time.
		r.rev.Close()
		r.rev, r.cached = nil, nil
	}
	return snap
}

// Close releases the revision descriptor.
func (r *Reader) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rev == nil {
		return nil
	}
	err := r.rev.Close()
	r.rev, r.cached = nil, nil
	return err
}

// load reads the whole state; rev is the revision read just before.
func (r *Reader) load(rev string) *apparmor.Snapshot {
	snap := &apparmor.Snapshot{Revision: rev}
	param, err := os.ReadFile(r.enabledParam())
	switch {
	case errors.Is(err, fs.ErrNotExist):
		snap.Detail = "the kernel has no AppArmor module (" + r.enabledParam() + " does not exist)"
		return snap
	case err != nil:
		snap.Err = err
		return snap
	case !bytes.HasPrefix(param, []byte("Y")):
		snap.Detail = fmt.Sprintf("the AppArmor module is disabled (%s is %q; boot without apparmor=0)", r.enabledParam(), strings.TrimSpace(string(param)))
		return snap
	}
	data, err := os.ReadFile(filepath.Join(r.SecurityfsDir(), "profiles"))
	switch {
	case err == nil:
		snap.Enabled = true
		snap.Profiles = ParseProfiles(string(data))
	case errors.Is(err, fs.ErrNotExist) && !r.securityfsMounted():
		snap.Err = fmt.Errorf("securityfs is not mounted at %s (mount -t securityfs securityfs %[1]s)", filepath.Dir(r.SecurityfsDir()))
	default:
		snap.Err = err
	}
	return snap
}

// securityfsMounted reports whether procfs lists a securityfs mount.
func (r *Reader) securityfsMounted() bool {
	mounts, err := os.ReadFile(filepath.Join(r.procfs, "self", "mounts"))
	if err != nil {
		return true // cannot tell: report the read error itself
	}
	for _, line := range strings.Split(string(mounts), "\n") {
		if f := strings.Fields(line); len(f) > 2 && f[2] == "securityfs" {
			return true
		}
	}
	return false
}
