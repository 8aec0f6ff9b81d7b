package logspace

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// needPunch skips a test whose temp directory cannot punch holes (the test then
// says on which file system).
func needPunch(t *testing.T, dir string) {
	t.Helper()
	if err := Probe(dir); err != nil {
		t.Skipf("temp dir cannot punch holes: %v", err)
	}
}

// punchablePath is a file name in a fresh temp directory that can punch holes
// (else the test skips).
func punchablePath(t *testing.T, name string) string {
	t.Helper()
	dir := t.TempDir()
	needPunch(t, dir)
	return filepath.Join(dir, name)
}

// openWriter opens path to write (os.O_CREATE|os.O_WRONLY and flag) until the
// test ends.
func openWriter(t *testing.T, path string, flag int) *os.File {
	t.Helper()
	w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|flag, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

// patternFile writes n bytes of pattern to a file name in a fresh temp
// directory and returns its path.
func patternFile(t *testing.T, name string, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, pattern(0, n), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func pattern(off int64, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((off+int64(i))%251) + 1 // never 0: a hole reads as 0
	}
	return b
}

// TestFreerWhileAppending: a writer appends to the file the whole time (as QEMU
// does) while the prefix a reader has consumed is freed. Every byte at or after
// the freed offset reads back as written, the freed prefix reads as zeros and
// takes no space, the size is the writer's, and allocation stays near what is
// not freed.
func TestFreerWhileAppending(t *testing.T) {
	path := punchablePath(t, "log.rr")
	w := openWriter(t, path, os.O_APPEND)
	fr, err := NewFreer(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	r, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	const total = 4 << 20
	var written int64
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for written < total {
			n := 777 + int(written%5000) // odd sizes: never block aligned
			if _, err := w.Write(pattern(written, n)); err != nil {
				werr = err
				return
			}
			written += int64(n)
		}
	}()
	// The reader consumes what is there and frees what it consumed.
	var consumed int64
	var maxAlloc int64
	buf := make([]byte, 64<<10)
	for {
		n, _ := r.ReadAt(buf, consumed)
		if n > 0 {
			if !bytes.Equal(buf[:n], pattern(consumed, n)) {
				t.Fatalf("bytes at %d differ from what was written", consumed)
			}
			consumed += int64(n)
			if _, err := fr.FreeTo(consumed); err != nil {
				t.Fatal(err)
			}
			u, err := Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			maxAlloc = max(maxAlloc, u.Allocated-(u.Size-fr.Freed()))
		}
		if n == 0 && consumed >= total {
			break
		}
	}
	wg.Wait()
	if werr != nil {
		t.Fatal(werr)
	}
	u, err := Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if u.Size != written {
		t.Fatalf("size %d, written %d", u.Size, written)
	}
	if want := consumed - consumed%fr.Block(); fr.Freed() != want {
		t.Fatalf("freed %d, want %d", fr.Freed(), want)
	}
	if u.Allocated > u.Size-fr.Freed()+4*fr.Block() {
		t.Fatalf("allocated %d bytes for %d bytes not freed", u.Allocated, u.Size-fr.Freed())
	}
	got, err := FreedPrefix(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != fr.Freed() {
		t.Fatalf("FreedPrefix %d, freed %d", got, fr.Freed())
	}
	head := make([]byte, 4096)
	if _, err := r.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(head, make([]byte, 4096)) {
		t.Fatal("the freed prefix does not read as zeros")
	}
	t.Logf("written %d, freed %d, allocated %d at the end; at most %d allocated beyond the live part meanwhile", written, fr.Freed(), u.Allocated, maxAlloc)
}

// TestFreerNeverPastUpTo: only whole blocks strictly below upTo are freed, and
// freeing never goes back.
func TestFreerNeverPastUpTo(t *testing.T) {
	path := patternFile(t, "f", 40000)
	var calls [][2]int64
	fr, err := newFreer(path, func(_ int, off, n int64) error {
		calls = append(calls, [2]int64{off, n})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	b := fr.Block()
	for _, c := range []struct{ upTo, want int64 }{
		{b - 1, 0}, {b, b}, {b + 1, b}, {3*b + 7, 3 * b}, {2 * b, 3 * b}, {3 * b, 3 * b},
	} {
		got, err := fr.FreeTo(c.upTo)
		if err != nil || got != c.want {
			t.Fatalf("FreeTo(%d) = %d, %v; want %d", c.upTo, got, err, c.want)
		}
	}
	want := [][2]int64{{0, b}, {b, 2 * b}}
	if fmt.Sprint(calls) != fmt.Sprint(want) {
		t.Fatalf("punches %v, want %v", calls, want)
	}
}

// TestFreerUnsupported: a file system that refuses is reported once and for good.
func TestFreerUnsupported(t *testing.T) {
	path := patternFile(t, "f", 40000)
	calls := 0
	fr, err := newFreer(path, func(int, int64, int64) error { calls++; return unix.EOPNOTSUPP })
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	for i := 0; i < 3; i++ {
		got, err := fr.FreeTo(30000)
		if !errors.Is(err, ErrUnsupported) || got != 0 {
			t.Fatalf("FreeTo = %d, %v; want 0 and ErrUnsupported", got, err)
		}
	}
	if calls != 1 || !errors.Is(fr.Err(), ErrUnsupported) {
		t.Fatalf("%d punches, Err %v", calls, fr.Err())
	}
	// Another error is not sticky.
	fr2, err := newFreer(path, func(int, int64, int64) error { return unix.EIO })
	if err != nil {
		t.Fatal(err)
	}
	defer fr2.Close()
	if _, err := fr2.FreeTo(30000); err == nil || errors.Is(err, ErrUnsupported) || fr2.Err() != nil {
		t.Fatalf("EIO: %v, Err %v", err, fr2.Err())
	}
}

// TestProbe: the probe answers for a real directory (yes, or ErrUnsupported naming
// the file system) and fails plainly for a missing one.
func TestProbe(t *testing.T) {
	if err := Probe(t.TempDir()); err != nil && !errors.Is(err, ErrUnsupported) {
		t.Fatal(err)
	}
	if err := Probe(filepath.Join(t.TempDir(), "missing")); err == nil || errors.Is(err, ErrUnsupported) {
		t.Fatalf("probe in a missing dir: %v", err)
	}
}

func TestFreedPrefixOfPlainFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(path, pattern(0, 10000), 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := FreedPrefix(path); err != nil || n != 0 {
		t.Fatalf("FreedPrefix = %d, %v", n, err)
	}
	empty := filepath.Join(t.TempDir(), "e")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if n, err := FreedPrefix(empty); err != nil || n != 0 {
		t.Fatalf("FreedPrefix(empty) = %d, %v", n, err)
	}
}

// TestRotateWhileWriting: a writer that writes on at its own offset (QEMU's
// console) keeps writing while the file is rotated: the copies and what the file
// holds after its freed prefix are every byte in order, the file's data stays near
// its bound, and only Keep copies are kept.
func TestRotateWhileWriting(t *testing.T) {
	path := punchablePath(t, "console.log")
	w := openWriter(t, path, os.O_TRUNC)
	rot := &Rotator{Path: path, MaxBytes: 16 << 10, Keep: 100}
	var all []byte
	for i := 0; len(all) < 1<<20; i++ {
		line := []byte(fmt.Sprintf("line %d %s\n", i, bytes.Repeat([]byte{'x'}, i%120)))
		if _, err := w.Write(line); err != nil {
			t.Fatal(err)
		}
		all = append(all, line...)
		if i%50 == 0 {
			if _, err := rot.Rotate(); err != nil {
				t.Fatal(err)
			}
			if u, err := Stat(path); err != nil || u.Allocated > rot.MaxBytes+64<<10 {
				t.Fatalf("console takes %d bytes on disk, bound %d (%v)", u.Allocated, rot.MaxBytes, err)
			}
		}
	}
	got, err := ReadAll(path, rot.Keep)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, all) {
		t.Fatalf("rotated files hold %d bytes, %d written (first difference at %d)", len(got), len(all), firstDiff(got, all))
	}
	if rot.Rotations() == 0 || rot.Rotations() > uint64(rot.Keep) {
		t.Fatalf("%d rotations (the test needs 1..%d)", rot.Rotations(), rot.Keep)
	}
	if u, err := Stat(path); err != nil || u.Size != int64(len(all)) {
		t.Fatalf("the file's size %d, %d written: the writer's offsets must stay (%v)", u.Size, len(all), err)
	}
	// Keep bounds the copies.
	path = filepath.Join(filepath.Dir(path), "other.log")
	w = openWriter(t, path, os.O_TRUNC)
	small := &Rotator{Path: path, MaxBytes: 16 << 10, Keep: 2}
	for i := 0; i < 10; i++ {
		if _, err := w.Write(bytes.Repeat([]byte("y"), 20<<10)); err != nil {
			t.Fatal(err)
		}
		if _, err := small.Rotate(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(path + ".3"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a third copy with Keep 2: %v", err)
	}
	u, err := StatFiles(small.Files()...)
	if err != nil || u.Allocated > 3*(small.MaxBytes+20<<10) {
		t.Fatalf("kept %d bytes on disk (%v)", u.Allocated, err)
	}
}

// TestRotateUnsupported: where holes cannot be punched, the file is not rotated
// and Err says why.
func TestRotateUnsupported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	data := pattern(0, 100<<10)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	calls := 0
	rot := &Rotator{Path: path, MaxBytes: 64 << 10, Keep: 2, punch: func(int, int64, int64) error { calls++; return unix.EOPNOTSUPP }}
	done, err := rot.Rotate()
	if done || !errors.Is(err, ErrUnsupported) || !errors.Is(rot.Err(), ErrUnsupported) {
		t.Fatalf("Rotate = %v, %v; Err %v", done, err, rot.Err())
	}
	if done, err := rot.Rotate(); done || err != nil || calls != 1 {
		t.Fatalf("second Rotate = %v, %v after %d punches: it must not try again", done, err, calls)
	}
	if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the file changed: %d bytes (%v)", len(got), err)
	}
}

// TestRotateFollowsReader: a reader that follows the file by offset and says how
// far it has read (SetConsumed) while the file is written and rotated reads every
// byte once, in order: a rotation never frees what it has not read.
func TestRotateFollowsReader(t *testing.T) {
	path := punchablePath(t, "console.log")
	w := openWriter(t, path, os.O_TRUNC)
	r, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	rot := &Rotator{Path: path, MaxBytes: 16 << 10, Keep: 1}
	var read atomic.Int64
	rot.SetConsumed(read.Load)
	var all, got []byte
	buf := make([]byte, 3000)
	for i := 0; len(all) < 512<<10; i++ {
		line := []byte(fmt.Sprintf("line %d %s\n", i, bytes.Repeat([]byte{'z'}, i%200)))
		if _, err := w.Write(line); err != nil {
			t.Fatal(err)
		}
		all = append(all, line...)
		if i%7 == 0 { // the reader reads now and then, less than is written
			n, err := r.ReadAt(buf, read.Load())
			if err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			got = append(got, buf[:n]...)
			read.Add(int64(n))
		}
		if i%13 == 0 {
			if _, err := rot.Rotate(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for {
		n, _ := r.ReadAt(buf, read.Load())
		if n == 0 {
			break
		}
		got = append(got, buf[:n]...)
		read.Add(int64(n))
	}
	if !bytes.Equal(got, all) {
		t.Fatalf("the reader got %d bytes of %d (first difference at %d)", len(got), len(all), firstDiff(got, all))
	}
	if rot.Rotations() == 0 {
		t.Fatal("no rotation")
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func TestKeepFreeTo(t *testing.T) {
	for _, c := range []struct {
		k    Keep
		over bool
		want int64
	}{
		{Keep{Needed: 1000}, false, 1000},
		{Keep{Needed: 1000, Behind: 300}, false, 700},
		{Keep{Needed: 100, Behind: 300}, false, 0},
		{Keep{Needed: 1000, All: true}, false, 0},
		{Keep{Needed: 1000, All: true}, true, 1000},
		{Keep{Needed: 1000, Behind: 300}, true, 1000},
		{Keep{Needed: -5}, true, 0},
	} {
		if got := c.k.FreeTo(c.over); got != c.want {
			t.Errorf("%+v.FreeTo(%v) = %d, want %d", c.k, c.over, got, c.want)
		}
	}
}

func TestRetention(t *testing.T) {
	for _, c := range []struct {
		in      string
		want    Retention
		age     time.Duration
		n       int64
		holds   bool
		wantErr bool
	}{
		{in: "", want: Retention{}, age: 0, n: 0, holds: false},
		{in: "none", want: Retention{}, holds: false},
		{in: "0", want: Retention{}, holds: false},
		{in: "all", want: Retention{All: true}, age: 1000 * time.Hour, n: 1 << 50, holds: true},
		{in: "30m", want: Retention{Age: 30 * time.Minute}, age: 29 * time.Minute, holds: true},
		{in: "30m", want: Retention{Age: 30 * time.Minute}, age: 31 * time.Minute, holds: false},
		{in: "512MiB", want: Retention{Bytes: 512 << 20}, n: 512 << 20, holds: true},
		{in: "512MiB", want: Retention{Bytes: 512 << 20}, n: 512<<20 + 1, holds: false},
		{in: "-5m", wantErr: true},
		{in: "lots", wantErr: true},
	} {
		got, err := ParseRetention(c.in)
		if c.wantErr {
			if err == nil {
				t.Errorf("ParseRetention(%q) = %+v, want an error", c.in, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("ParseRetention(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
			continue
		}
		if h := got.Holds(c.age, c.n); h != c.holds {
			t.Errorf("%q.Holds(%s, %d) = %v", c.in, c.age, c.n, h)
		}
		if back, err := ParseRetention(got.String()); err != nil || back != got {
			t.Errorf("%q does not round-trip through %q: %+v %v", c.in, got.String(), back, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{
		"0": 0, "4096": 4096, "64MiB": 64 << 20, "64M": 64 << 20, "64m": 64 << 20, "1GiB": 1 << 30, "1g": 1 << 30,
		"2 GiB": 2 << 30, "10KB": 10000, "1.5GiB": 3 << 29, "7b": 7, "1TiB": 1 << 40,
	} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "1.5", "x", "99999999999999TiB", "1e400GiB"} {
		if got, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
	for _, n := range []int64{0, 5, 4096, 64 << 20, 3 << 29, 1 << 40, 12345678} {
		if got, err := ParseSize(FormatSize(n)); err != nil || (got != n && n%(1<<20) == 0) {
			t.Errorf("FormatSize(%d) = %q reads back as %d, %v", n, FormatSize(n), got, err)
		}
	}
	if k, err := ParseKeep("all"); err != nil || k != -1 {
		t.Errorf("ParseKeep(all) = %d, %v", k, err)
	}
	if k, err := ParseKeep("64MiB"); err != nil || k != 64<<20 {
		t.Errorf("ParseKeep(64MiB) = %d, %v", k, err)
	}
	if _, err := ParseKeep("some"); err == nil {
		t.Error("ParseKeep(some) succeeded")
	}
}
