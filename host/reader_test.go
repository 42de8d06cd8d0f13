package host_test

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/armorshim/armorshim/apparmor"
	"github.com/armorshim/armorshim/host"
)

// Reader is what the decision asks.
var _ apparmor.Host = (*host.Reader)(nil)

// fakeHost is a sysfs and a procfs tree in a temporary directory.
type fakeHost struct {
	t              *testing.T
	sysfs, procfs  string
	securityfs     string
	param          string
	profilesPath   string
	revisionPath   string
	mountsPath     string
	securityfsLine string
}

func newFakeHost(t *testing.T) *fakeHost {
	t.Helper()
	root := t.TempDir()
	h := &fakeHost{t: t, sysfs: filepath.Join(root, "sys"), procfs: filepath.Join(root, "proc")}
	h.securityfs = filepath.Join(h.sysfs, "kernel", "security", "apparmor")
	h.param = filepath.Join(h.sysfs, "module", "apparmor", "parameters", "enabled")
	h.profilesPath = filepath.Join(h.securityfs, "profiles")
	h.revisionPath = filepath.Join(h.securityfs, "revision")
	h.mountsPath = filepath.Join(h.procfs, "self", "mounts")
	h.securityfsLine = "securityfs " + filepath.Dir(h.securityfs) + " securityfs rw,nosuid,nodev,noexec,relatime 0 0\n"
	for _, d := range []string{h.sysfs, h.procfs} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

// enabledWith is a host with AppArmor on, securityfs mounted and the given
// profiles and revision ("" for no revision file).
func enabledWith(t *testing.T, profilesData, revision string) *fakeHost {
	h := newFakeHost(t)
	h.write(h.param, "Y\n")
	h.write(h.mountsPath, "proc /proc proc rw 0 0\n"+h.securityfsLine)
	h.write(h.profilesPath, profilesData)
	if revision != "" {
		h.write(h.revisionPath, revision)
	}
	return h
}

// write replaces a file's content in place (same inode, as securityfs does).
func (h *fakeHost) write(path, content string) {
	h.t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		h.t.Fatal(err)
	}
}

// mkdir makes path a directory: reading it as a file fails with EISDIR,
// even as root.
func (h *fakeHost) mkdir(path string) {
	h.t.Helper()
	if err := os.RemoveAll(path); err != nil {
		h.t.Fatal(err)
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		h.t.Fatal(err)
	}
}

func (h *fakeHost) reader() *host.Reader {
	r := host.NewReader(h.sysfs, h.procfs)
	h.t.Cleanup(func() { r.Close() })
	return r
}

var seedSet = profiles{
	"apparmor-test-deny-write":  apparmor.ModeEnforce,
	"apparmor-test-audit-write": apparmor.ModeEnforce,
	"docker-default":            apparmor.ModeEnforce,
	"k8s-nginx":                 apparmor.ModeEnforce,
}

const allowWriteLine = "k8s-apparmor-example-allow-write (enforce)\n"

func TestReaderEnabled(t *testing.T) {
	tests := []struct {
		name     string
		param    string
		revision string
	}{
		{"with revision", "Y\n", "1\n"},
		{"without revision file", "Y\n", ""},
		{"parameter without newline", "Y", "42"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := enabledWith(t, seedProfiles+"/usr/bin/foo//null-/bin/sh (complain)\n", tt.revision)
			h.write(h.param, tt.param)
			s := h.reader().Snapshot()
			if s == nil {
				t.Fatal("nil snapshot")
			}
			if !s.Enabled || s.Err != nil || s.Detail != "" {
				t.Fatalf("snapshot = %+v, want enabled without error or detail", s)
			}
			want := maps.Clone(seedSet)
			want["/usr/bin/foo//null-/bin/sh"] = apparmor.ModeComplain
			if !maps.Equal(s.Profiles, want) {
				t.Errorf("profiles = %q, want %q", s.Profiles, want)
			}
			if wantRev := strings.TrimSpace(tt.revision); s.Revision != wantRev {
				t.Errorf("revision = %q, want %q", s.Revision, wantRev)
			}
		})
	}
}

func TestReaderEmptyProfileList(t *testing.T) {
	h := enabledWith(t, "", "1")
	s := h.reader().Snapshot()
	if !s.Enabled || s.Err != nil || len(s.Profiles) != 0 {
		t.Errorf("snapshot = %+v, want enabled with no profiles", s)
	}
}

