package host

import (
	"encoding/binary"
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
	rc      syscall.RawConn
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
	// A larger receive buffer rides out bursts (past net.core.rmem_max
	// where armorshim may); ENOBUFS says what was lost.
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, auditRcvBuf) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, auditRcvBuf)
	}
	f := os.NewFile(uintptr(fd), "audit-netlink")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	// Non-blocking: reads wait in Go's poller, and Close ends them.
	return &AuditNetlink{f: f, rc: rc, buf: make([]byte, 1<<16)}, nil
}

// auditRcvBuf is the receive buffer asked for the multicast group.
const auditRcvBuf = 8 << 20

// Read returns the next records as kernel log lines. Only the kernel's
// messages count (sender port 0): a process with CAP_NET_ADMIN can send
// to the group too.
func (a *AuditNetlink) Read(p []byte) (int, error) {
	for len(a.pending) == 0 {
		var n int
		var from unix.Sockaddr
		var rerr error
		err := a.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), a.buf, 0)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if errors.Is(err, syscall.ENOBUFS) {
			return 0, syscall.EPIPE
		}
		if err != nil {
			return 0, err
		}
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue
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
// kernel log writes them. The audit subsystem sends a record's message
// unpadded (its length need not be a multiple of 4), which
// syscall.ParseNetlinkMessage refuses: messages are split here, by their
// lengths, the last taking what is left.
func FormatAuditMessages(b []byte) []byte {
	var out []byte
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:]))
		typ := binary.NativeEndian.Uint16(b[4:])
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			l = len(b)
		}
		data := strings.TrimRight(string(b[unix.NLMSG_HDRLEN:l]), "\x00\n")
		if data != "" && !strings.ContainsRune(data, '\n') {
			out = fmt.Appendf(out, "audit: type=%d %s\n", typ, data)
		}
		next := (l + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1)
		if next >= len(b) {
			break
		}
		b = b[next:]
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

// Audit netlink requests and the status fields they use (linux/audit.h).
const (
	auditGet                = 1000
	auditSet                = 1001
	auditStatusBacklogLimit = 0x0010
)

// auditStatus is the head of struct audit_status, all the kernel needs of
// a request and all armorshim reads of an answer.
type auditStatus struct {
	Mask, Enabled, Failure, Pid, RateLimit, BacklogLimit, Lost, Backlog uint32
}

// AuditBacklog returns the kernel's audit backlog limit and how many
// records it has lost since boot (AUDIT_GET).
func AuditBacklog() (limit, lost uint32, err error) {
	st, err := auditRequest(auditGet, auditStatus{})
	return st.BacklogLimit, st.Lost, err
}

// RaiseAuditBacklog sets the kernel's audit backlog limit to at least min
// (AUDIT_SET, CAP_AUDIT_CONTROL), as auditd's rules do (-b 8192): the
// kernel drops records past the limit while its audit thread catches up,
// and the 64 it boots with is soon reached by a workload in complain mode.
// It returns the limit before.
func RaiseAuditBacklog(min uint32) (uint32, error) {
	limit, _, err := AuditBacklog()
	if err != nil || limit >= min || limit == 0 { // 0: no limit
		return limit, err
	}
	_, err = auditRequest(auditSet, auditStatus{Mask: auditStatusBacklogLimit, BacklogLimit: min})
	return limit, err
}

// auditRequest sends one request on the audit socket and returns the
// status of its answer (AUDIT_GET) or nil error on its ACK (AUDIT_SET).
func auditRequest(typ uint16, st auditStatus) (auditStatus, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_AUDIT)
	if err != nil {
		return auditStatus{}, fmt.Errorf("audit netlink socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.Timeval{Sec: 5}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	body := make([]byte, 0, 64)
	for _, v := range []uint32{st.Mask, st.Enabled, st.Failure, st.Pid, st.RateLimit, st.BacklogLimit, st.Lost, st.Backlog, 0, 0} {
		body = binary.NativeEndian.AppendUint32(body, v)
	}
	if typ == auditGet {
		body = body[:0]
	}
	msg := make([]byte, unix.NLMSG_HDRLEN, unix.NLMSG_HDRLEN+len(body))
	binary.NativeEndian.PutUint32(msg[0:], uint32(unix.NLMSG_HDRLEN+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|unix.NLM_F_ACK)
	binary.NativeEndian.PutUint32(msg[8:], 1) // sequence
	msg = append(msg, body...)
	if err := unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return auditStatus{}, fmt.Errorf("audit request %d: %w", typ, err)
	}
	buf := make([]byte, 1<<16)
	var out auditStatus
	for got := false; ; {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			return auditStatus{}, fmt.Errorf("audit request %d: %w", typ, err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return auditStatus{}, err
		}
		for _, m := range msgs {
			switch m.Header.Type {
			case unix.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if code := int32(binary.NativeEndian.Uint32(m.Data)); code != 0 {
						return auditStatus{}, fmt.Errorf("audit request %d: %w", typ, syscall.Errno(-code))
					}
				}
				if typ == auditSet || got {
					return out, nil
				}
			case auditGet:
				if len(m.Data) >= 32 {
					d := m.Data
					u := func(i int) uint32 { return binary.NativeEndian.Uint32(d[4*i:]) }
					out = auditStatus{u(0), u(1), u(2), u(3), u(4), u(5), u(6), u(7)}
					got = true
					return out, nil
				}
			}
		}
	}
}
