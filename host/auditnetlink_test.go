package host

import (
	"bufio"
	"encoding/binary"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// A netlink message of the kernel's audit records, as the multicast group
// delivers them, becomes the kernel log's line, which ParseRecord reads.
func TestFormatAuditMessages(t *testing.T) {
	msg := func(typ uint16, data string) []byte {
		b := make([]byte, syscall.NLMSG_HDRLEN, syscall.NLMSG_HDRLEN+len(data)+4)
		b = append(b, data...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		h := (*syscall.NlMsghdr)(unsafePointer(&b[0]))
		h.Len, h.Type = uint32(syscall.NLMSG_HDRLEN+len(data)), typ
		return b
	}
	// as the audit subsystem sends a record: unpadded
	unpadded := msg(1400, `audit(1764900000.300:303): apparmor="ALLOWED" operation="open" profile="p" name="/abc" pid=1`)
	unpadded = unpadded[:binary.NativeEndian.Uint32(unpadded)]
	if got := string(FormatAuditMessages(unpadded)); got != `audit: type=1400 audit(1764900000.300:303): apparmor="ALLOWED" operation="open" profile="p" name="/abc" pid=1`+"\n" {
		t.Errorf("unpadded record: %q", got)
	}
	in := append(msg(1400, `audit(1764900000.100:301): apparmor="ALLOWED" operation="open" profile="armorshim-learn.web.u.c.0" name="/etc/app.conf" pid=4242 comm="cat" requested_mask="r" denied_mask="r" fsuid=0 ouid=0`+"\x00"),
		msg(1107, `audit(1764900000.200:302): pid=5 uid=0 msg='apparmor="DENIED" operation="open" profile="p" pid=5'`)...)
	out := string(FormatAuditMessages(in))
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "audit: type=1400 audit(1764900000.100:301): apparmor=") {
		t.Fatalf("lines %q", lines)
	}
	if d, ok := ParseRecord(lines[0]); !ok || !d.Allowed || d.Name != "/etc/app.conf" || d.Record != "1764900000.100:301" {
		t.Errorf("ParseRecord(%q) = %+v, %v", lines[0], d, ok)
	}
	if _, ok := ParseRecord(lines[1]); ok {
		t.Errorf("a USER_AVC read as the kernel's record: %q", lines[1])
	}
}

// The multicast group, live: records a process logs (USER_AVCs, which any
// process with CAP_AUDIT_WRITE can send), a burst of them of every length,
// all arrive, whole, and none is taken for AppArmor's.
func TestAuditNetlinkLive(t *testing.T) {
	a, err := OpenAuditNetlink()
	if err != nil {
		t.Fatalf("this test runs as root on a kernel with audit: %v", err)
	}
	defer a.Close()
	send, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_AUDIT)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(send)
	// A forged kernel record sent to the group by a process (root here;
	// CAP_NET_ADMIN will do) is dropped: its sender is not the kernel.
	forged := []byte(`audit(1:1): apparmor="ALLOWED" operation="open" profile="armorshim-learn.web.u.c.0" name="/**" pid=1 requested_mask="rw" armorshim-test-forged` + "\x00")
	fb := make([]byte, syscall.NLMSG_HDRLEN, syscall.NLMSG_HDRLEN+len(forged)+4)
	fb = append(fb, forged...)
	fh := (*syscall.NlMsghdr)(unsafePointer(&fb[0]))
	fh.Len, fh.Type = uint32(len(fb)), 1400
	if err := unix.Sendto(send, fb, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (auditNlgrpReadlog - 1)}); err != nil {
		t.Fatalf("sending to the group: %v", err)
	}
	const n = 200
	got := make(chan []string, 1)
	go func() {
		var lines []string
		sc := bufio.NewScanner(a)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "armorshim-test-") {
				lines = append(lines, sc.Text())
				if len(lines) == n {
					break
				}
			}
		}
		got <- lines
	}()
	for i := 0; i < n; i++ {
		text := `apparmor="ALLOWED" operation="open" profile="armorshim-learn.web.u.c.0" name="/**" pid=1 requested_mask="rw" armorshim-test-` + strings.Repeat("x", i%7) + strconv.Itoa(i)
		data := []byte(text + "\x00")
		b := make([]byte, syscall.NLMSG_HDRLEN, syscall.NLMSG_HDRLEN+len(data)+4)
		b = append(b, data...)
		h := (*syscall.NlMsghdr)(unsafePointer(&b[0]))
		h.Len, h.Type, h.Flags = uint32(len(b)), 1107, syscall.NLM_F_REQUEST // AUDIT_USER_AVC
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
		if err := unix.Sendto(send, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			t.Fatalf("sending a USER_AVC: %v", err)
		}
	}
	select {
	case lines := <-got:
		for _, line := range lines {
			if strings.Contains(line, "forged") {
				t.Errorf("a record a process sent to the group was read: %q", line)
			}
			if !strings.HasPrefix(line, "audit: type=1107 audit(") {
				t.Errorf("line %q", line)
			}
			if _, ok := ParseRecord(line); ok {
				t.Errorf("a forged USER_AVC taken for the kernel's record: %q", line)
			}
		}
	case <-time.After(10 * time.Second):
		a.Close()
		t.Fatalf("not all %d records arrived on the multicast group: %d (is audit disabled, audit=0?)", n, len(<-got))
	}
}

func unsafePointer(b *byte) unsafe.Pointer { return unsafe.Pointer(b) }
