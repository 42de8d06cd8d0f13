package shim

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
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
