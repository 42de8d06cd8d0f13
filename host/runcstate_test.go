package host

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const runcID = "3f1c2b0a9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a"

// writeRuncState writes <root>/<id>/state.json as runc lays it out: its
// BaseState first, then the whole container config.
func writeRuncState(t *testing.T, root, id, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(root, id), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, id, "state.json"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// writeStat writes /proc/<pid>/stat with a command name holding a ')' and
// spaces, and the given start time in field 22.
func writeStat(t *testing.T, procfs string, pid int, start uint64) {
	t.Helper()
	dir := filepath.Join(procfs, fmt.Sprint(pid))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	fields := make([]string, 0, 50)
	for i := 3; i <= 52; i++ {
		fields = append(fields, fmt.Sprint(i))
	}
	fields[22-3] = fmt.Sprint(start)
	line := fmt.Sprintf("%d (a) b c) S %s\n", pid, strings.Join(fields[1:], " "))
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(line), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestInitPidFromRuncState(t *testing.T) {
	root, procfs := t.TempDir(), t.TempDir()
	r := NewReader("/nonexistent", procfs)
	r.SetRuncRoot(root)
	writeRuncState(t, root, runcID, `{"id":"`+runcID+`","init_process_pid":4242,"init_process_start":987654,"created":"2026-12-05T10:00:00Z","config":{"rootfs":"/x","labels":["a"]},"rootless":false}`)
	writeStat(t, procfs, 4242, 987654)
	pid, err := r.InitPid(runcID)
	if err != nil || pid != 4242 {
		t.Fatalf("InitPid = %d, %v; want 4242", pid, err)
	}

	// A pid reused by another process after the container's exited.
	writeStat(t, procfs, 4242, 987655)
	if pid, err := r.InitPid(runcID); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a reused pid: InitPid = %d, %v; want ErrNotExist", pid, err)
	}
	// The process is gone.
	os.RemoveAll(filepath.Join(procfs, "4242"))
	if _, err := r.InitPid(runcID); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a gone process: %v; want ErrNotExist", err)
	}
}

func TestInitPidWithoutRuncState(t *testing.T) {
	root, procfs := t.TempDir(), t.TempDir()
	r := NewReader("/nonexistent", procfs)
	if _, err := r.InitPid(runcID); !errors.Is(err, ErrNoRuncState) {
		t.Errorf("no root configured: %v", err)
	}
	r.SetRuncRoot(root)
	if _, err := r.InitPid(runcID); !errors.Is(err, ErrNoRuncState) {
		t.Errorf("no state file: %v", err)
	}
	// Ids that could leave the root are never looked up.
	writeRuncState(t, root, "x", `{"init_process_pid":1,"init_process_start":1}`)
	for _, id := range []string{"../x", "x/..", "..", ".", "", "x\x00"} {
		if _, err := r.InitPid(id); !errors.Is(err, ErrNoRuncState) {
			t.Errorf("id %q: %v; want ErrNoRuncState", id, err)
		}
	}
	for _, body := range []string{
		`[]`,
		`{"init_process_pid":0,"init_process_start":5}`,
		`{"init_process_pid":"12","init_process_start":5}`,
		`{"init_process_pid":12}`,
		`{"init_process_pid":12,"init_process_start":-1}`,
	} {
		writeRuncState(t, root, runcID, body)
		writeStat(t, procfs, 12, 5)
		if pid, err := r.InitPid(runcID); err == nil {
			t.Errorf("state %s: pid %d, no error", body, pid)
		}
	}
}
