package shim

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"

	"github.com/armorshim/armorshim/systemd"
)

// SocketMode is the mode of the socket armorshim creates.
const SocketMode = 0o660

// Listen opens the serving socket. "fd://" takes the one socket systemd
// passed (socket activation); anything else is a unix socket path, created
// with SocketMode and owned by group. A stale socket left by a crash is
// replaced; a socket another process still serves on is never taken.
func Listen(endpoint, group string) (net.Listener, error) {
	if endpoint == "fd://" {
		return systemd.ActivationListener()
	}
	path, err := socketPath(endpoint)
	if err != nil {
		return nil, err
	}
	gid := -1
	if group != "" {
		if gid, err = lookupGroup(group); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if err := removeStale(path); err != nil {
		return nil, err
	}
	// The umask makes the socket 0660 from its first moment; the chmod
	// below makes it so whatever the umask was.
	old := unix.Umask(0o117)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, SocketMode); err != nil {
		l.Close()
		return nil, err
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("socket group %q: %w", group, err)
		}
	}
	return l, nil
}

// removeStale removes path if it is a socket nobody serves on.
func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	conn, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("%s is in use: another process serves on it", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("%s: cannot tell whether it is in use: %w", path, err)
	}
	klog.InfoS("Replacing stale socket", "path", path)
	return os.Remove(path)
}

func lookupGroup(group string) (int, error) {
	if gid, err := strconv.Atoi(group); err == nil {
		return gid, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return -1, fmt.Errorf("socket group: %w", err)
	}
	return strconv.Atoi(g.Gid)
}