func TestReaderNotEnabled(t *testing.T) {
	tests := []struct {
		name       string
		setup      func(h *fakeHost)
		wantDetail []string
	}{
		{
			name: "module disabled (apparmor=0)",
			setup: func(h *fakeHost) {
				h.write(h.param, "N\n")
			},
			wantDetail: []string{"disabled", `"N"`, "parameters/enabled"},
		},
		{
			name: "module disabled although securityfs has profiles",
			setup: func(h *fakeHost) {
				h.write(h.param, "N\n")
				h.write(h.profilesPath, seedProfiles)
				h.write(h.revisionPath, "3\n")
			},
			wantDetail: []string{"disabled", `"N"`},
		},
		{
			name:       "empty parameter",
			setup:      func(h *fakeHost) { h.write(h.param, "") },
			wantDetail: []string{"disabled", `""`},
		},
		{
			name:       "no module parameter",
			setup:      func(h *fakeHost) {},
			wantDetail: []string{"no AppArmor module", "does not exist"},
		},
		{
			name: "no module parameter although securityfs has profiles",
			setup: func(h *fakeHost) {
				h.write(h.profilesPath, seedProfiles)
			},
			wantDetail: []string{"no AppArmor module"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newFakeHost(t)
			tt.setup(h)
			s := h.reader().Snapshot()
			if s.Enabled || s.Err != nil || s.Profiles != nil {
				t.Fatalf("snapshot = %+v, want not enabled, no error, no profiles", s)
			}
			for _, want := range tt.wantDetail {
				if !strings.Contains(s.Detail, want) {
					t.Errorf("detail %q does not contain %q", s.Detail, want)
				}
			}
		})
	}
}

func TestReaderErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup func(h *fakeHost)
		check func(t *testing.T, h *fakeHost, err error)
	}{
		{
			name: "securityfs not mounted",
			setup: func(h *fakeHost) {
				h.write(h.param, "Y\n")
				h.write(h.mountsPath, "proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n")
			},
			check: func(t *testing.T, h *fakeHost, err error) {
				for _, want := range []string{"securityfs is not mounted", "mount -t securityfs securityfs " + filepath.Dir(h.securityfs)} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not contain %q", err, want)
					}
				}
			},
		},
		{
			name: "securityfs mounted but no apparmor directory",
			setup: func(h *fakeHost) {
				h.write(h.param, "Y\n")
				h.write(h.mountsPath, h.securityfsLine)
			},
			check: func(t *testing.T, h *fakeHost, err error) {
				if !errors.Is(err, fs.ErrNotExist) || strings.Contains(err.Error(), "not mounted") {
					t.Errorf("error = %v, want the read error itself", err)
				}
			},
		},
		{
			name: "mount table unreadable: report the read error",
			setup: func(h *fakeHost) {
				h.write(h.param, "Y\n")
			},
			check: func(t *testing.T, h *fakeHost, err error) {
				if !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), "profiles") {
					t.Errorf("error = %v, want the profiles read error", err)
				}
			},
		},
		{
			name: "profiles unreadable",
			setup: func(h *fakeHost) {
				h.write(h.param, "Y\n")
				h.write(h.mountsPath, h.securityfsLine)
				h.write(h.revisionPath, "5\n")
				h.mkdir(h.profilesPath)
			},
			check: func(t *testing.T, h *fakeHost, err error) {
				if !strings.Contains(err.Error(), "profiles") {
					t.Errorf("error %q does not name the profiles file", err)
				}
			},
		},
		{
			name: "module parameter unreadable",
			setup: func(h *fakeHost) {
				h.mkdir(h.param)
				h.write(h.profilesPath, seedProfiles)
			},
			check: func(t *testing.T, h *fakeHost, err error) {
				if !strings.Contains(err.Error(), "enabled") {
					t.Errorf("error %q does not name the parameter", err)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newFakeHost(t)
			tt.setup(h)
			r := h.reader()
			s := r.Snapshot()
			if s.Err == nil || s.Enabled {
				t.Fatalf("snapshot = %+v, want an error and not enabled", s)
			}
			tt.check(t, h, s.Err)

			// The decision fails closed on it, naming the cause.
			req := &runtimeapi.CreateContainerRequest{Config: &runtimeapi.ContainerConfig{
				Metadata: &runtimeapi.ContainerMetadata{Name: "hello"},
				Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
					Apparmor: &runtimeapi.SecurityProfile{ProfileType: runtimeapi.SecurityProfile_Localhost, LocalhostRef: "k8s-nginx"},
				}},
			}}
			_, err := apparmor.Decide(req, r, nil)
			st, _ := status.FromError(err)
			if err == nil || st.Code() != codes.FailedPrecondition ||
				!strings.HasPrefix(st.Message(), "Blocked: Cannot enforce AppArmor: ") || !strings.Contains(st.Message(), s.Err.Error()) {
				t.Errorf("Decide = %v, want Blocked with the cause %q", err, s.Err)
			}
		})
	}
}

