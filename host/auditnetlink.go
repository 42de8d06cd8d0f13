package host

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// auditNlgrpReadlog is the kernel's audit multicast group
// (AUDIT_NLGRP_READLOG): every audit record, as the kernel hands it to
// auditd, to readers with CAP_AUDIT_READ.
const auditNlgrpReadlog = 1

// AuditNetlink reads the kernel's audit records from its netlink
// multicast group. Unlike /dev/kmsg, where the kernel prints audit records
// only while no auditd runs and under printk's rate limit (10 records per
// 5 s by default: a workload in complain mode loses most of its records
// there), the group gets every record, whether or not auditd runs. Read
// returns whole lines, "audit: type=<type> audit(...): ...\n", as the
// kernel log writes them; a receive buffer overrun (ENOBUFS) is returned
// as syscall.EPIPE, as /dev/kmsg reports one.
type AuditNetlink struct {
	f       *os.File
	buf     []byte
	pending []byte
}

// OpenAuditNetlink joins the audit multicast group.
func OpenAuditNetlink() (*AuditNetlink, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_AUDIT)
	if err != nil {
		return nil, fmt.Errorf("audit netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (auditNlgrpReadlog - 1)}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("audit netlink multicast group (needs CAP_AUDIT_READ): %w", err)
	}
	// A larger receive buffer rides out bursts; ENOBUFS says what was lost.
	unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, 4<<20)
	// Non-blocking: reads wait in Go's poller, and Close ends them.
	return &AuditNetlink{f: os.NewFile(uintptr(fd), "audit-netlink"), buf: make([]byte, 1<<16)}, nil
}

// Read returns the next records as kernel log lines.
func (a *AuditNetlink) Read(p []byte) (int, error) {
	for len(a.pending) == 0 {
		n, err := a.f.Read(a.buf)
		if errors.Is(err, syscall.ENOBUFS) {
			return 0, syscall.EPIPE
		}
		if err != nil {
			return 0, err
		}
		a.pending = FormatAuditMessages(a.buf[:n])
	}
	n := copy(p, a.pending)
	a.pending = a.pending[n:]
	return n, nil
}

// Close leaves the group; a Read under way returns.
func (a *AuditNetlink) Close() error { return a.f.Close() }

// FormatAuditMessages writes the audit records of netlink messages as the
// kernel log writes them.
func FormatAuditMessages(b []byte) []byte {
	msgs, err := syscall.ParseNetlinkMessage(b)
	if err != nil {
		return nil
	}
	var out []byte
	for _, m := range msgs {
		data := strings.TrimRight(string(m.Data), "\x00\n")
		if data == "" || strings.ContainsRune(data, '\n') {
			continue
		}
		out = fmt.Appendf(out, "audit: type=%d %s\n", m.Header.Type, data)
	}
	return out
}

// AuditNetlinkLog names the multicast group where a log's path goes
// (metrics, `armorshim check`).
const AuditNetlinkLog = "netlink:audit"

// ProbeAuditNetlink joins and leaves the multicast group once, to tell
// whether armorshim can read it.
func ProbeAuditNetlink() error {
	a, err := OpenAuditNetlink()
	if err != nil {
		return err
	}
	return a.Close()
}

// NetlinkVisibility is DenialsVisible when the multicast group is followed
// too: it carries every record, so denials are visible there whenever it
// can be read, whatever the logs say.
func NetlinkVisibility(probe error, logs DenialVisibility) DenialVisibility {
	if probe != nil {
		logs.Reason += "; the audit multicast group cannot be read: " + probe.Error()
		return logs
	}
	return DenialVisibility{Visible: true, Log: AuditNetlinkLog, Reason: "the kernel's audit multicast group carries every audit record, whether auditd runs or not"}
}
