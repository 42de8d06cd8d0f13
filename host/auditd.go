package host

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// AuditdPid returns the pid of a running auditd, found by command name
// under the procfs root, or 0 if none runs.
func (r *Reader) AuditdPid() (int, error) {
	entries, err := os.ReadDir(r.procfs)
	if err != nil {
		return 0, err
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		comm, err := os.ReadFile(filepath.Join(r.procfs, e.Name(), "comm"))
		if err == nil && strings.TrimSpace(string(comm)) == "auditd" {
			return pid, nil
		}
	}
	return 0, nil
}

// LogState is a log armorshim may follow for denials: its path ("" when
// not configured) and the error opening it, if any.
type LogState struct {
	Path string
	Err  error
}

// DenialVisibility says whether the kernel's AppArmor denials reach a log
// armorshim follows.
type DenialVisibility struct {
	Visible bool
	Log     string // the log they reach, when visible
	Reason  string
}

// DenialsVisible decides where denials can be read. The kernel sends its
// audit records to auditd while auditd runs (auditdPid > 0), and to the
// kernel log only otherwise.
func DenialsVisible(auditdPid int, kernelLog, auditLog LogState) DenialVisibility {
	if kernelLog.Path == "" && auditLog.Path == "" {
		return DenialVisibility{Reason: "attribution is off (denials.kernelLog and denials.auditLog are empty)"}
	}
	if auditdPid > 0 {
		by := "auditd (pid " + strconv.Itoa(auditdPid) + ") receives the kernel's audit records"
		switch {
		case auditLog.Path == "":
			return DenialVisibility{Reason: by + " and denials.auditLog is empty"}
		case auditLog.Err != nil:
			return DenialVisibility{Reason: by + " and its log cannot be read: " + auditLog.Err.Error()}
		}
		return DenialVisibility{Visible: true, Log: auditLog.Path, Reason: by}
	}
	switch {
	case kernelLog.Path == "":
		return DenialVisibility{Reason: "auditd does not run, so the kernel logs its audit records to the kernel log, and denials.kernelLog is empty"}
	case kernelLog.Err != nil:
		return DenialVisibility{Reason: "auditd does not run, and the kernel log cannot be read: " + kernelLog.Err.Error()}
	}
	return DenialVisibility{Visible: true, Log: kernelLog.Path, Reason: "auditd does not run: the kernel logs its audit records to the kernel log"}
}

// ProbeDenialLogs opens each configured log ("" is not configured) once,
// to tell whether it can be read.
func ProbeDenialLogs(kernelLog, auditLog string) (kmsg, audit LogState) {
	kmsg, audit = LogState{Path: kernelLog}, LogState{Path: auditLog}
	if kernelLog != "" {
		f, err := OpenKmsg(kernelLog)
		if err == nil {
			f.Close()
		}
		kmsg.Err = err
	}
	if auditLog != "" {
		f, err := os.Open(auditLog)
		if err == nil {
			f.Close()
		}
		audit.Err = err
	}
	return kmsg, audit
}
