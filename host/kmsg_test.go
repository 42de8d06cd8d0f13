package host

import (
	"context"
	"io"
	"strings"
	"syscall"
	"testing"

	"github.com/armorshim/armorshim/apparmor"
)

// Records as the 6.1 kernel writes them to /dev/kmsg and dmesg.
const (
	touchDenied   = `5,1893,58125716,-;audit: type=1400 audit(1764121000.713:97): apparmor="DENIED" operation="mknod" class="file" profile="k8s-apparmor-example-deny-write" name="/tmp/test" pid=4242 comm="touch" requested_mask="c" denied_mask="c" fsuid=0 ouid=0`
	dmesgDenied   = `[  58.125716] audit: type=1400 audit(1764121000.713:98): apparmor="DENIED" operation="open" class="file" profile="k8s-apparmor-example-deny-write" name="/etc/shadow" pid=4300 comm="cat" requested_mask="r" denied_mask="r" fsuid=0 ouid=0`
	hexDenied     = `5,1900,58200000,-;audit: type=1400 audit(1764121001.000:99): apparmor="DENIED" operation="open" class="file" profile=6B38732070726F66696C65 name=2F746D702F6120622F6322 pid=77 comm=6D7920636F6D6D requested_mask="w" denied_mask="w" fsuid=0 ouid=0`
	netDenied     = `5,1901,58300000,-;audit: type=1400 audit(1764121002.000:100): apparmor="DENIED" operation="create" class="net" profile="cri-containerd.apparmor.d" pid=88 comm="ping" family="inet" sock_type="raw" protocol=1 requested_mask="create" denied_mask="create"`
	complainAllow = `5,1902,58400000,-;audit: type=1400 audit(1764121003.000:101): apparmor="ALLOWED" operation="open" class="file" profile="k8s-nginx" name="/tmp/x" pid=99 comm="nginx" requested_mask="w" denied_mask="w" fsuid=0 ouid=0`
	profileLoad   = `5,1903,58500000,-;audit: type=1400 audit(1764121004.000:102): apparmor="STATUS" operation="profile_load" profile="unconfined" name="k8s-apparmor-example-deny-write" pid=1000 comm="apparmor_parser"`
	notAudit      = `6,1904,58600000,-;eth0: link up`
	// auditd's log, log_format = ENRICHED: a GS (0x1d) before the added fields.
	auditdDenied  = "type=AVC msg=audit(1764121005.000:103): apparmor=\"DENIED\" operation=\"open\" class=\"file\" profile=\"k8s-nginx\" name=\"/etc/shadow\" pid=4400 comm=\"cat\" requested_mask=\"r\" denied_mask=\"r\" fsuid=0 ouid=0\x1dFSUID=\"root\" OUID=\"root\""
	auditdSyscall = `type=SYSCALL msg=audit(1764121005.000:103): arch=c000003e syscall=257 success=no exit=-13 pid=4400 comm="cat" exe="/usr/bin/cat" subj=k8s-nginx key=(null)`
)

func TestParseDenial(t *testing.T) {
	for _, c := range []struct {
		line string
		ok   bool
		want Denial
	}{
		{touchDenied, true, Denial{Record: "1764121000.713:97", Operation: "mknod", Profile: "k8s-apparmor-example-deny-write", Name: "/tmp/test", Class: "file", Comm: "touch", Pid: 4242, DeniedMask: "c"}},
		{dmesgDenied, true, Denial{Record: "1764121000.713:98", Operation: "open", Profile: "k8s-apparmor-example-deny-write", Name: "/etc/shadow", Class: "file", Comm: "cat", Pid: 4300, DeniedMask: "r"}},
		{hexDenied, true, Denial{Record: "1764121001.000:99", Operation: "open", Profile: "k8s profile", Name: `/tmp/a b/c"`, Class: "file", Comm: "my comm", Pid: 77, DeniedMask: "w"}},
		{netDenied, true, Denial{Record: "1764121002.000:100", Operation: "create", Profile: "cri-containerd.apparmor.d", Class: "net", Comm: "ping", Pid: 88, DeniedMask: "create"}},
		{auditdDenied, true, Denial{Record: "1764121005.000:103", Operation: "open", Profile: "k8s-nginx", Name: "/etc/shadow", Class: "file", Comm: "cat", Pid: 4400, DeniedMask: "r"}},
		{auditdSyscall, false, Denial{}},
		{complainAllow, false, Denial{}},
		{profileLoad, false, Denial{}},
		{notAudit, false, Denial{}},
		{`audit: type=1400 audit(1:1): apparmor="DENIED" operation="open" profile="p" pid=notanumber`, false, Denial{}},
		{`audit: type=1400 audit(1:1): apparmor="DENIED" operation="open" profile="p" pid=5`, true, Denial{Record: "1:1", Operation: "open", Profile: "p", Pid: 5}},
		{`audit: type=1400 audit(1:1): apparmor="DENIED" operation="open" pid=5`, false, Denial{}},
		// not the kernel's: no record type, or a USER_AVC any process with
		// CAP_AUDIT_WRITE (a container) can log, whatever its text says
		{`apparmor="DENIED" operation="open" profile="p" pid=5`, false, Denial{}},
		{`5,1904,58600000,-;audit: type=1107 audit(1764121006.000:104): pid=5 uid=0 auid=4294967295 ses=4294967295 subj=unconfined msg='apparmor="DENIED" operation="open" profile="p" name="/x" pid=5 comm="x"'`, false, Denial{}},
		{`5,1905,58700000,-;audit: type=1107 audit(1764121006.000:105): pid=5 uid=0 msg='type=1400 audit(1:1): apparmor="DENIED" operation="open" profile="p" pid=5'`, false, Denial{}},
		{`14,1906,58800000,-;audit: type=1400 audit(1764121006.000:107): apparmor="DENIED" operation="open" profile="p" pid=5`, false, Denial{}}, // written to /dev/kmsg by a process
		{`type=USER_AVC msg=audit(1764121006.000:106): pid=5 uid=0 msg='apparmor="DENIED" operation="open" profile="p" pid=5'`, false, Denial{}},
		{``, false, Denial{}},
	} {
		got, ok := ParseDenial(c.line)
		if ok != c.ok || got != c.want {
			t.Errorf("ParseDenial(%.60q...) = %+v, %t; want %+v, %t", c.line, got, ok, c.want, c.ok)
		}
	}
}

