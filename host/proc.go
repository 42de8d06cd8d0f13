package host

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Confinement returns the AppArmor label of process pid, e.g.
// "k8s-apparmor-example-deny-write (enforce)" or "unconfined", from
// attr/apparmor/current (kernels with LSM stacking) or attr/current.
func (r *Reader) Confinement(pid int) (string, error) { return r.attr(pid, "current") }

// attrLayout says whether the kernel has the attr/apparmor directory,
// learned from the first read that finds a process: it is the same for
// every process while the kernel runs.
const (
	attrUnknown int32 = iota
	attrSubdir        // attr/apparmor/<name>
	attrFlat          // attr/<name>
)

// attr reads one of a process's AppArmor attributes.
func (r *Reader) attr(pid int, name string) (string, error) {
	dir := r.procfs + "/" + strconv.Itoa(pid) + "/attr/"
	switch r.attrLayout.Load() {
	case attrSubdir:
		return readAttr(dir + "apparmor/" + name)
	case attrFlat:
		return readAttr(dir + name)
	}
	v, err := readAttr(dir + "apparmor/" + name)
	if err == nil {
		r.attrLayout.Store(attrSubdir)
		return v, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	if v, err = readAttr(dir + name); err == nil {
		r.attrLayout.Store(attrFlat)
	}
	return v, err
}

// attrBuf fits any label but very long profile names; longer ones are read
// whole with os.ReadFile.
const attrBuf = 512

// readAttr reads a small procfs file, without a trailing newline or NUL,
// in three system calls.
func readAttr(path string) (string, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", &fs.PathError{Op: "open", Path: path, Err: err}
	}
	var buf [attrBuf]byte
	n, err := unix.Read(fd, buf[:])
	unix.Close(fd)
	switch {
	case err != nil:
		return "", &fs.PathError{Op: "read", Path: path, Err: err}
	case n == len(buf):
		b, err := os.ReadFile(path)
		if err != nil {
			return "", err
		}
		return string(bytes.TrimRight(b, "\n\x00")), nil
	}
	return string(bytes.TrimRight(buf[:n], "\n\x00")), nil
}

// runcInit is the command name of runc's init before it executes the
// container's process; its confinement is not yet the container's.
const runcInit = "runc:[2:INIT]"

// ErrStillInInit says a process still looked like runc's init, with a
// label set for its exec, when the wait for that exec ran out.
var ErrStillInInit = errors.New("the process is still runc's init")

// initWait bounds how long StartedConfinement waits for runc's init to
// execute the container's command.
const initWait = time.Second

// StartedConfinement returns the label of a container's first process
// once its runtime's StartContainer returned. The process may still be
// runc's init, about to execute the container's command under the label
// runc set for that exec (attr/exec). That label is not taken on trust:
// the command name is the process's to set (PR_SET_NAME), and a process
// left unconfined can set any exec label for itself. So the exec is
// waited for (up to initWait) and the label the kernel gave the process
// is read; still in runc's init then, it is ErrStillInInit. With no exec
// label the process keeps its current label at the exec (unless a host
// profile attached by path applies): that is read at once.
func (r *Reader) StartedConfinement(pid int) (string, error) {
	commPath := r.procfs + "/" + strconv.Itoa(pid) + "/comm"
	wait := r.initWait
	if wait == 0 {
		wait = initWait
	}
	deadline := time.Now().Add(wait)
	for pause := 100 * time.Microsecond; ; pause = min(2*pause, 5*time.Millisecond) {
		comm, err := readAttr(commPath)
		if err != nil {
			return "", err
		}
		if comm != runcInit {
			return r.attr(pid, "current")
		}
		exec, err := r.attr(pid, "exec")
		if err != nil {
			return "", err
		}
		if exec == "" {
			// No exec label, or the exec cleared it since comm was
			// read: either way the current label is the one to judge.
			return r.attr(pid, "current")
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("%w after %v (with %q set for its exec)", ErrStillInInit, wait, exec)
		}
		time.Sleep(pause)
	}
}

// containerIDPattern finds a 64-hex container ID in a cgroup path, as
// containerd and CRI-O name them with either cgroup driver
// (".../<id>", "cri-containerd-<id>.scope", "crio-<id>.scope").
var containerIDPattern = regexp.MustCompile(`(?:^|[/-])([0-9a-f]{64})(?:\.scope)?$`)

// ContainerID returns the ID of the container process pid belongs to, read
// from its cgroup, or "" if it is in none.
func (r *Reader) ContainerID(pid int) (string, error) {
	b, err := os.ReadFile(filepath.Join(r.procfs, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return "", err
	}
	return containerIDFromCgroup(string(b)), nil
}

func containerIDFromCgroup(data string) string {
	for _, line := range strings.Split(data, "\n") {
		// hierarchy-ID:controllers:path
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		if m := containerIDPattern.FindStringSubmatch(parts[2]); m != nil {
			return m[1]
		}
	}
	return ""
}