func TestReaderCachesByRevision(t *testing.T) {
	h := enabledWith(t, seedProfiles, "1\n")
	r := h.reader()

	s1 := r.Snapshot()
	if !maps.Equal(s1.Profiles, seedSet) || s1.Revision != "1" {
		t.Fatalf("first snapshot = %+v", s1)
	}

	// Profiles change but the revision does not: the cached set is reused,
	// proving nothing was re-read.
	h.write(h.profilesPath, seedProfiles+allowWriteLine)
	s2 := r.Snapshot()
	if s2 != s1 {
		t.Fatalf("same revision gave a new snapshot %p, want the cached %p", s2, s1)
	}
	if _, ok := s2.Profiles["k8s-apparmor-example-allow-write"]; ok {
		t.Fatal("the profiles were re-read although the revision did not change")
	}

	// The revision changes: a new snapshot with the new set.
	h.write(h.revisionPath, "2\n")
	s3 := r.Snapshot()
	if s3 == s1 {
		t.Fatal("a changed revision returned the cached snapshot")
	}
	if s3.Revision != "2" || s3.Profiles["k8s-apparmor-example-allow-write"] != apparmor.ModeEnforce {
		t.Fatalf("after the revision change: %+v", s3)
	}
	// The old snapshot is not modified: decisions may still hold it.
	if _, ok := s1.Profiles["k8s-apparmor-example-allow-write"]; ok || s1.Revision != "1" {
		t.Errorf("the old snapshot was modified: %+v", s1)
	}
	if s4 := r.Snapshot(); s4 != s3 {
		t.Error("the new snapshot is not cached")
	}

	// A profile removed with a revision bump is gone.
	h.write(h.profilesPath, "docker-default (enforce)\n")
	h.write(h.revisionPath, "3\n")
	if s5 := r.Snapshot(); !maps.Equal(s5.Profiles, profiles{"docker-default": apparmor.ModeEnforce}) {
		t.Errorf("after removal: %q", s5.Profiles)
	}
}

func TestReaderWithoutRevisionReadsEveryTime(t *testing.T) {
	h := enabledWith(t, seedProfiles, "")
	r := h.reader()
	s1 := r.Snapshot()
	if !maps.Equal(s1.Profiles, seedSet) {
		t.Fatalf("first snapshot: %q", s1.Profiles)
	}
	h.write(h.profilesPath, seedProfiles+allowWriteLine)
	s2 := r.Snapshot()
	if s2 == s1 {
		t.Fatal("without a revision file the snapshot was cached")
	}
	if s2.Profiles["k8s-apparmor-example-allow-write"] != apparmor.ModeEnforce {
		t.Errorf("the new profile is missing: %q", s2.Profiles)
	}

	// AppArmor turned off (no revision either): seen at once.
	h.write(h.param, "N\n")
	if s3 := r.Snapshot(); s3.Enabled {
		t.Errorf("snapshot after disabling: %+v", s3)
	}
}

func TestReaderUnreadableRevisionReadsEveryTime(t *testing.T) {
	h := enabledWith(t, seedProfiles, "")
	h.mkdir(h.revisionPath) // opens, but every read fails
	r := h.reader()
	s1 := r.Snapshot()
	if !s1.Enabled || s1.Err != nil || !maps.Equal(s1.Profiles, seedSet) {
		t.Fatalf("first snapshot: %+v", s1)
	}
	h.write(h.profilesPath, allowWriteLine)
	s2 := r.Snapshot()
	if s2 == s1 || !maps.Equal(s2.Profiles, profiles{"k8s-apparmor-example-allow-write": apparmor.ModeEnforce}) {
		t.Errorf("second snapshot %+v was not re-read", s2)
	}
}

