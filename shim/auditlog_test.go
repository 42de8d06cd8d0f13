package shim

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func TestRotatingFileKeepsNFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log", "pss.log")
	r, err := openRotating(path, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	line := strings.Repeat("x", 39) + "\n" // 40 bytes: two lines per file
	for i := 0; i < 7; i++ {
		if _, err := r.Write([]byte(fmt.Sprintf("%d%s", i, line[1:]))); err != nil {
			t.Fatal(err)
		}
	}
	// 0 1 | 2 3 | 4 5 | 6: the current file holds 6, .1 holds 4 5, .2
	// holds 2 3, and 0 1 are gone.
	for name, want := range map[string]string{"pss.log": "6", "pss.log.1": "45", "pss.log.2": "23"} {
		b, err := os.ReadFile(filepath.Join(filepath.Dir(path), name))
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		for _, l := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
			got += l[:1]
		}
		if got != want {
			t.Errorf("%s holds lines %q, want %q", name, got, want)
		}
	}
	if _, err := os.Stat(path + ".3"); !os.IsNotExist(err) {
		t.Errorf("pss.log.3 exists: %v", err)
	}
	// Reopening appends to the current file.
	r.Close()
	r2, err := openRotating(path, 100, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if r2.size != 40 {
		t.Errorf("reopened size %d, want 40", r2.size)
	}
}

// diskFull lets budget bytes through, then fails writes with ENOSPC as a
// full disk does, part way through a record; truncating fails while
// truncFails.
type diskFull struct {
	*os.File
	budget     int
	truncFails bool
}

func (d *diskFull) Write(b []byte) (int, error) {
	if len(b) <= d.budget {
		d.budget -= len(b)
		return d.File.Write(b)
	}
	n, _ := d.File.Write(b[:d.budget])
	d.budget = 0
	return n, syscall.ENOSPC
}

func (d *diskFull) Truncate(size int64) error {
	if d.truncFails {
		return syscall.EIO
	}
	return d.File.Truncate(size)
}

func TestRotatingFileWritesWholeRecordsOnDiskFull(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pss.log")
	r, err := openRotating(path, 1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	disk := &diskFull{File: r.f.(*os.File), budget: 20}
	r.f = disk
	write := func(rec string, wantErr bool) {
		t.Helper()
		n, err := r.Write([]byte(rec))
		if (err != nil) != wantErr || (err == nil && n != len(rec)) || (err != nil && n != 0) {
			t.Errorf("Write(%q) = %d, %v; want an error: %t", rec, n, err, wantErr)
		}
	}
	check := func(want string) {
		t.Helper()
		if b, _ := os.ReadFile(path); string(b) != want {
			t.Errorf("the log holds %q, want %q", b, want)
		}
	}
	write(`{"record":1}`+"\n", false)
	write(`{"record":2}`+"\n", true) // 7 bytes fit
	check(`{"record":1}` + "\n")

	// A part that cannot be cut off at once is cut off before the next
	// record, or that record is dropped too.
	disk.budget, disk.truncFails = 5, true
	write(`{"record":3}`+"\n", true)
	disk.budget = 100
	write(`{"record":4}`+"\n", true)
	disk.truncFails = false
	write(`{"record":5}`+"\n", false)
	check(`{"record":1}` + "\n" + `{"record":5}` + "\n")
}
