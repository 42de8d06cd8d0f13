package host

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tailScript follows path with a Tail whose pauses at the end of the file
// run the next step instead of sleeping; after the last step it ends. It
// returns what each Read returned.
func tailScript(t *testing.T, path string, bufSize int, steps ...func()) []string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	i := 0
	wait := func(context.Context) error {
		if i == len(steps) {
			cancel()
			return nil
		}
		i++
		steps[i-1]()
		return nil
	}
	tail, err := OpenTail(ctx, path, wait)
	if err != nil {
		t.Fatal(err)
	}
	defer tail.Close()
	var reads []string
	buf := make([]byte, bufSize)
	for {
		n, err := tail.Read(buf)
		if n > 0 {
			reads = append(reads, string(buf[:n]))
		}
		if errors.Is(err, os.ErrClosed) {
			return reads
		}
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
	}
}

func appendFile(t *testing.T, path, s string) func() {
	return func() {
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}

func TestTailWholeLinesFromTheEnd(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	os.WriteFile(path, []byte("old record\n"), 0o600)
	reads := tailScript(t, path, 4096,
		appendFile(t, path, "one\ntw"),
		appendFile(t, path, "o\nthr"),
		appendFile(t, path, "ee\n"),
	)
	if got := strings.Join(reads, ""); got != "one\ntwo\nthree\n" {
		t.Errorf("read %q, want the lines written after opening", got)
	}
	for _, r := range reads {
		if !strings.HasSuffix(r, "\n") {
			t.Errorf("a read returned %q: not whole lines", r)
		}
	}
}

func TestTailFollowsRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	os.WriteFile(path, nil, 0o600)
	rotate := func() {
		// auditd: written just before the rename, then a new file.
		appendFile(t, path, "last of old\nunfinish")()
		if err := os.Rename(path, path+".1"); err != nil {
			t.Fatal(err)
		}
	}
	reads := tailScript(t, path, 5,
		appendFile(t, path, "first\n"),
		rotate,
		func() {}, // the path is missing for a while
		appendFile(t, path, "ed? no: new file\n"),
		appendFile(t, path, "second\n"),
	)
	if got, want := strings.Join(reads, ""), "first\nlast of old\ned? no: new file\nsecond\n"; got != want {
		t.Errorf("read %q, want %q", got, want)
	}
}

func TestTailStartsOverWhenTruncated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	os.WriteFile(path, []byte("0123456789 old\n"), 0o600)
	reads := tailScript(t, path, 4096,
		appendFile(t, path, "a\nhalf"),
		func() { os.Truncate(path, 0) },
		appendFile(t, path, "b\n"),
	)
	if got := strings.Join(reads, ""); got != "a\nb\n" {
		t.Errorf("read %q, want a, then b from the truncated file", got)
	}
}

func TestTailFileCreatedLater(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	reads := tailScript(t, path, 4096, func() {}, appendFile(t, path, "x\n"))
	if got := strings.Join(reads, ""); got != "x\n" {
		t.Errorf("read %q, want the new file from its start", got)
	}
}

func TestTailDropsOverlongLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	os.WriteFile(path, nil, 0o600)
	long := strings.Repeat("x", maxTailLine+10)
	reads := tailScript(t, path, 4096,
		appendFile(t, path, long[:maxTailLine/2]),
		appendFile(t, path, long[maxTailLine/2:]),
		appendFile(t, path, "tail\nok\n"),
	)
	if got := strings.Join(reads, ""); got != "ok\n" {
		t.Errorf("read %.40q, want only the line after the overlong one", got)
	}
}
