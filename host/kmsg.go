package host

import (
	"context"
	"encoding/hex"
	"errors"
	"github.com/armorshim/armorshim/apparmor"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// Denial is one AppArmor denial from the kernel's audit log.
type Denial struct {
	// Record is the audit record's ID, "<time>:<serial>" from
	// audit(<time>:<serial>), the same in /dev/kmsg and auditd's log; ""
	// if the line has none.
	Record     string
	Operation  string // e.g. "open", "mkdir", "exec"
	Profile    string // the profile that denied
	Name       string // the object, e.g. "/tmp/test"
	Class      string // e.g. "file", "net"
	Comm       string
	Pid        int
	DeniedMask string
	// Allowed: an ALLOWED record (a profile in complain mode), not a
	// denial; only its learning profile wants it.
	Allowed bool
	// What an ALLOWED record also says (RequestedMask for files, signals,
	// ptrace and sockets).
	RequestedMask, Capname, Family, SockType, Signal, Peer, FsType, SrcName, Target, Flags string
}

// Access is what an ALLOWED record allowed, as a learned profile needs it.
// Kernels before 6.2 (Debian 12's 6.1) write no class= field; it is
// inferred from the fields and the operation, as aa-logprof does.
func (d Denial) Access() apparmor.Access {
	class := d.Class
	if class == "" {
		switch {
		case d.Capname != "":
			class = "cap"
		case d.Family != "":
			class = "net"
		case d.Operation == "signal":
			class = "signal"
		case d.Operation == "ptrace":
			class = "ptrace"
		case d.Operation == "mount" || d.Operation == "umount" || d.Operation == "pivotroot" || d.Operation == "remount":
			class = "mount"
		default:
			class = "file"
		}
	}
	return apparmor.Access{Class: class, Operation: d.Operation, Name: d.Name, Mask: d.RequestedMask, Capname: d.Capname,
		Family: d.Family, SockType: d.SockType, Signal: d.Signal, Peer: d.Peer, FsType: d.FsType, SrcName: d.SrcName, Target: d.Target, Flags: d.Flags}
}

// ParseDenial parses a kernel log line or /dev/kmsg record holding an
// AppArmor audit message. It reports false for anything but a denial.
func ParseDenial(line string) (Denial, bool) {
	d, ok := ParseRecord(line)
	if !ok || d.Allowed {
		return Denial{}, false
	}
	return d, true
}

// ParseRecord parses a kernel log line or /dev/kmsg record holding an
// AppArmor denial, or a record of an access a profile allowed and logged
// (ALLOWED in complain mode, AUDIT for an audit rule: Allowed set); false
// for anything else.
//
// Only the kernel's own AVC records count (type=1400 in the kernel log,
// type=AVC in auditd's), with the AppArmor fields right after the record's
// audit(...) stamp: a process with CAP_AUDIT_WRITE (a container's default)
// can log a USER_AVC (type=1107) whose text says anything, apparmor="..."
// included.
func ParseRecord(line string) (Denial, bool) {
	i, ok := avcFields(line)
	if !ok {
		return Denial{}, false
	}
	allowed := false
	switch {
	case strings.HasPrefix(line[i:], `apparmor="DENIED"`):
	case strings.HasPrefix(line[i:], `apparmor="ALLOWED"`), strings.HasPrefix(line[i:], `apparmor="AUDIT"`):
		allowed = true
	default:
		return Denial{}, false
	}
	fields := auditFields(line[i:])
	d := Denial{
		Operation:  fields["operation"],
		Profile:    fields["profile"],
		Name:       fields["name"],
		Class:      fields["class"],
		Comm:       fields["comm"],
		DeniedMask: fields["denied_mask"],
		Allowed:    allowed,
	}
	if allowed {
		d.RequestedMask, d.Capname, d.Family, d.SockType = fields["requested_mask"], fields["capname"], fields["family"], fields["sock_type"]
		d.Signal, d.Peer, d.FsType, d.SrcName, d.Target, d.Flags = fields["signal"], fields["peer"], fields["fstype"], fields["srcname"], fields["target"], fields["flags"]
	}
	pid, err := strconv.Atoi(fields["pid"])
	if err != nil || d.Profile == "" {
		return Denial{}, false
	}
	d.Pid = pid
	d.Record = recordID(line[:i])
	return d, true
}

// avcFields returns where the AppArmor fields of a kernel AVC record start:
// the record's first type= must be the AVC type, and its audit(...) stamp
// must be followed by apparmor=.
func avcFields(line string) (int, bool) {
	t := strings.Index(line, "type=")
	if t < 0 {
		return 0, false
	}
	// A /dev/kmsg record "<priority>,<seq>,...;" a process wrote carries a
	// user facility (priority 8 and up): only the kernel's count.
	if head, _, ok := strings.Cut(line[:t], ";"); ok && strings.Contains(head, ",") {
		prio, _, _ := strings.Cut(head, ",")
		if n, err := strconv.Atoi(prio); err != nil || n >= 8 {
			return 0, false
		}
	}
	rest := line[t:]
	switch {
	case strings.HasPrefix(rest, "type=1400 audit("): // the kernel log
	case strings.HasPrefix(rest, "type=AVC msg=audit("): // auditd's log
	default:
		return 0, false
	}
	end := strings.Index(rest, "): ")
	if end < 0 || end > 64 {
		return 0, false
	}
	start := t + end + len("): ")
	if !strings.HasPrefix(line[start:], "apparmor=") {
		return 0, false
	}
	return start, true
}

// recordID returns the <time>:<serial> of the last audit(...) in s.
func recordID(s string) string {
	i := strings.LastIndex(s, "audit(")
	if i < 0 {
		return ""
	}
	s = s[i+len("audit("):]
	end := strings.IndexByte(s, ')')
	if end < 0 || end > 40 {
		return ""
	}
	return s[:end]
}

// untrusted are the fields the kernel hex-encodes (unquoted) when they
// hold spaces, quotes or control characters.
var untrusted = map[string]bool{"profile": true, "name": true, "comm": true, "target": true, "peer": true, "name2": true, "srcname": true, "fstype": true}

// fieldSeparators end a bare value: auditd's enriched format puts a GS
// (0x1d) before the fields it adds (FSUID="root" ...).
const fieldSeparators = " \n\x1d"

// auditFields splits key=value pairs; values are "quoted", hex (for
// untrusted strings) or bare.
func auditFields(s string) map[string]string {
	out := map[string]string{}
	for len(s) > 0 {
		s = strings.TrimLeft(s, fieldSeparators)
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			break
		}
		key := s[:eq]
		if sp := strings.LastIndexByte(key, ' '); sp >= 0 {
			key = key[sp+1:]
		}
		s = s[eq+1:]
		var val string
		if strings.HasPrefix(s, `"`) {
			end := strings.IndexByte(s[1:], '"')
			if end < 0 {
				val, s = s[1:], ""
			} else {
				val, s = s[1:end+1], s[end+2:]
			}
		} else {
			end := strings.IndexAny(s, fieldSeparators)
			if end < 0 {
				end = len(s)
			}
			val, s = s[:end], s[end:]
			if untrusted[key] {
				if b, err := hex.DecodeString(val); err == nil {
					val = string(b)
				}
			}
		}
		if _, dup := out[key]; !dup {
			out[key] = val
		}
	}
	return out
}

