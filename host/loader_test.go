package host

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeParser installs an apparmor_parser stand-in that logs its arguments,
// fails on files holding "syntax error" with the parser's kind of message,
// and answers --names from "profile NAME" lines.
func fakeParser(t *testing.T) (parser, log string) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "calls.log")
	parser = filepath.Join(dir, "apparmor_parser")
	script := `#!/bin/sh
echo "$*" >> "` + log + `"
file=""
for a in "$@"; do file="$a"; done
case "$1" in
--names) sed -n 's/^profile \([^ ]*\).*/\1/p' "$file"; exit 0 ;;
esac
if grep -q "syntax error" "$file"; then
  echo "AppArmor parser error for $file in profile $file at line 1: syntax error, unexpected TOK_ID" >&2
  exit 1
fi
exit 0
`
	if err := os.WriteFile(parser, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return parser, log
}

func calls(t *testing.T, log string) []string {
	t.Helper()
	data, err := os.ReadFile(log)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(data)), "\n")
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

const denyWriteProfile = `#include <tunables/global>

profile k8s-apparmor-example-deny-write flags=(attach_disconnected) {
  #include <abstractions/base>

  file,

  # Deny all file writes.
  deny /** w,
}
`

func TestLoaderLoadsNewAndChangedFilesOnly(t *testing.T) {
	parser, log := fakeParser(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "deny-write"), denyWriteProfile)
	write(t, filepath.Join(dir, "allow-write"), strings.ReplaceAll(denyWriteProfile, "deny", "allow"))
	// Not profile files: hidden, editor backups, package leftovers, dirs.
	write(t, filepath.Join(dir, ".hidden"), "syntax error")
	write(t, filepath.Join(dir, "deny-write~"), "syntax error")
	write(t, filepath.Join(dir, "x.dpkg-old"), "syntax error")
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	l := &Loader{Dir: dir, TrustedUID: me, Parser: parser, Enabled: func() bool { return true }}
	ctx := context.Background()

	done, err := l.Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 2 || !done[0].Loaded || !done[1].Loaded {
		t.Fatalf("first sync = %+v, want both files loaded", done)
	}
	want := []string{"--replace -- " + filepath.Join(dir, "allow-write"), "--replace -- " + filepath.Join(dir, "deny-write")}
	if got := calls(t, log); strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("parser calls = %q, want %q", got, want)
	}

	if done, _ := l.Sync(ctx); len(done) != 0 {
		t.Fatalf("unchanged directory reloaded %+v", done)
	}

	// A changed file is loaded again; a new one is loaded.
	write(t, filepath.Join(dir, "deny-write"), denyWriteProfile+"\n# edited\n")
	future := time.Now().Add(time.Hour)
	os.Chtimes(filepath.Join(dir, "deny-write"), future, future)
	write(t, filepath.Join(dir, "k8s-nginx"), "profile k8s-nginx {}\n")
	done, _ = l.Sync(ctx)
	if len(done) != 2 || done[0].Name != "deny-write" || done[1].Name != "k8s-nginx" {
		t.Fatalf("after edit+add: %+v", done)
	}

	// A removed file is forgotten, never unloaded.
	if err := os.Remove(filepath.Join(dir, "allow-write")); err != nil {
		t.Fatal(err)
	}
	before := len(calls(t, log))
	if done, _ := l.Sync(ctx); len(done) != 0 {
		t.Fatalf("removal loaded %+v", done)
	}
	if after := calls(t, log); len(after) != before {
		t.Fatalf("removal ran the parser: %q", after[before:])
	}
	files, blocked := l.Status()
	if blocked != "" || len(files) != 2 || files[0].Name != "deny-write" || files[1].Name != "k8s-nginx" {
		t.Fatalf("status = %+v %q", files, blocked)
	}
}

func TestLoaderReportsParserMessage(t *testing.T) {
	parser, _ := fakeParser(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "broken"), "profile broken { syntax error }\n")
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	l := &Loader{Dir: dir, TrustedUID: me, Parser: parser, Now: func() time.Time { return now }}
	done, err := l.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(done) != 1 || done[0].Loaded || !strings.Contains(done[0].Error, "AppArmor parser error for "+filepath.Join(dir, "broken")) {
		t.Fatalf("broken file = %+v, want the parser's message", done)
	}
	files, _ := l.Status()
	if len(files) != 1 || files[0].Loaded || files[0].Error != done[0].Error || files[0].State() != "failed" {
		t.Fatalf("status = %+v", files)
	}
	// Not retried before its backoff.
	if done, _ := l.Sync(context.Background()); len(done) != 0 {
		t.Fatalf("broken file retried at once: %+v", done)
	}
}

