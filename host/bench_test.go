package host_test

// Benchmarks of the host reads behind each CreateContainer decision (issue
// 5, P4): parsing securityfs's profiles file and taking a snapshot, cached
// and after a revision change. Run them with
//
//	go test -run '^$' -bench . ./host

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/armorshim/armorshim/host"
)

// benchProfileCount is the profile count of issue 5's P4.
const benchProfileCount = 10000

// benchProfilesFile is a profiles file with n lines, some of them children
// ("//") and in complain mode, as on a node.
func benchProfilesFile(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("k8s-team-%d-app-%05d", i%23, i)
		if i%50 == 49 {
			name = fmt.Sprintf("k8s-team-%d-app//child-%d", i%23, i)
		}
		mode := "enforce"
		if i%10 == 9 {
			mode = "complain"
		}
		fmt.Fprintf(&b, "%s (%s)\n", name, mode)
	}
	return b.String()
}

// benchSysfs writes a sysfs tree with AppArmor enabled and n profiles, and
// returns its root and the revision file's path.
func benchSysfs(b *testing.B, n int) (root, revision string) {
	root = b.TempDir()
	sec := filepath.Join(root, "kernel", "security", "apparmor")
	for path, data := range map[string]string{
		filepath.Join(root, "module", "apparmor", "parameters", "enabled"): "Y\n",
		filepath.Join(sec, "profiles"):                                     benchProfilesFile(n),
		filepath.Join(sec, "revision"):                                     "1\n",
	} {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	return root, filepath.Join(sec, "revision")
}

func BenchmarkParseProfiles10k(b *testing.B) {
	data := benchProfilesFile(benchProfileCount)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if got := host.ParseProfiles(data); len(got) != benchProfileCount {
			b.Fatalf("%d profiles", len(got))
		}
	}
}

// BenchmarkSnapshotCached10k: the revision is unchanged, so a snapshot costs
// one revision read.
func BenchmarkSnapshotCached10k(b *testing.B) {
	root, _ := benchSysfs(b, benchProfileCount)
	r := host.NewReader(root, "/proc")
	defer r.Close()
	if s := r.Snapshot(); len(s.Profiles) != benchProfileCount {
		b.Fatalf("%d profiles, err %v", len(s.Profiles), s.Err)
	}
	b.ReportAllocs()
	for b.Loop() {
		r.Snapshot()
	}
}

// BenchmarkSnapshotRevisionBump10k: the revision changed before every
// snapshot, so each one re-reads and re-parses the 10000 profiles. The
// revision write is not timed.
func BenchmarkSnapshotRevisionBump10k(b *testing.B) {
	root, revision := benchSysfs(b, benchProfileCount)
	r := host.NewReader(root, "/proc")
	defer r.Close()
	r.Snapshot()
	b.ReportAllocs()
	i := 1
	for b.Loop() {
		b.StopTimer()
		i++
		if err := os.WriteFile(revision, []byte(strconv.Itoa(i)+"\n"), 0o644); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if s := r.Snapshot(); s.Revision != strconv.Itoa(i) {
			b.Fatalf("revision %q, want %d", s.Revision, i)
		}
	}
}
