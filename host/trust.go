package host

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// A profile runs with the kernel's authority over every container that uses
// it, so the loader gives apparmor_parser only files that nobody but root
// can have written or swapped, as sshd (StrictModes) and sudo judge theirs:
//
//   - the file is a regular file owned by the trusted uid (root), not
//     writable by group or others;
//   - the directory holding it is owned by root and not writable by group
//     or others;
//   - every directory on the way from / is owned by root and not writable
//     by group or others, unless it is sticky (/tmp: there only an entry's
//     owner can rename or remove it, and the next step's owner is checked);
//   - a symlink is followed only if it is owned by root, and the path it
//     names passes the same checks: a link into /tmp, whose files anyone
//     may create, is refused.
//
// Since no component of the path can then be changed by anyone but root,
// the file apparmor_parser opens is the one judged here.

// maxLinks is the kernel's limit of symlinks followed in one lookup.
const maxLinks = 40

// trust judges the files of one pass over the profile directory; it
// remembers the directories it judged.
type trust struct {
	uid  uint32 // the owner files must have
	dirs map[string]dirVerdict
}

type dirVerdict struct {
	pass string // may be walked through ("" if so)
	hold string // may hold a profile file ("" if so)
}

func newTrust(uid uint32) *trust {
	return &trust{uid: uid, dirs: map[string]dirVerdict{}}
}

// owner says why fi, a directory or a symlink, is not owned by root or the
// trusted uid, or "".
func (t *trust) owner(fi fs.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "of unknown owner"
	}
	if st.Uid != 0 && st.Uid != t.uid {
		return fmt.Sprintf("owned by uid %d", st.Uid)
	}
	return ""
}

// fileOwner says why fi, a profile file, is not owned by the trusted uid,
// or "".
func (t *trust) fileOwner(fi fs.FileInfo) string {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "of unknown owner"
	}
	if st.Uid != t.uid {
		return fmt.Sprintf("owned by uid %d", st.Uid)
	}
	return ""
}

// writable says why others than the owner may write to fi, or "".
func writable(fi fs.FileInfo) string {
	switch {
	case fi.Mode().Perm()&0o002 != 0:
		return "writable by others"
	case fi.Mode().Perm()&0o020 != 0:
		return "writable by group"
	}
	return ""
}

// dir judges the directory at path (no symlink).
func (t *trust) dir(path string) (dirVerdict, error) {
	if v, ok := t.dirs[path]; ok {
		return v, nil
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return dirVerdict{}, err
	}
	var v dirVerdict
	if why := t.owner(fi); why != "" {
		v.pass = "directory " + path + " is " + why
		v.hold = v.pass
	} else if why := writable(fi); why != "" {
		v.hold = "directory " + path + " is " + why
		if fi.Mode()&fs.ModeSticky == 0 {
			v.pass = v.hold
		}
	}
	t.dirs[path] = v
	return v, nil
}

// refusal is a reason not to load a file; other errors are I/O errors.
type refusal string

func (r refusal) Error() string { return string(r) }

// resolve follows path (absolute) from / as the kernel would and returns
// the path without symlinks and what is there. It judges each directory it
// walks through and each symlink it follows: the first one that fails is
// returned as why, and the walk goes on so that the file itself can be
// judged too.
func (t *trust) resolve(path string) (real string, fi fs.FileInfo, why string, err error) {
	cur, rest, links := "/", path, 0
	for {
		rest = strings.TrimLeft(rest, "/")
		if rest == "" {
			fi, err := os.Lstat(cur)
			return cur, fi, why, err
		}
		// cur is a directory to walk through.
		v, err := t.dir(cur)
		if err != nil {
			return "", nil, "", err
		}
		if why == "" {
			why = v.pass
		}
		var name string
		name, rest, _ = strings.Cut(rest, "/")
		switch name {
		case ".":
			continue
		case "..":
			cur = filepath.Dir(cur)
			continue
		}
		next := filepath.Join(cur, name)
		fi, err := os.Lstat(next)
		if err != nil {
			return "", nil, "", err
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if links++; links > maxLinks {
				return "", nil, "", &fs.PathError{Op: "lstat", Path: path, Err: syscall.ELOOP}
			}
			if o := t.owner(fi); o != "" && why == "" {
				why = "symlink " + next + " is " + o
			}
			target, err := os.Readlink(next)
			if err != nil {
				return "", nil, "", err
			}
			if filepath.IsAbs(target) {
				cur = "/"
			}
			rest = target + "/" + rest
		case strings.TrimLeft(rest, "/") != "" && !fi.IsDir():
			return "", nil, "", &fs.PathError{Op: "lstat", Path: next, Err: syscall.ENOTDIR}
		default:
			cur = next
		}
	}
}

// directory judges the profile directory dir (absolute) and returns its
// path without symlinks, with a refusal if it is not trusted.
func (t *trust) directory(dir string) (string, error) {
	real, fi, why, err := t.resolve(dir)
	if err != nil {
		return "", err
	}
	if !fi.IsDir() {
		return "", &fs.PathError{Op: "open", Path: dir, Err: syscall.ENOTDIR}
	}
	if why != "" {
		return real, refusal(why)
	}
	v, err := t.dir(real)
	if err != nil {
		return "", err
	}
	if v.hold != "" {
		return real, refusal(v.hold)
	}
	return real, nil
}

// file judges path, a file of a trusted directory, and returns what it
// names. The file's own faults are named first. A path that is not a
// regular file (a directory, a dangling link) gives an error that is not a
// refusal.
func (t *trust) file(path string) (fs.FileInfo, error) {
	real, fi, why, err := t.resolve(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, &fs.PathError{Op: "open", Path: path, Err: errors.New("not a regular file")}
	}
	prefix := ""
	if real != path {
		prefix = "symlink to " + real + ": "
	}
	if o := t.fileOwner(fi); o != "" {
		return nil, refusal(prefix + o)
	}
	if w := writable(fi); w != "" {
		return nil, refusal(prefix + w)
	}
	if why != "" {
		return nil, refusal(prefix + why)
	}
	v, err := t.dir(filepath.Dir(real))
	if err != nil {
		return nil, err
	}
	if v.hold != "" {
		return nil, refusal(prefix + v.hold)
	}
	return fi, nil
}
