package host

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// ErrNoRuncState says a container has no runc state file under the
// configured root (another runtime, another root, or no root configured).
var ErrNoRuncState = errors.New("no runc state file")

// maxRuncState bounds what is read of a state file: runc writes its whole
// container config there (tens of KiB), but the pid comes first.
const maxRuncState = 1 << 20

// SetRuncRoot names the directory where runc keeps its containers' state
// (containerd's runc shim: /run/containerd/runc/<namespace>, k8s.io for
// CRI). Empty: InitPid always returns ErrNoRuncState. Set before use.
func (r *Reader) SetRuncRoot(dir string) { r.runcRoot = dir }

// InitPid returns the pid of a started container's first process from the
// state file runc keeps for it (<root>/<id>/state.json), without asking
// the runtime. The pid is checked against the start time runc recorded
// for it (/proc/<pid>/stat), so a pid reused after the process exited is
// never returned. An id that could name another path (empty, ".", "..",
// or holding a '/') is not looked up.
func (r *Reader) InitPid(id string) (int, error) {
	if r.runcRoot == "" || !plainName(id) {
		return 0, ErrNoRuncState
	}
	f, err := os.Open(filepath.Join(r.runcRoot, id, "state.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, ErrNoRuncState
		}
		return 0, err
	}
	defer f.Close()
	pid, start, err := parseRuncState(io.LimitReader(f, maxRuncState))
	if err != nil {
		return 0, fmt.Errorf("runc state of %s: %w", id, err)
	}
	got, err := r.startTime(pid)
	if err != nil {
		return 0, err
	}
	if got != start {
		return 0, fmt.Errorf("process %d started at %d, not at %d as runc recorded: %w", pid, got, start, os.ErrNotExist)
	}
	return pid, nil
}

// parseRuncState reads init_process_pid and init_process_start from runc's
// state.json (libcontainer's BaseState), stopping once it has both.
func parseRuncState(rd io.Reader) (pid int, start uint64, err error) {
	dec := json.NewDecoder(rd)
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return 0, 0, fmt.Errorf("not a JSON object")
	}
	var havePid, haveStart bool
	for dec.More() && !(havePid && haveStart) {
		t, err := dec.Token()
		if err != nil {
			return 0, 0, err
		}
		key, _ := t.(string)
		switch key {
		case "init_process_pid":
			v, err := decodeUint(dec)
			if err != nil || v == 0 || v > 1<<22 {
				return 0, 0, fmt.Errorf("init_process_pid is not a pid")
			}
			pid, havePid = int(v), true
		case "init_process_start":
			if start, err = decodeUint(dec); err != nil {
				return 0, 0, fmt.Errorf("init_process_start is not a start time")
			}
			haveStart = true
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return 0, 0, err
			}
		}
	}
	if !havePid || !haveStart {
		return 0, 0, fmt.Errorf("no init_process_pid and init_process_start")
	}
	return pid, start, nil
}

// decodeUint reads the next value, which must be a JSON number holding an
// unsigned integer (not a string).
func decodeUint(dec *json.Decoder) (uint64, error) {
	var raw json.RawMessage
	if err := dec.Decode(&raw); err != nil {
		return 0, err
	}
	return strconv.ParseUint(string(raw), 10, 64)
}

// startTime is field 22 of /proc/<pid>/stat: when the process started, in
// clock ticks since boot (what runc records as init_process_start).
func (r *Reader) startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(r.procfs, strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold anything:
	// count fields after its last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	const startField = 22 - 3 // fields 3.. follow the name
	if len(f) <= startField {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	return strconv.ParseUint(f[startField], 10, 64)
}

// plainName reports whether s names one entry of a directory.
func plainName(s string) bool {
	return s != "" && s != "." && s != ".." && len(s) <= 255 && !strings.ContainsAny(s, "/\x00")
}
