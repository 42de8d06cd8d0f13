package shim

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// logFile is the part of *os.File a rotatingFile writes through.
type logFile interface {
	io.Writer
	Truncate(size int64) error
	Close() error
}

// rotatingFile is an append-only log rotated by size: when a write would
// take it past maxSize, path.1 ... path.N shift up (the oldest is removed)
// and path becomes path.1. Each Write lands whole in one file, or not at
// all: a write that fails part way (disk full) is cut off again, and
// nothing more is written after a part that could not be cut off.
type rotatingFile struct {
	mu      sync.Mutex
	path    string
	maxSize int64
	keep    int
	f       logFile
	size    int64 // of the whole records in f
	torn    bool  // f holds a part of a record past size
}

func openRotating(path string, maxSize int64, keep int) (*rotatingFile, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	r := &rotatingFile{path: path, maxSize: maxSize, keep: keep}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *rotatingFile) open() error {
	f, err := os.OpenFile(r.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	r.f, r.size, r.torn = f, st.Size(), false
	return nil
}

func (r *rotatingFile) Write(b []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return 0, os.ErrClosed
	}
	if r.torn {
		if err := r.f.Truncate(r.size); err != nil {
			return 0, fmt.Errorf("%s ends with a partial record that cannot be cut off: %w", r.path, err)
		}
		r.torn = false
	}
	if r.size > 0 && r.size+int64(len(b)) > r.maxSize {
		if err := r.rotate(); err != nil {
			if r.f == nil && r.open() != nil {
				return 0, fmt.Errorf("rotate %s: %w", r.path, err)
			}
			// Keep logging to the file in place.
		}
	}
	n, err := r.f.Write(b)
	if err == nil && n < len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		if n > 0 {
			r.torn = r.f.Truncate(r.size) != nil
		}
		return 0, err
	}
	r.size += int64(n)
	return n, nil
}

func (r *rotatingFile) rotate() error {
	if err := r.f.Close(); err != nil {
		return err
	}
	r.f = nil
	os.Remove(fmt.Sprintf("%s.%d", r.path, r.keep))
	for i := r.keep - 1; i >= 1; i-- {
		if err := os.Rename(fmt.Sprintf("%s.%d", r.path, i), fmt.Sprintf("%s.%d", r.path, i+1)); err != nil && !os.IsNotExist(err) {
			return err
		}
	}
	if err := os.Rename(r.path, r.path+".1"); err != nil {
		return err
	}
	return r.open()
}

func (r *rotatingFile) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}