// failingParser is an apparmor_parser that fails as the kernel does when
// short of memory for its first n runs, then succeeds.
func failingParser(t *testing.T, n int) (parser, log string) {
	t.Helper()
	dir := t.TempDir()
	log = filepath.Join(dir, "calls.log")
	parser = filepath.Join(dir, "apparmor_parser")
	script := fmt.Sprintf(`#!/bin/sh
echo "$*" >> %q
if [ "$(wc -l < %q)" -le %d ]; then
  echo 'apparmor_parser: Unable to replace "k8s-nginx".  Cannot allocate memory' >&2
  exit 1
fi
`, log, log, n)
	if err := os.WriteFile(parser, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return parser, log
}

func TestLoaderRetriesFailedLoadsWithBackoff(t *testing.T) {
	parser, log := failingParser(t, 2)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "nginx"), "profile k8s-nginx {}\n")
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	l := &Loader{Dir: dir, TrustedUID: me, Parser: parser, Now: func() time.Time { return now }}
	ctx := context.Background()
	syncAt := func(at time.Duration) []ProfileFile {
		t.Helper()
		now = t0.Add(at)
		done, err := l.Sync(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return done
	}

	done := syncAt(0)
	if len(done) != 1 || done[0].Loaded || done[0].Failures != 1 || !done[0].Retry.Equal(t0.Add(time.Second)) ||
		!strings.Contains(done[0].Error, "Cannot allocate memory") {
		t.Fatalf("first load = %+v, want failed once, retry in 1s", done)
	}
	if done := syncAt(999 * time.Millisecond); len(done) != 0 {
		t.Fatalf("retried before its time: %+v", done)
	}
	done = syncAt(time.Second)
	if len(done) != 1 || done[0].Loaded || done[0].Failures != 2 || !done[0].Retry.Equal(t0.Add(3*time.Second)) {
		t.Fatalf("second load = %+v, want failed twice, retry 2s later", done)
	}
	if done := syncAt(2 * time.Second); len(done) != 0 {
		t.Fatalf("retried before its time: %+v", done)
	}
	done = syncAt(3 * time.Second)
	if len(done) != 1 || !done[0].Loaded || done[0].Failures != 0 || done[0].Error != "" || !done[0].Retry.IsZero() {
		t.Fatalf("third load = %+v, want loaded", done)
	}
	if done := syncAt(time.Hour); len(done) != 0 {
		t.Fatalf("a loaded file was loaded again: %+v", done)
	}
	if got := len(calls(t, log)); got != 3 {
		t.Errorf("%d parser runs, want 3", got)
	}
	if got := l.Totals().LoadFailures; got != 2 {
		t.Errorf("LoadFailures = %d, want 2", got)
	}
}

// A new version of a failing file is loaded at once, its count reset.
func TestLoaderLoadsChangedFailingFileAtOnce(t *testing.T) {
	parser, _ := failingParser(t, 10)
	dir := t.TempDir()
	path := filepath.Join(dir, "nginx")
	write(t, path, "profile k8s-nginx {}\n")
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	l := &Loader{Dir: dir, TrustedUID: me, Parser: parser, Now: func() time.Time { return now }}
	for range 3 {
		l.Sync(context.Background())
		now = now.Add(time.Hour)
	}
	if files, _ := l.Status(); files[0].Failures != 3 {
		t.Fatalf("status = %+v, want 3 failures", files)
	}
	write(t, path, "profile k8s-nginx { }\n")
	now = now.Add(-time.Hour + time.Millisecond)
	done, _ := l.Sync(context.Background())
	if len(done) != 1 || done[0].Failures != 1 {
		t.Fatalf("changed file = %+v, want loaded at once, 1 failure", done)
	}
}

func TestRetryBackoff(t *testing.T) {
	var got []time.Duration
	for n := 1; n <= 11; n++ {
		got = append(got, RetryBackoff(n))
	}
	want := "[1s 2s 4s 8s 16s 32s 1m4s 2m8s 4m16s 5m0s 5m0s]"
	if fmt.Sprint(got) != want {
		t.Errorf("RetryBackoff(1..11) = %v, want %v", got, want)
	}
	if d := RetryBackoff(1000); d != 5*time.Minute {
		t.Errorf("RetryBackoff(1000) = %v", d)
	}
}

