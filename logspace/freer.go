package logspace

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrUnsupported: the file system cannot punch holes, so the
// space of a consumed log prefix cannot be given back while the file is written.
var ErrUnsupported = errors.New("the file system cannot free part of a file")

// punchFunc frees [off, off+n) of the file open as fd (fallocate by default).
type punchFunc func(fd int, off, n int64) error

func punchHole(fd int, off, n int64) error {
	return unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
}

// unsupported reports whether err means the file system has no such operation.
func unsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ENOTSUP)
}

// Freer frees the prefix of one growing file. It only ever frees whole blocks
// below the offset it is given, from the front, and never writes a byte.
type Freer struct {
	path  string
	f     *os.File // write access, which fallocate needs; nothing is written through it
	block int64
	punch punchFunc

	mu    sync.Mutex
	freed int64 // [0, freed) is a hole
	err   error // sticky: ErrUnsupported and why
}

// NewFreer opens path for freeing its prefix. The file must exist. Its block size
// (st_blksize) is the unit freed.
func NewFreer(path string) (*Freer, error) {
	return newFreer(path, punchHole)
}

func newFreer(path string, punch punchFunc) (*Freer, error) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return nil, fmt.Errorf("logspace: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("logspace: stat %s: %w", path, err)
	}
	block := int64(st.Blksize)
	if block <= 0 {
		block = 4096
	}
	return &Freer{path: path, f: f, block: block, punch: punch}, nil
}

// Block is the unit the Freer frees: the file system's block size.
func (fr *Freer) Block() int64 { return fr.block }

// Freed is the offset below which the file is a hole.
func (fr *Freer) Freed() int64 {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	return fr.freed
}

// Err is why the Freer cannot free (wrapping ErrUnsupported), nil while it can.
func (fr *Freer) Err() error {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	return fr.err
}

// FreeTo frees the file's whole blocks below upTo (rounded down to a block) that
// are not free yet, and returns the offset freed up to. Nothing at or after upTo
// is touched, so a reader or writer working there is unaffected. Once the file
// system has refused, every call returns that error (wrapping ErrUnsupported)
// without trying again.
func (fr *Freer) FreeTo(upTo int64) (int64, error) {
	fr.mu.Lock()
	defer fr.mu.Unlock()
	if fr.err != nil {
		return fr.freed, fr.err
	}
	to := upTo - upTo%fr.block
	if to <= fr.freed {
		return fr.freed, nil
	}
	if err := fr.punch(int(fr.f.Fd()), fr.freed, to-fr.freed); err != nil {
		if unsupported(err) {
			fr.err = fmt.Errorf("%w: punching a hole in %s: %v", ErrUnsupported, fr.path, err)
			return fr.freed, fr.err
		}
		return fr.freed, fmt.Errorf("logspace: punching [%d, %d) of %s: %w", fr.freed, to, fr.path, err)
	}
	fr.freed = to
	return to, nil
}

// Close closes the Freer's descriptor; the file stays as it is.
func (fr *Freer) Close() error { return fr.f.Close() }

// Probe tells whether the file system holding dir gives back the space of a
// punched hole: it writes a scratch file of two blocks, punches the first and
// checks the allocation shrank. nil means it does; otherwise the error wraps
// ErrUnsupported and names the file system type.
func Probe(dir string) error {
	f, err := os.CreateTemp(dir, ".ftvmd-punch-probe-*")
	if err != nil {
		return fmt.Errorf("logspace: probe in %s: %w", dir, err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	fs := FSType(dir)
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return fmt.Errorf("logspace: probe: %w", err)
	}
	block := int64(st.Blksize)
	if block <= 0 {
		block = 4096
	}
	buf := make([]byte, 2*block)
	for i := range buf {
		buf[i] = 0xa5
	}
	if _, err := f.Write(buf); err != nil {
		return fmt.Errorf("logspace: probe in %s: %w", dir, err)
	}
	before, err := Stat(f.Name())
	if err != nil {
		return err
	}
	if err := punchHole(int(f.Fd()), 0, block); err != nil {
		if unsupported(err) {
			return fmt.Errorf("%w: %s in %s: %v", ErrUnsupported, fs, dir, err)
		}
		return fmt.Errorf("logspace: probe in %s: %w", dir, err)
	}
	after, err := Stat(f.Name())
	if err != nil {
		return err
	}
	if after.Allocated >= before.Allocated {
		return fmt.Errorf("%w: %s in %s accepts a punched hole but keeps its space (%d bytes allocated before, %d after)",
			ErrUnsupported, fs, dir, before.Allocated, after.Allocated)
	}
	return nil
}

// FreedPrefix is how much of the file at path's front is a hole: 0 for a file
// whose first byte is data, its size for a file with no data at all. A log whose
// prefix was freed cannot be read from its start; the error of a read would
// otherwise be zeros that parse as events.
func FreedPrefix(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return freedPrefix(f)
}

func freedPrefix(f *os.File) (int64, error) {
	off, err := f.Seek(0, unix.SEEK_DATA)
	switch {
	case err == nil:
		return off, nil
	case errors.Is(err, unix.ENXIO): // no data at or after 0: all hole, or empty
		size, serr := f.Seek(0, io.SeekEnd)
		if serr != nil {
			return 0, serr
		}
		return size, nil
	case errors.Is(err, unix.EINVAL) || unsupported(err):
		return 0, nil // no SEEK_DATA: such a file system could not punch either
	}
	return 0, fmt.Errorf("logspace: seek data in %s: %w", f.Name(), err)
}

// Usage is what files take: their size and the space allocated to them.
type Usage struct {
	Size      int64 // apparent size (st_size)
	Allocated int64 // bytes on disk (st_blocks * 512)
}

// Add sums two usages.
func (u Usage) Add(o Usage) Usage {
	return Usage{Size: u.Size + o.Size, Allocated: u.Allocated + o.Allocated}
}

// Stat is one file's usage.
func Stat(path string) (Usage, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Usage{}, fmt.Errorf("logspace: %w", &os.PathError{Op: "stat", Path: path, Err: err})
	}
	return Usage{Size: st.Size, Allocated: st.Blocks * 512}, nil
}

// StatFiles sums the usage of the files that exist among paths.
func StatFiles(paths ...string) (Usage, error) {
	var u Usage
	for _, p := range paths {
		s, err := Stat(p)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return u, err
		}
		u = u.Add(s)
	}
	return u, nil
}

// Free is the space an unprivileged writer can still use on the file system
// holding path (statfs f_bavail * f_bsize).
func Free(path string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("logspace: statfs %s: %w", path, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}

// FSType names the file system holding path (ext4, xfs, tmpfs, nfs, ...), or its
// magic number in hex when it is not one of the common ones.
func FSType(path string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "unknown file system"
	}
	switch int64(st.Type) {
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.NFS_SUPER_MAGIC:
		return "nfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	case 0x2fc12fc1:
		return "zfs"
	case unix.F2FS_SUPER_MAGIC:
		return "f2fs"
	}
	return fmt.Sprintf("file system %#x", st.Type)
}
