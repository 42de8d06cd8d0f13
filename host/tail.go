package host

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"
)

// TailPollInterval is how often a Tail at the end of its file looks again.
const TailPollInterval = 250 * time.Millisecond

// maxTailLine bounds a line a Tail holds while waiting for its end; a
// longer one is dropped whole (an audit record is at most about 9 KiB).
const maxTailLine = 64 << 10

// Tail follows a log file that another process appends to and rotates, as
// auditd does its audit.log. Read returns whole lines only, written after
// the Tail was opened. When the path is renamed or removed it reads the
// old file to its end and goes on with the new file from its start; when
// the file shrinks (truncated) it starts over from the beginning. A line
// left unfinished by a rotation or truncation is dropped, never joined to
// the next file's first line.
type Tail struct {
	path string
	ctx  context.Context
	wait func(context.Context) error

	f        *os.File // nil while the path does not exist
	dev, ino uint64
	off      int64
	// next is the file now at the path, read once f is read to its end.
	next     *os.File
	nextStat *syscall.Stat_t

	chunk    []byte
	store    []byte // ready's buffer
	ready    []byte // whole lines not yet returned
	partial  []byte // the start of the next line
	skipping bool   // dropping the rest of an overlong line
}

// OpenTail starts following path from its current end (from the start of a
// file created later, if it does not exist yet). Read returns os.ErrClosed
// once ctx ends. wait, if not nil, replaces the pause at the end of the
// file (TailPollInterval); an error from it ends Read with that error.
func OpenTail(ctx context.Context, path string, wait func(context.Context) error) (*Tail, error) {
	if wait == nil {
		wait = pollWait
	}
	t := &Tail{path: path, ctx: ctx, wait: wait, chunk: make([]byte, 64<<10)}
	f, st, err := openStat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return t, nil
	case err != nil:
		return nil, err
	}
	off, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, err
	}
	t.use(f, st, off)
	return t, nil
}

func pollWait(ctx context.Context) error {
	timer := time.NewTimer(TailPollInterval)
	defer timer.Stop()
	select {
	case <-ctx.Done():
	case <-timer.C:
	}
	return nil
}

func openStat(path string) (*os.File, *syscall.Stat_t, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		f.Close()
		return nil, nil, errors.New("no file identity")
	}
	return f, st, nil
}

func (t *Tail) use(f *os.File, st *syscall.Stat_t, off int64) {
	if t.f != nil {
		t.f.Close()
	}
	t.f, t.dev, t.ino, t.off = f, uint64(st.Dev), st.Ino, off
	t.partial, t.skipping = t.partial[:0], false
}

// Read returns whole lines, blocking until there are some.
func (t *Tail) Read(p []byte) (int, error) {
	for {
		if len(t.ready) > 0 {
			n := copy(p, t.ready)
			t.ready = t.ready[n:]
			return n, nil
		}
		if t.ctx.Err() != nil {
			return 0, os.ErrClosed
		}
		if t.f != nil {
			n, err := t.f.Read(t.chunk)
			if n > 0 {
				t.off += int64(n)
				t.take(t.chunk[:n])
				continue
			}
			if err != nil && err != io.EOF {
				return 0, err
			}
		}
		if t.next != nil {
			t.use(t.next, t.nextStat, 0)
			t.next, t.nextStat = nil, nil
			continue
		}
		moved, err := t.follow()
		if err != nil {
			return 0, err
		}
		if moved {
			continue
		}
		if err := t.wait(t.ctx); err != nil {
			return 0, err
		}
	}
}

// follow, at the end of the file, switches to a new file at the path or
// starts over in a truncated one, and reports whether it did.
func (t *Tail) follow() (bool, error) {
	f, st, err := openStat(t.path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return false, nil // rotated away, the new file not created yet
	case err != nil:
		return false, err
	}
	if t.f != nil && uint64(st.Dev) == t.dev && st.Ino == t.ino {
		f.Close()
		if st.Size >= t.off {
			return false, nil
		}
		if _, err := t.f.Seek(0, io.SeekStart); err != nil {
			return false, err
		}
		t.off, t.skipping = 0, false
		t.partial = t.partial[:0]
		return true, nil
	}
	if t.f == nil {
		t.use(f, st, 0)
		return true, nil
	}
	// Lines written to the old file before it was renamed come first.
	t.next, t.nextStat = f, st
	return true, nil
}

// take splits what was read into whole lines and the start of the next.
func (t *Tail) take(b []byte) {
	if t.skipping {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return
		}
		b, t.skipping = b[i+1:], false
	}
	last := bytes.LastIndexByte(b, '\n')
	if last < 0 {
		t.partial = append(t.partial, b...)
		if len(t.partial) > maxTailLine {
			t.partial, t.skipping = t.partial[:0], true
		}
		return
	}
	if len(t.ready) == 0 {
		t.ready = t.store[:0]
	}
	t.ready = append(t.ready, t.partial...)
	t.ready = append(t.ready, b[:last+1]...)
	t.store = t.ready[:0]
	t.partial = append(t.partial[:0], b[last+1:]...)
	if len(t.partial) > maxTailLine {
		t.partial, t.skipping = t.partial[:0], true
	}
}

// Close releases the files.
func (t *Tail) Close() error {
	if t.next != nil {
		t.next.Close()
		t.next = nil
	}
	if t.f == nil {
		return nil
	}
	err := t.f.Close()
	t.f = nil
	return err
}