func TestLoaderStatusFile(t *testing.T) {
	parser, _ := fakeParser(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "broken"), "profile broken { syntax error }\n")
	write(t, filepath.Join(dir, "good"), "profile good {}\n")
	status := filepath.Join(t.TempDir(), "run", "profiles.json")
	t0 := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	l := &Loader{Dir: dir, TrustedUID: me, Parser: parser, StatusFile: status, Now: func() time.Time { return now }}
	l.Sync(context.Background())
	l.writeStatus()
	st, err := ReadStatus(status)
	if err != nil {
		t.Fatal(err)
	}
	if st.Directory != dir || !st.Since.Equal(t0) || st.Pid != os.Getpid() || len(st.Files) != 2 ||
		st.Files[0].Name != "broken" || st.Files[0].Failures != 1 || !strings.Contains(st.Files[0].Error, "syntax error") ||
		!st.Files[0].Retry.Equal(t0.Add(time.Second)) || !st.Files[1].Loaded {
		t.Fatalf("status file = %+v", st)
	}
	// Unchanged: not rewritten.
	now = t0.Add(time.Millisecond)
	l.writeStatus()
	if st, _ := ReadStatus(status); !st.Since.Equal(t0) {
		t.Errorf("unchanged status rewritten at %v", st.Since)
	}
	// Changed: rewritten.
	now = t0.Add(time.Second)
	l.Sync(context.Background())
	l.writeStatus()
	if st, _ := ReadStatus(status); !st.Since.Equal(now) || st.Files[0].Failures != 2 {
		t.Errorf("after the retry: %+v", st)
	}
	if leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(status), ".*")); len(leftovers) != 0 {
		t.Errorf("temporary files left: %q", leftovers)
	}
}

func TestLoaderWaitsForAppArmorAndParser(t *testing.T) {
	parser, log := fakeParser(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "deny-write"), denyWriteProfile)
	enabled := false
	l := &Loader{Dir: dir, TrustedUID: me, Parser: parser, Enabled: func() bool { return enabled }}

	if _, err := l.Sync(context.Background()); err == nil || !strings.Contains(err.Error(), "AppArmor is not enabled") {
		t.Fatalf("AppArmor off: err = %v", err)
	}
	if _, blocked := l.Status(); blocked != "AppArmor is not enabled on the host" {
		t.Fatalf("blocked = %q", blocked)
	}
	if got := calls(t, log); len(got) != 0 {
		t.Fatalf("parser ran while AppArmor was off: %q", got)
	}

	enabled = true
	l.Parser = filepath.Join(t.TempDir(), "missing_parser")
	if _, err := l.Sync(context.Background()); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("parser missing: err = %v", err)
	}

	l.Parser = parser
	done, err := l.Sync(context.Background())
	if err != nil || len(done) != 1 || !done[0].Loaded {
		t.Fatalf("once possible: %+v %v", done, err)
	}
	if _, blocked := l.Status(); blocked != "" {
		t.Fatalf("still blocked: %q", blocked)
	}
}

func TestLoaderMissingDirectory(t *testing.T) {
	l := &Loader{Dir: filepath.Join(t.TempDir(), "nope"), Parser: "true"}
	if _, err := l.Sync(context.Background()); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("err = %v", err)
	}
}

func TestLoaderNames(t *testing.T) {
	parser, _ := fakeParser(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "deny-write"), denyWriteProfile)
	write(t, filepath.Join(dir, "two"), "profile a {}\nprofile b {}\n")
	l := &Loader{Dir: dir, TrustedUID: me, Parser: parser}
	names, err := l.Names(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got := names["deny-write"]; len(got) != 1 || got[0] != "k8s-apparmor-example-deny-write" {
		t.Errorf("deny-write defines %q", got)
	}
	if got := names["two"]; strings.Join(got, ",") != "a,b" {
		t.Errorf("two defines %q", got)
	}
}

// The parser is found on PATH by its bare name, as on a node.
func TestLoaderFindsParserOnPath(t *testing.T) {
	parser, log := fakeParser(t)
	t.Setenv("PATH", filepath.Dir(parser))
	dir := t.TempDir()
	write(t, filepath.Join(dir, "deny-write"), denyWriteProfile)
	l := &Loader{Dir: dir, TrustedUID: me, Parser: "apparmor_parser"}
	done, err := l.Sync(context.Background())
	if err != nil || len(done) != 1 || !done[0].Loaded {
		t.Fatalf("sync = %+v %v", done, err)
	}
	if got := calls(t, log); len(got) != 1 || got[0] != "--replace -- "+filepath.Join(dir, "deny-write") {
		t.Fatalf("parser calls = %q", got)
	}
}

// me is the uid the tests' files are owned by: the trusted owner in tests.
var me = uint32(os.Getuid())
