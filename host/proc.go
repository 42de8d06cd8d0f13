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
func (r *Reader) Confinement(pid int) (string, error) {
	dir := filepath.Join(r.procfs, strconv.Itoa(pid), "attr")
	b, err := os.ReadFile(filepath.Join(dir, "apparmor", "current"))
	if errors.Is(err, fs.ErrNotExist) {
		b, err = os.ReadFile(filepath.Join(dir, "current"))
	}
	if err != nil {
		return "", err
	}
	return string(bytes.TrimRight(b, "\n\x00")), nil
}

// runcInit is the command name of runc's init before it executes the
// container's process; its confinement is not yet the container's.
const runcInit = "runc:[2:INIT]"

// SettledConfinement is Confinement once the process has left runc's init:
// a runtime's StartContainer may return just before the container's first
// execve applies its profile. It waits at most wait.
func (r *Reader) SettledConfinement(pid int, wait time.Duration) (string, error) {
	deadline := time.Now().Add(wait)
	for {
		comm, err := os.ReadFile(filepath.Join(r.procfs, strconv.Itoa(pid), "comm"))
		if err != nil {
			return "", err
		}
		if strings.TrimSpace(string(comm)) != runcInit || time.Now().After(deadline) {
			return r.Confinement(pid)
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
