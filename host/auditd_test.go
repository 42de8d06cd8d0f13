package host

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestAuditdPid(t *testing.T) {
	procfs := t.TempDir()
	for pid, comm := range map[string]string{"1": "systemd\n", "712": "auditd\n", "self": "x\n", "900": "kauditd\n"} {
		os.MkdirAll(filepath.Join(procfs, pid), 0o755)
		os.WriteFile(filepath.Join(procfs, pid, "comm"), []byte(comm), 0o644)
	}
	r := NewReader(t.TempDir(), procfs)
	if pid, err := r.AuditdPid(); err != nil || pid != 712 {
		t.Errorf("AuditdPid = %d, %v; want 712", pid, err)
	}
	os.RemoveAll(filepath.Join(procfs, "712"))
	if pid, err := r.AuditdPid(); err != nil || pid != 0 {
		t.Errorf("without auditd: AuditdPid = %d, %v; want 0", pid, err)
	}
}

func TestDenialsVisible(t *testing.T) {
	kmsg := LogState{Path: "/dev/kmsg"}
	audit := LogState{Path: "/var/log/audit/audit.log"}
	gone := LogState{Path: "/var/log/audit/audit.log", Err: errors.New("permission denied")}
	for _, c := range []struct {
		name        string
		auditd      int
		kmsg, audit LogState
		visible     bool
		log, reason string
	}{
		{"no auditd", 0, kmsg, audit, true, "/dev/kmsg", "auditd does not run"},
		{"auditd", 712, kmsg, audit, true, "/var/log/audit/audit.log", "auditd (pid 712)"},
		{"auditd, audit log off", 712, kmsg, LogState{}, false, "", "denials.auditLog is empty"},
		{"auditd, audit log unreadable", 712, kmsg, gone, false, "", "permission denied"},
		{"kernel log unreadable", 0, LogState{Path: "/dev/kmsg", Err: errors.New("no such file")}, audit, false, "", "no such file"},
		{"kernel log off", 0, LogState{}, audit, false, "", "denials.kernelLog is empty"},
		{"off", 712, LogState{}, LogState{}, false, "", "attribution is off"},
	} {
		v := DenialsVisible(c.auditd, c.kmsg, c.audit)
		if v.Visible != c.visible || v.Log != c.log || !strings.Contains(v.Reason, c.reason) {
			t.Errorf("%s: %+v; want visible=%t log=%q reason containing %q", c.name, v, c.visible, c.log, c.reason)
		}
	}
}
