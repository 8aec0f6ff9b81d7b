package logspace

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Rotator keeps the space of a file that another process writes at its own
// offset (QEMU's console log: -serial file: opens it O_TRUNC and writes on) under
// a size, keeping what it frees in numbered copies: Path.1 the newest, up to
// Path.Keep. The file cannot be renamed or truncated under its writer (the
// writer's offset would leave a hole as large as the file, or write into the
// renamed one), so a rotation copies the file's oldest whole blocks to Path.1 and
// punches them out of the file (FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE): the
// writer and every offset stay as they were, the file's prefix reads as zeros and
// takes no space. A reader in this process that follows the file by offset (the
// divergence sentinel) says how far it has read (SetConsumed): a rotation never
// frees what it has not read.
type Rotator struct {
	Path     string
	MaxBytes int64 // rotate once the file holds more data than this (0: never)
	Keep     int   // copies kept (0: what is freed is dropped)

	punch punchFunc // nil: punchHole

	mu        sync.Mutex
	freed     int64        // [0, freed) of the file is a hole
	consumed  func() int64 // see SetConsumed
	rotations uint64
	err       error // why the file cannot be rotated (wraps ErrUnsupported), sticky
}

// Files lists the rotator's files, oldest first (those that exist or not).
func (r *Rotator) Files() []string {
	fs := make([]string, 0, r.Keep+1)
	for i := r.Keep; i >= 1; i-- {
		fs = append(fs, fmt.Sprintf("%s.%d", r.Path, i))
	}
	return append(fs, r.Path)
}

// Rotations is how many rotations have happened.
func (r *Rotator) Rotations() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rotations
}

// Err is why the file is not rotated (its file system cannot punch holes), nil
// while it is.
func (r *Rotator) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// SetConsumed tells the Rotator how far (a file offset) a reader has read the
// file: rotations keep everything from there on. nil: no reader.
func (r *Rotator) SetConsumed(fn func() int64) {
	r.mu.Lock()
	r.consumed = fn
	r.mu.Unlock()
}

// Rotate rotates the file if it holds more than MaxBytes beyond its freed prefix,
// and reports whether it did: its whole blocks from the freed prefix up to what
// the reader has consumed are copied to a new Path.1 (older copies shifted up),
// then freed. Where the file system cannot punch holes, the file is not rotated
// and Err says why.
func (r *Rotator) Rotate() (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.MaxBytes <= 0 || r.err != nil {
		return false, nil
	}
	f, err := os.OpenFile(r.Path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("logspace: rotate: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return false, fmt.Errorf("logspace: rotate: stat %s: %w", r.Path, err)
	}
	if st.Size-r.freed <= r.MaxBytes {
		return false, nil
	}
	block := int64(st.Blksize)
	if block <= 0 {
		block = 4096
	}
	to := st.Size
	if r.consumed != nil {
		to = min(to, r.consumed())
	}
	to = to / block * block
	if to <= r.freed {
		return false, nil
	}
	if err := r.shift(); err != nil {
		return false, err
	}
	if err := r.copyOut(f, r.freed, to); err != nil {
		return false, err
	}
	punch := r.punch
	if punch == nil {
		punch = punchHole
	}
	if err := punch(int(f.Fd()), r.freed, to-r.freed); err != nil {
		if unsupported(err) {
			r.err = fmt.Errorf("%w: punching a hole in %s on %s: %v", ErrUnsupported, r.Path, FSType(r.Path), err)
			return false, r.err
		}
		return false, fmt.Errorf("logspace: rotate: freeing [%d, %d) of %s: %w", r.freed, to, r.Path, err)
	}
	r.freed = to
	r.rotations++
	return true, nil
}

// shift moves Path.i to Path.i+1, dropping Path.Keep, so Path.1 is free.
func (r *Rotator) shift() error {
	if r.Keep <= 0 {
		return nil
	}
	name := func(i int) string { return fmt.Sprintf("%s.%d", r.Path, i) }
	if err := os.Remove(name(r.Keep)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("logspace: rotate: %w", err)
	}
	for i := r.Keep - 1; i >= 1; i-- {
		if err := os.Rename(name(i), name(i+1)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("logspace: rotate: %w", err)
		}
	}
	return nil
}

// copyOut copies [from, to) of the file into a new Path.1. Without Keep it copies
// nothing.
func (r *Rotator) copyOut(f *os.File, from, to int64) error {
	if r.Keep <= 0 {
		return nil
	}
	dst := r.Path + ".1"
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("logspace: rotate: %w", err)
	}
	_, err = io.Copy(out, io.NewSectionReader(f, from, to-from))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("logspace: rotate: copy %s to %s: %w", r.Path, dst, err)
	}
	return nil
}

// ReadAll reads a rotated file's whole kept content, oldest first: Path.Keep ..
// Path.1, then what Path holds after its freed prefix.
func ReadAll(path string, keep int) ([]byte, error) {
	r := Rotator{Path: path, Keep: keep}
	var all []byte
	for _, p := range r.Files() {
		b, err := os.ReadFile(p)
		if errors.Is(err, os.ErrNotExist) && p != path {
			continue
		}
		if err != nil {
			return all, err
		}
		if p == path {
			n, err := FreedPrefix(p)
			if err != nil {
				return all, err
			}
			b = b[min(n, int64(len(b))):]
		}
		all = append(all, b...)
	}
	return all, nil
}
