package host

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func chmod(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

func symlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

func TestLoaderRefusesUntrustedFiles(t *testing.T) {
	parser, log := fakeParser(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "good"), "profile good {}\n")
	write(t, filepath.Join(dir, "world-writable"), "profile ww {}\n")
	chmod(t, filepath.Join(dir, "world-writable"), 0o666)
	write(t, filepath.Join(dir, "group-writable"), "profile gw {}\n")
	chmod(t, filepath.Join(dir, "group-writable"), 0o664)

	// A symlink into a world-writable directory (sticky, as /tmp): the file
	// there is the test's own, but anyone could have put it there.
	tmp := t.TempDir()
	chmod(t, tmp, 0o1777)
	write(t, filepath.Join(tmp, "evil"), "profile cri-containerd.apparmor.d flags=(unconfined) {}\n")
	symlink(t, filepath.Join(tmp, "evil"), filepath.Join(dir, "into-tmp"))

	// A symlink through a world-writable directory that is not sticky:
	// anyone could rename what lies below it.
	open := t.TempDir()
	chmod(t, open, 0o777)
	if err := os.Mkdir(filepath.Join(open, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(open, "sub", "p"), "profile through {}\n")
	symlink(t, filepath.Join(open, "sub", "p"), filepath.Join(dir, "through-open"))

	// A symlink, relative and through a second link, to a trusted file of
	// a trusted directory is followed (a ConfigMap volume's layout).
	shared := t.TempDir()
	chmod(t, shared, 0o755)
	if err := os.Mkdir(filepath.Join(dir, "..2024"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(dir, "..2024", "linked"), "profile linked {}\n")
	symlink(t, "..2024", filepath.Join(dir, "..data"))
	symlink(t, "..data/linked", filepath.Join(dir, "linked"))

	l := &Loader{Dir: dir, TrustedUID: me, Parser: parser}
	done, err := l.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{
		"good":           "",
		"linked":         "",
		"world-writable": "writable by others",
		"group-writable": "writable by group",
		"into-tmp":       "symlink to " + filepath.Join(tmp, "evil") + ": directory " + tmp + " is writable by others",
		"through-open":   "symlink to " + filepath.Join(open, "sub", "p") + ": directory " + open + " is writable by others",
	}
	if len(done) != len(want) {
		t.Fatalf("sync = %+v, want %d files", done, len(want))
	}
	for _, f := range done {
		w, ok := want[f.Name]
		switch {
		case !ok:
			t.Errorf("unexpected file %+v", f)
		case w == "" && (!f.Loaded || f.Refused != "" || f.State() != "loaded"):
			t.Errorf("%s = %+v, want loaded", f.Name, f)
		case w != "" && (f.Loaded || f.Refused != w || f.State() != "refused"):
			t.Errorf("%s = %+v, want refused: %s", f.Name, f, w)
		}
	}
	got := calls(t, log)
	wantCalls := []string{"--replace -- " + filepath.Join(dir, "good"), "--replace -- " + filepath.Join(dir, "linked")}
	if strings.Join(got, "|") != strings.Join(wantCalls, "|") {
		t.Fatalf("parser calls = %q, want only the trusted files %q", got, wantCalls)
	}

	// Refused again: nothing new to report, the parser is not run.
	if done, _ := l.Sync(context.Background()); len(done) != 0 {
		t.Fatalf("second sync = %+v", done)
	}
	// Made trusted without touching the content: loaded at the next sync.
	chmod(t, filepath.Join(dir, "world-writable"), 0o644)
	done, _ = l.Sync(context.Background())
	if len(done) != 1 || done[0].Name != "world-writable" || !done[0].Loaded {
		t.Fatalf("after chmod 0644: %+v", done)
	}
	files, _ := l.Status()
	states := map[string]string{}
	for _, f := range files {
		states[f.Name] = f.State()
	}
	if fmt.Sprint(states) != "map[good:loaded group-writable:refused into-tmp:refused linked:loaded through-open:refused world-writable:loaded]" {
		t.Errorf("status = %v", states)
	}
	refused, err := l.Refused()
	if err != nil || len(refused) != 3 || refused["into-tmp"] != want["into-tmp"] {
		t.Errorf("Refused() = %q, %v", refused, err)
	}
	names, err := l.Names(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := names["into-tmp"]; ok || len(names) != 3 {
		t.Errorf("Names ran the parser on untrusted files: %q", names)
	}
}

// A file the trusted uid does not own is refused: the tests' files are owned
// by the test's uid, so another uid is trusted here.
func TestLoaderRefusesFilesOfOtherOwners(t *testing.T) {
	parser, log := fakeParser(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "mine"), "profile mine {}\n")
	l := &Loader{Dir: dir, TrustedUID: me + 1, Parser: parser}
	done, err := l.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("owned by uid %d", me)
	if len(done) != 1 || done[0].Loaded || done[0].Refused != want {
		t.Fatalf("sync = %+v, want refused: %s", done, want)
	}
	if got := calls(t, log); len(got) != 0 {
		t.Fatalf("parser ran: %q", got)
	}
	// The default trusted uid is root.
	if got := (&Loader{}).TrustedUID; got != 0 {
		t.Errorf("default trusted uid %d", got)
	}
}

func TestLoaderRefusesUntrustedDirectory(t *testing.T) {
	parser, log := fakeParser(t)
	dir := t.TempDir()
	write(t, filepath.Join(dir, "a"), "profile a {}\n")
	write(t, filepath.Join(dir, "b"), "profile b {}\n")
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Sticky does not help the directory that holds the files.
	chmod(t, dir, 0o1777)
	l := &Loader{Dir: dir, TrustedUID: me, Parser: parser}
	done, err := l.Sync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	want := "directory " + dir + " is writable by others"
	if len(done) != 2 || done[0].Refused != want || done[1].Refused != want {
		t.Fatalf("sync = %+v, want both refused: %s", done, want)
	}
	chmod(t, dir, 0o775)
	want = "directory " + dir + " is writable by group"
	if done, _ := l.Sync(context.Background()); len(done) != 2 || done[0].Refused != want {
		t.Fatalf("group-writable: %+v", done)
	}
	if got := calls(t, log); len(got) != 0 {
		t.Fatalf("parser ran: %q", got)
	}
	// Through a symlink to the directory, the real directory is judged.
	link := filepath.Join(t.TempDir(), "profiles.d")
	symlink(t, dir, link)
	l = &Loader{Dir: link, TrustedUID: me, Parser: parser}
	if done, _ := l.Sync(context.Background()); len(done) != 2 || done[0].Refused != want {
		t.Fatalf("through a symlink: %+v", done)
	}
	chmod(t, dir, 0o755)
	if done, _ := l.Sync(context.Background()); len(done) != 2 || !done[0].Loaded || !done[1].Loaded {
		t.Fatalf("once 0755: %+v", done)
	}
}

// A directory owned by another uid is refused: as root the test gives it
// away; otherwise it trusts another uid than its own.
func TestTrustDirectoryOwner(t *testing.T) {
	dir := t.TempDir()
	trusted, owner := me, uint32(65534)
	if me == 0 {
		if err := os.Chown(dir, int(owner), -1); err != nil {
			t.Fatal(err)
		}
	} else {
		trusted, owner = me+1, me
	}
	_, err := newTrust(trusted).directory(dir)
	want := fmt.Sprintf("directory %s is owned by uid %d", dir, owner)
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %s", err, want)
	}
}

func TestTrustSymlinks(t *testing.T) {
	root := t.TempDir()
	tr := newTrust(me)
	write(t, filepath.Join(root, "f"), "x")
	// A loop is an error, not a hang.
	symlink(t, "loop2", filepath.Join(root, "loop1"))
	symlink(t, "loop1", filepath.Join(root, "loop2"))
	if _, err := tr.file(filepath.Join(root, "loop1")); err == nil || !strings.Contains(err.Error(), "too many levels of symbolic links") {
		t.Errorf("loop: err = %v", err)
	}
	// Dangling links and directories are not profile files, not refusals.
	symlink(t, "nowhere", filepath.Join(root, "dangling"))
	var r refusal
	for _, name := range []string{"dangling", "."} {
		if _, err := tr.file(filepath.Join(root, name)); err == nil || errorsAs(err, &r) {
			t.Errorf("%s: err = %v, want an error that is not a refusal", name, err)
		}
	}
	// ".." after a link is taken from where the link led.
	if err := os.MkdirAll(filepath.Join(root, "a", "b"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(root, "a", "g"), "x")
	symlink(t, filepath.Join(root, "a", "b"), filepath.Join(root, "tob"))
	fi, err := tr.file(root + "/tob/../g")
	if err != nil || fi.Size() != 1 {
		t.Errorf("tob/../g: %v %v", fi, err)
	}
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