// chunks hands out one chunk per Read, like /dev/kmsg hands out a record,
// with an injected error after some of them.
type chunks struct {
	items []string
	errs  map[int]error
	i     int
}

func (c *chunks) Read(p []byte) (int, error) {
	if c.i >= len(c.items) {
		return 0, io.EOF
	}
	i := c.i
	c.i++
	n := copy(p, c.items[i])
	return n, c.errs[i]
}

func TestFollowDenials(t *testing.T) {
	// Each Read one record, as from /dev/kmsg, with an overrun in between.
	src := &chunks{
		items: []string{touchDenied + "\n", notAudit + "\n", "", complainAllow + "\n SUBSYSTEM=audit\n", netDenied + "\n"},
		errs:  map[int]error{2: syscall.EPIPE},
	}
	var stats FollowStats
	var got []Denial
	if err := FollowDenials(context.Background(), src, &stats, func(d Denial) { got = append(got, d) }); err != nil {
		t.Fatal(err)
	}
	// The complain-mode record comes as what it is, ALLOWED, for learning.
	if len(got) != 3 || got[0].Pid != 4242 || got[0].Allowed || !got[1].Allowed || got[1].RequestedMask != "w" || got[2].Comm != "ping" || got[2].Allowed {
		t.Fatalf("records = %+v", got)
	}
	if stats.Overruns != 1 || stats.Records != 4 {
		t.Errorf("stats = %+v, want 4 records and 1 overrun", stats)
	}

	// Recorded text: many records per read, split anywhere.
	text := strings.Join([]string{dmesgDenied, profileLoad, hexDenied, touchDenied}, "\n") + "\n"
	src = &chunks{items: []string{text[:100], text[100:333], text[333:]}}
	got, stats = nil, FollowStats{}
	if err := FollowDenials(context.Background(), src, &stats, func(d Denial) { got = append(got, d) }); err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Pid != 4300 || got[1].Profile != "k8s profile" || got[2].Pid != 4242 {
		t.Fatalf("denials from split text = %+v", got)
	}

	// Any other read error ends it.
	src = &chunks{items: []string{""}, errs: map[int]error{0: syscall.EIO}}
	if err := FollowDenials(context.Background(), src, &stats, func(Denial) {}); err == nil {
		t.Error("EIO did not end the follower")
	}
}

func FuzzParseDenial(f *testing.F) {
	for _, s := range []string{touchDenied, dmesgDenied, hexDenied, netDenied, complainAllow, profileLoad, notAudit, auditdDenied} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, line string) {
		d, ok := ParseDenial(line)
		if ok && (d.Profile == "" || !strings.Contains(line, `apparmor="DENIED"`)) {
			t.Fatalf("accepted %q as %+v", line, d)
		}
	})
}