// TestReaderDoesNotCacheFailures: a failed read must not stick until the next
// policy change; the next snapshot tries again.
func TestReaderDoesNotCacheFailures(t *testing.T) {
	h := enabledWith(t, "", "5\n")
	h.mkdir(h.profilesPath)
	r := h.reader()
	if s := r.Snapshot(); s.Err == nil {
		t.Fatalf("snapshot = %+v, want an error", s)
	}
	if err := os.Remove(h.profilesPath); err != nil {
		t.Fatal(err)
	}
	h.write(h.profilesPath, seedProfiles)
	s := r.Snapshot() // same revision
	if s.Err != nil || !s.Enabled || !maps.Equal(s.Profiles, seedSet) {
		t.Fatalf("after the profiles became readable: %+v, want the seed set", s)
	}
	if again := r.Snapshot(); again != s {
		t.Error("the good snapshot is not cached")
	}
}

// openFDsTo counts this process's descriptors open on path.
func openFDsTo(t *testing.T, path string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot list descriptors: %v", err)
	}
	n := 0
	for _, e := range entries {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && target == path {
			n++
		}
	}
	return n
}

func TestReaderClose(t *testing.T) {
	if err := host.NewReader(t.TempDir(), t.TempDir()).Close(); err != nil {
		t.Errorf("Close of an unused reader: %v", err)
	}

	h := enabledWith(t, seedProfiles, "1\n")
	r := host.NewReader(h.sysfs, h.procfs)
	s1 := r.Snapshot()
	if n := openFDsTo(t, h.revisionPath); n != 1 {
		t.Fatalf("%d descriptors on the revision file after Snapshot, want 1", n)
	}
	r.Snapshot()
	if n := openFDsTo(t, h.revisionPath); n != 1 {
		t.Fatalf("%d descriptors on the revision file after two snapshots, want 1", n)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if n := openFDsTo(t, h.revisionPath); n != 0 {
		t.Errorf("%d descriptors on the revision file after Close, want 0", n)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}

	// Close drops the cache: a later snapshot reads again.
	h.write(h.profilesPath, allowWriteLine)
	s2 := r.Snapshot()
	defer r.Close()
	if s2 == s1 || !maps.Equal(s2.Profiles, profiles{"k8s-apparmor-example-allow-write": apparmor.ModeEnforce}) {
		t.Errorf("snapshot after Close = %+v, want a fresh read", s2)
	}
}

// TestReaderConcurrent runs many snapshots while the policy changes; run it
// with -race.
func TestReaderConcurrent(t *testing.T) {
	h := enabledWith(t, seedProfiles+"gen-0 (enforce)\n", "00000000\n")
	r := h.reader()

	rev, err := os.OpenFile(h.revisionPath, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rev.Close()

	const generations = 200
	done := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-done:
					return
				default:
				}
				s := r.Snapshot()
				if err := checkGeneration(s); err != nil {
					select {
					case errs <- err:
					default:
					}
					return
				}
			}
		}()
	}

	tmp := filepath.Join(h.securityfs, ".profiles.tmp")
	for gen := 1; gen <= generations; gen++ {
		// New profiles first (atomically), then the revision, in place and
		// fixed width, as the kernel bumps it after the change.
		if err := os.WriteFile(tmp, []byte(fmt.Sprintf("%sgen-%d (enforce)\n", seedProfiles, gen)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, h.profilesPath); err != nil {
			t.Fatal(err)
		}
		if _, err := rev.WriteAt([]byte(fmt.Sprintf("%08d\n", gen)), 0); err != nil {
			t.Fatal(err)
		}
	}
	close(done)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	s := r.Snapshot()
	if err := checkGeneration(s); err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("gen-%d", generations); s.Profiles[want] != apparmor.ModeEnforce || s.Revision != fmt.Sprintf("%08d", generations) {
		t.Errorf("final snapshot (revision %q) lacks %s: %q", s.Revision, want, s.Profiles)
	}
}

// checkGeneration: a snapshot is whole: the seed set and exactly one gen-N.
func checkGeneration(s *apparmor.Snapshot) error {
	if s == nil || s.Err != nil || !s.Enabled {
		return fmt.Errorf("bad snapshot %+v", s)
	}
	gens := 0
	for name := range s.Profiles {
		if strings.HasPrefix(name, "gen-") {
			gens++
		}
	}
	if gens != 1 || len(s.Profiles) != len(seedSet)+1 {
		return fmt.Errorf("torn snapshot at revision %q: %q", s.Revision, s.Profiles)
	}
	return nil
}
