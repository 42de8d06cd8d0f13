package host

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Confinement returns the AppArmor label of process pid, e.g.
// "k8s-apparmor-example-deny-write (enforce)" or "unconfined", from
// attr/apparmor/current (kernels with LSM stacking) or attr/current.
func (r *Reader) Confinement(pid int) (string, error) { return r.attr(pid, "current") }

// attr reads one of a process's AppArmor attributes.
func (r *Reader) attr(pid int, name string) (string, error) {
	dir := filepath.Join(r.procfs, strconv.Itoa(pid), "attr")
	b, err := os.ReadFile(filepath.Join(dir, "apparmor", name))
	if errors.Is(err, fs.ErrNotExist) {
		b, err = os.ReadFile(filepath.Join(dir, name))
	}
	if err != nil {
		return "", err
	}
	return string(bytes.TrimRight(b, "\n\x00")), nil
}

// runcInit is the command name of runc's init before it executes the
// container's process; its confinement is not yet the container's.
const runcInit = "runc:[2:INIT]"

// ErrNotSettled says a process was still in runc's init, with no label
// set for its exec, when the wait ran out.
var ErrNotSettled = errors.New("the process is still in runc's init")

// SettledConfinement is Confinement once the process has left runc's init:
// a runtime's StartContainer may return just before the container's first
// execve applies its profile. It waits at most wait. A process still in
// runc's init then (a loaded node) is judged by the label runc set for its
// exec (attr/exec), which the kernel applies at that execve; without one
// it is ErrNotSettled.
func (r *Reader) SettledConfinement(pid int, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		comm, err := os.ReadFile(filepath.Join(r.procfs, strconv.Itoa(pid), "comm"))
		if err != nil {
			return "", err
		}
		if strings.TrimSpace(string(comm)) != runcInit {
			return r.Confinement(pid)
		}
		if time.Now().After(deadline) {
			exec, err := r.attr(pid, "exec")
			if err != nil || exec == "" {
				return "", ErrNotSettled
			}
			return exec, nil
		}
		time.Sleep(2 * time.Millisecond)
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