// FollowStats counts what FollowDenials saw.
type FollowStats struct {
	Records  uint64 // kernel log records read
	Overruns uint64 // times the kernel overwrote records before we read them
}

// FollowDenials reads kernel log records from r — /dev/kmsg opened
// non-blocking and positioned at its end, or any reader of recorded lines —
// and calls fn for each AppArmor denial and ALLOWED record (ParseRecord)
// until ctx ends or r is exhausted (io.EOF returns nil). An overrun (EPIPE from /dev/kmsg) loses records but
// does not stop it.
func FollowDenials(ctx context.Context, r io.Reader, stats *FollowStats, fn func(Denial)) error {
	buf := make([]byte, 64<<10)
	var partial string
	for ctx.Err() == nil {
		n, err := r.Read(buf)
		if n > 0 {
			// /dev/kmsg returns one record per read; recorded text may hold
			// many lines. A record's continuation lines start with a space.
			chunk := partial + string(buf[:n])
			last := strings.LastIndexByte(chunk, '\n')
			partial = chunk[last+1:]
			for _, line := range strings.Split(chunk[:last+1], "\n") {
				if line == "" || line[0] == ' ' {
					continue
				}
				stats.Records++
				if d, ok := ParseRecord(line); ok {
					fn(d)
				}
			}
		}
		switch {
		case err == nil:
		case errors.Is(err, syscall.EPIPE):
			stats.Overruns++
		case errors.Is(err, io.EOF):
			return nil
		case errors.Is(err, os.ErrClosed) && ctx.Err() != nil:
			return nil
		default:
			return err
		}
	}
	return nil
}

// OpenKmsg opens the kernel log for following from now on.
func OpenKmsg(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	if _, err := f.Seek(0, io.SeekEnd); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}