// ALLOWED records of a learning profile, as kernels from 6.2 write them
// (with class=) for a workload in complain mode; Debian 12's 6.1 in
// TestParseAllowedRecordsWithoutClass.
func TestParseAllowedRecords(t *testing.T) {
	const prefix = `6,2201,98000000,-;audit: type=1400 audit(1764900000.100:301): apparmor="ALLOWED" `
	for _, c := range []struct {
		line string
		want apparmor.Access
	}{
		{`operation="open" class="file" profile="armorshim-learn.web.u.c.0" name="/etc/app.conf" pid=4242 comm="cat" requested_mask="r" denied_mask="r" fsuid=0 ouid=0`,
			apparmor.Access{Class: "file", Operation: "open", Name: "/etc/app.conf", Mask: "r"}},
		{`operation="exec" class="file" profile="armorshim-learn.web.u.c.0" name="/bin/helper" pid=4243 comm="sh" requested_mask="x" denied_mask="x" fsuid=0 ouid=0 target="armorshim-learn.web.u.c.0//null-/bin/helper"`,
			apparmor.Access{Class: "file", Operation: "exec", Name: "/bin/helper", Mask: "x", Target: "armorshim-learn.web.u.c.0//null-/bin/helper"}},
		{`operation="capable" class="cap" profile="armorshim-learn.web.u.c.0" pid=4244 comm="nc" capability=10  capname="net_bind_service"`,
			apparmor.Access{Class: "cap", Operation: "capable", Capname: "net_bind_service"}},
		{`operation="create" class="net" profile="armorshim-learn.web.u.c.0" pid=4244 comm="nc" family="inet" sock_type="stream" protocol=6 requested_mask="create" denied_mask="create"`,
			apparmor.Access{Class: "net", Operation: "create", Family: "inet", SockType: "stream", Mask: "create"}},
		{`operation="signal" class="signal" profile="armorshim-learn.web.u.c.0" pid=4245 comm="sh" requested_mask="send" denied_mask="send" signal=term peer="armorshim-learn.web.u.c.0//null-/bin/helper"`,
			apparmor.Access{Class: "signal", Operation: "signal", Mask: "send", Signal: "term", Peer: "armorshim-learn.web.u.c.0//null-/bin/helper"}},
	} {
		d, ok := ParseRecord(prefix + c.line)
		if !ok || !d.Allowed || d.Access() != c.want {
			t.Errorf("ParseRecord(%.50q...) = %+v, %v;\nwant access %+v", c.line, d.Access(), ok, c.want)
		}
		if _, ok := ParseDenial(prefix + c.line); ok {
			t.Errorf("ParseDenial took an ALLOWED record for a denial: %.50q", c.line)
		}
	}
}

// Debian 12's kernel (6.1) writes no class=: the class is inferred. An
// audit rule's record (apparmor="AUDIT", the learning profile's exec rule)
// is an allowed access too; a forged USER_AVC is none.
func TestParseAllowedRecordsWithoutClass(t *testing.T) {
	const prefix = `6,2201,98000000,-;audit: type=1400 audit(1764900000.100:301): `
	for _, c := range []struct {
		line string
		want apparmor.Access
	}{
		{`apparmor="ALLOWED" operation="open" profile="armorshim-learn.web.u.c.0" name="/etc/app.conf" pid=4242 comm="cat" requested_mask="r" denied_mask="r" fsuid=0 ouid=0`,
			apparmor.Access{Class: "file", Operation: "open", Name: "/etc/app.conf", Mask: "r"}},
		{`apparmor="AUDIT" operation="exec" profile="armorshim-learn.web.u.c.0" name="/bin/date" pid=4243 comm="sh" requested_mask="x" fsuid=0 ouid=0`,
			apparmor.Access{Class: "file", Operation: "exec", Name: "/bin/date", Mask: "x"}},
		{`apparmor="ALLOWED" operation="capable" profile="armorshim-learn.web.u.c.0" pid=4244 comm="nc" capability=10  capname="net_bind_service"`,
			apparmor.Access{Class: "cap", Operation: "capable", Capname: "net_bind_service"}},
		{`apparmor="ALLOWED" operation="connect" profile="armorshim-learn.web.u.c.0" pid=4244 comm="nc" family="inet" sock_type="stream" protocol=6 requested_mask="connect" denied_mask="connect"`,
			apparmor.Access{Class: "net", Operation: "connect", Family: "inet", SockType: "stream", Mask: "connect"}},
		{`apparmor="ALLOWED" operation="signal" profile="armorshim-learn.web.u.c.0" pid=4245 comm="sh" requested_mask="send" denied_mask="send" signal=term peer="armorshim-learn.web.u.c.0"`,
			apparmor.Access{Class: "signal", Operation: "signal", Mask: "send", Signal: "term", Peer: "armorshim-learn.web.u.c.0"}},
		{`apparmor="ALLOWED" operation="mount" info="failed flags match" error=-13 profile="armorshim-learn.web.u.c.0" name="/mnt/" pid=4246 comm="mount" fstype="tmpfs" srcname=746D7066732031 flags="rw"`,
			apparmor.Access{Class: "mount", Operation: "mount", Name: "/mnt/", FsType: "tmpfs", SrcName: "tmpfs 1", Flags: "rw"}},
	} {
		d, ok := ParseRecord(prefix + c.line)
		if !ok || !d.Allowed || d.Access() != c.want {
			t.Errorf("ParseRecord(%.50q...) = %+v, %v;\nwant access %+v", c.line, d.Access(), ok, c.want)
		}
	}
	if _, ok := ParseRecord(`audit: type=1107 audit(1:2): pid=1 uid=0 msg='apparmor="ALLOWED" operation="open" profile="armorshim-learn.web.u.c.0" name="/**" pid=1 requested_mask="rw"'`); ok {
		t.Error("a USER_AVC taken for the kernel's record")
	}
}
