package disk

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func newTestDirStore(t *testing.T, opts ...DirOption) (*DirStore, *syncBuffer) {
	t.Helper()
	log, buf := testLogger()
	s, err := NewDirStore(t.TempDir(), append([]DirOption{WithLogger(log)}, opts...)...)
	if err != nil {
		t.Fatalf("NewDirStore: %v", err)
	}
	return s, buf
}

func TestNewDirStoreErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		dir  string
		want error
	}{
		{"empty path", "", ErrDirMissing},
		{"missing", filepath.Join(dir, "nope"), ErrDirMissing},
		{"not a directory", file, ErrNotDir},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewDirStore(tc.dir)
			if !errors.Is(err, tc.want) {
				t.Fatalf("NewDirStore(%q): err = %v, want %v", tc.dir, err, tc.want)
			}
			t.Log(err)
		})
	}
	s, err := NewDirStore(dir)
	if err != nil {
		t.Fatalf("NewDirStore on a writable dir: %v", err)
	}
	entries, _ := os.ReadDir(s.Dir())
	if len(entries) != 1 {
		t.Errorf("probe left files behind: %v", entries)
	}
}

// mountTmpfs mounts a small tmpfs on a fresh directory (root only) and
// unmounts it at cleanup.
func mountTmpfs(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root")
	}
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
		t.Skipf("cannot mount tmpfs (no CAP_SYS_ADMIN?): %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

func remount(t *testing.T, dir string, flags uintptr) {
	t.Helper()
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|flags, ""); err != nil {
		t.Fatalf("remount %s: %v", dir, err)
	}
}

// TestDirStoreReadOnly uses a real read-only filesystem: as root, chmod 0555
// does not stop writes, so mode bits would prove nothing.
func TestDirStoreReadOnly(t *testing.T) {
	t.Run("at open", func(t *testing.T) {
		dir := mountTmpfs(t)
		remount(t, dir, unix.MS_RDONLY)
		_, err := NewDirStore(dir)
		if !errors.Is(err, ErrReadOnly) || !errors.Is(err, syscall.EROFS) {
			t.Fatalf("NewDirStore on a read-only mount: err = %v, want ErrReadOnly wrapping EROFS", err)
		}
		t.Log(err)
	})
	t.Run("after open", func(t *testing.T) {
		dir := mountTmpfs(t)
		s, err := NewDirStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		mustClaim(t, s, "vm", 0, "hostA")
		remount(t, dir, unix.MS_RDONLY)
		defer remount(t, dir, 0)
		_, err = s.ClaimNext(context.Background(), "vm", 1, "hostB", "x")
		if err == nil || errors.Is(err, ErrLost) || !errors.Is(err, syscall.EROFS) {
			t.Fatalf("ClaimNext on a read-only mount: err = %v, want an EROFS failure (not a win, not a loss)", err)
		}
		if c, err := s.Current(context.Background(), "vm"); err != nil || c.Epoch != 1 {
			t.Fatalf("Current on a read-only mount = %+v, %v; want epoch 1", c, err)
		}
	})
	t.Run("chmod as non-root", func(t *testing.T) {
		if os.Geteuid() == 0 {
			t.Skip("root ignores mode bits; covered by the read-only mount")
		}
		dir := t.TempDir()
		if err := os.Chmod(dir, 0o555); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.Chmod(dir, 0o755) })
		if _, err := NewDirStore(dir); !errors.Is(err, ErrReadOnly) {
			t.Fatalf("NewDirStore on a 0555 dir: err = %v, want ErrReadOnly", err)
		}
	})
}

func TestDirStoreLayout(t *testing.T) {
	s, _ := newTestDirStore(t)
	mustClaim(t, s, "web", 0, "hostA")
	path := filepath.Join(s.Dir(), "web", "epoch-00000000000000000001.json")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("claim file: %v", err)
	}
	c, problem := decodeClaim(data, "web", 1)
	if problem != "" || c.Owner != "hostA" {
		t.Fatalf("decode %s = %+v, %q", data, c, problem)
	}
	if !strings.Contains(string(data), `"sha256":"`) {
		t.Errorf("no checksum in %s", data)
	}
	if e, ok := parseEpochFileName(filepath.Base(path)); !ok || e != 1 {
		t.Errorf("parseEpochFileName(%s) = %d, %v", path, e, ok)
	}
}

func TestDirStoreCorruptFiles(t *testing.T) {
	good, err := encodeClaim(Claim{VM: "vm", Epoch: 2, Owner: "hostA", ClaimedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	ofEpoch1, err := encodeClaim(Claim{VM: "vm", Epoch: 1, Owner: "hostA", ClaimedAt: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		content []byte
		problem string
	}{
		{"empty (crashed before write)", nil, "empty"},
		{"truncated", good[:len(good)/2], "unparsable"},
		{"garbage", []byte("\x00\x01not json"), "unparsable"},
		{"flipped owner", []byte(strings.Replace(string(good), "hostA", "hostB", 1)), "checksum"},
		{"copied from another epoch", ofEpoch1, "file name says"},
		{"huge", []byte(strings.Repeat(" ", maxClaimFileSize+10) + string(good)), "larger than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, logs := newTestDirStore(t, WithSettle(1, time.Millisecond))
			mustClaim(t, s, "vm", 0, "hostA")
			if err := os.WriteFile(filepath.Join(s.Dir(), "vm", epochFileName(2)), tc.content, 0o644); err != nil {
				t.Fatal(err)
			}
			c, err := s.Current(context.Background(), "vm")
			if err != nil || c.Epoch != 2 || !c.Corrupt || !strings.Contains(c.Problem, tc.problem) {
				t.Fatalf("Current = %+v, %v; want corrupt epoch 2 with problem %q", c, err, tc.problem)
			}
			if !strings.Contains(logs.String(), "level=ERROR") || !strings.Contains(logs.String(), "corrupt") {
				t.Errorf("no error logged for the corrupt claim; logs:\n%s", logs)
			}
			w, err := s.ClaimNext(context.Background(), "vm", 1, "hostA", "x")
			if !errors.Is(err, ErrLost) || !w.Corrupt || w.Epoch != 2 {
				t.Fatalf("ClaimNext over corrupt epoch 2 = %+v, %v; want ErrLost", w, err)
			}
			mustClaim(t, s, "vm", 2, "hostB")
		})
	}
}

// History lists every claim in epoch order, a corrupt one marked, and nothing for a
// VM never claimed.
func TestDirStoreHistory(t *testing.T) {
	s, _ := newTestDirStore(t, WithSettle(1, time.Millisecond))
	ctx := context.Background()
	if h, err := s.History(ctx, "vm"); err != nil || len(h) != 0 {
		t.Fatalf("History of a VM never claimed = %+v, %v", h, err)
	}
	mustClaim(t, s, "vm", 0, "hostA")
	mustClaim(t, s, "vm", 1, "hostB")
	mustClaim(t, s, "other", 0, "hostB")
	if err := os.WriteFile(filepath.Join(s.Dir(), "vm", epochFileName(3)), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	h, err := s.History(ctx, "vm")
	if err != nil {
		t.Fatal(err)
	}
	if len(h) != 3 || h[0].Epoch != 1 || h[0].Owner != "hostA" || h[1].Epoch != 2 || h[1].Owner != "hostB" ||
		h[2].Epoch != 3 || !h[2].Corrupt || h[0].ClaimedAt.IsZero() {
		t.Fatalf("History = %+v", h)
	}
	if _, err := s.History(ctx, "../x"); err == nil {
		t.Fatal("History of an invalid VM name passed")
	}
}

// A contender's file exists before its content: re-reading lets the writer
// finish instead of reporting a corrupt claim.
func TestDirStoreSettlesInFlightWrite(t *testing.T) {
	var once sync.Once
	var path string
	s, _ := newTestDirStore(t, WithSettle(3, time.Millisecond), withHook(func(op, p string) {
		if op == "read" && p == path {
			once.Do(func() { // first read sees an empty file; then the write lands
				good, _ := encodeClaim(Claim{VM: "vm", Epoch: 1, Owner: "hostA", ClaimedAt: time.Now()})
				_ = os.WriteFile(p, nil, 0o644)
				go func() { _ = os.WriteFile(p+".tmp", good, 0o644); _ = os.Rename(p+".tmp", p) }()
			})
		}
	}))
	path = filepath.Join(s.Dir(), "vm", epochFileName(1))
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// The settle loop re-reads up to 3 times; the background writer usually
	// lands within that. Either outcome is safe; only a loss is acceptable.
	w, err := s.ClaimNext(context.Background(), "vm", 0, "hostB", "x")
	if !errors.Is(err, ErrLost) || w.Epoch != 1 {
		t.Fatalf("ClaimNext = %+v, %v; want ErrLost on epoch 1", w, err)
	}
	t.Logf("loser saw %+v", w)
}

func TestDirStoreIgnoresStrayFiles(t *testing.T) {
	s, logs := newTestDirStore(t)
	mustClaim(t, s, "vm", 0, "hostA")
	for _, name := range []string{"epoch-12.json", "epoch-0000000000000000000x.json", "notes.txt", ".probe-1", "epoch-00000000000000000000.json"} {
		if err := os.WriteFile(filepath.Join(s.Dir(), "vm", name), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if c, err := s.Current(context.Background(), "vm"); err != nil || c.Epoch != 1 || c.Corrupt {
		t.Fatalf("Current = %+v, %v; want epoch 1", c, err)
	}
	if !strings.Contains(logs.String(), "malformed epoch name") {
		t.Errorf("stray epoch- files not reported; logs:\n%s", logs)
	}
}

func TestDirStoreFutureTimestamp(t *testing.T) {
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s, logs := newTestDirStore(t, WithClock(func() time.Time { return now }), WithFutureSkew(time.Minute))
	plantFile(t, s, Claim{VM: "vm", Epoch: 1, Owner: "hostA", ClaimedAt: now.Add(2 * time.Hour)})
	c, err := s.Current(context.Background(), "vm")
	if err != nil || c.Epoch != 1 || c.Owner != "hostA" || !strings.Contains(c.Problem, "2h0m0s in the future") {
		t.Fatalf("Current = %+v, %v; want hostA's epoch 1 flagged 2h in the future", c, err)
	}
	if !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("future claim not logged; logs:\n%s", logs)
	}
	w, err := s.ClaimNext(context.Background(), "vm", 0, "hostB", "x")
	if !errors.Is(err, ErrLost) || w.Owner != "hostA" {
		t.Fatalf("ClaimNext = %+v, %v; want ErrLost to hostA", w, err)
	}
}

// TestDirStoreTimeoutAfterCreate: storage hangs after the claim file was
// created. The call returns ErrStorageTimeout on time; the lingering goroutine
// finishes the claim later, and a retry by the same owner learns it won while
// the other contender loses.
func TestDirStoreTimeoutAfterCreate(t *testing.T) {
	gate := make(chan struct{})
	var blocked atomic.Bool
	s, _ := newTestDirStore(t, WithTimeout(50*time.Millisecond), withHook(func(op, _ string) {
		if op == "write" && blocked.CompareAndSwap(false, true) {
			<-gate
		}
	}))
	start := time.Now()
	_, err := s.ClaimNext(context.Background(), "vm", 0, "hostA", "x")
	if !errors.Is(err, ErrStorageTimeout) {
		t.Fatalf("ClaimNext: err = %v, want ErrStorageTimeout", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("timeout took %s", d)
	}
	close(gate)
	// Wait for the lingering goroutine: take every in-flight slot.
	for range cap(s.sem) {
		s.sem <- struct{}{}
	}
	for range cap(s.sem) {
		<-s.sem
	}
	w, err := s.ClaimNext(context.Background(), "vm", 0, "hostB", "x")
	if !errors.Is(err, ErrLost) || w.Owner != "hostA" {
		t.Fatalf("other contender: %+v, %v; want ErrLost to hostA", w, err)
	}
	mustClaim(t, s, "vm", 0, "hostA")
}

// TestDirStoreMaxInFlight: once the in-flight budget is used up by hung
// goroutines, calls fail with ErrStorageTimeout instead of piling up more.
func TestDirStoreMaxInFlight(t *testing.T) {
	gate := make(chan struct{})
	var hung atomic.Bool
	s, _ := newTestDirStore(t, WithTimeout(20*time.Millisecond), WithMaxInFlight(1), withHook(func(string, string) {
		if hung.Load() {
			<-gate
		}
	}))
	hung.Store(true)
	if _, err := s.Current(context.Background(), "vm"); !errors.Is(err, ErrStorageTimeout) {
		t.Fatalf("first call: err = %v, want ErrStorageTimeout", err)
	}
	_, err := s.Current(context.Background(), "vm")
	if !errors.Is(err, ErrStorageTimeout) || !strings.Contains(err.Error(), "outstanding") {
		t.Fatalf("second call: err = %v, want ErrStorageTimeout naming outstanding operations", err)
	}
	hung.Store(false)
	close(gate)
	s.sem <- struct{}{} // wait for the hung goroutine to finish
	<-s.sem
	if _, err := s.Current(context.Background(), "vm"); !errors.Is(err, ErrNoEpoch) {
		t.Fatalf("after recovery: err = %v, want ErrNoEpoch", err)
	}
}

const (
	helperEnvDir    = "FTVMD_EPOCH_HELPER_DIR"
	helperEnvOwner  = "FTVMD_EPOCH_HELPER_OWNER"
	helperEnvEpochs = "FTVMD_EPOCH_HELPER_EPOCHS"
)

// TestHelperClaimProcess is not a test: TestDirStoreMultiProcess runs the test
// binary as several processes that enter here. Each waits for its stdin to
// close (the start gun), then claims epochs until the target, printing
// "won <epoch>" for each win.
func TestHelperClaimProcess(t *testing.T) {
	dir := os.Getenv(helperEnvDir)
	if dir == "" {
		t.Skip("helper process for TestDirStoreMultiProcess")
	}
	owner := os.Getenv(helperEnvOwner)
	target, err := strconv.ParseUint(os.Getenv(helperEnvEpochs), 10, 64)
	if err != nil {
		t.Fatalf("bad %s: %v", helperEnvEpochs, err)
	}
	s, err := NewDirStore(dir, WithTimeout(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, os.Stdin)
	ctx := context.Background()
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for {
		var seen uint64
		c, err := s.Current(ctx, "vm")
		switch {
		case errors.Is(err, ErrNoEpoch):
		case err != nil:
			t.Fatalf("%s: Current: %v", owner, err)
		default:
			seen = c.Epoch
		}
		if seen >= target {
			return
		}
		got, err := s.ClaimNext(ctx, "vm", seen, owner, "multi-process race")
		switch {
		case err == nil:
			fmt.Fprintf(out, "won %d\n", got.Epoch)
		case errors.Is(err, ErrLost):
			fmt.Fprintf(out, "lost %d\n", seen+1)
		default:
			t.Fatalf("%s: ClaimNext(%d): %v", owner, seen, err)
		}
	}
}

// TestDirStoreMultiProcess: 8 processes race on one directory; every epoch has
// exactly one winner, and it is the owner recorded in the file.
func TestDirStoreMultiProcess(t *testing.T) {
	if os.Getenv(helperEnvDir) != "" {
		t.Skip("inside a helper process")
	}
	const (
		procs  = 8
		epochs = 200
	)
	s, _ := newTestDirStore(t)
	type proc struct {
		owner string
		cmd   *exec.Cmd
		gun   io.WriteCloser
		out   strings.Builder
	}
	ps := make([]*proc, procs)
	for i := range ps {
		p := &proc{owner: fmt.Sprintf("proc%d", i)}
		p.cmd = exec.Command(os.Args[0], "-test.run=^TestHelperClaimProcess$", "-test.count=1", "-test.v")
		p.cmd.Env = append(os.Environ(),
			helperEnvDir+"="+s.Dir(), helperEnvOwner+"="+p.owner, helperEnvEpochs+"="+strconv.Itoa(epochs))
		p.cmd.Stdout = &p.out
		p.cmd.Stderr = &p.out
		var err error
		if p.gun, err = p.cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
		if err := p.cmd.Start(); err != nil {
			t.Fatalf("start helper: %v", err)
		}
		ps[i] = p
	}
	for _, p := range ps {
		_ = p.gun.Close()
	}
	winners := make(map[uint64][]string)
	lost := 0
	for _, p := range ps {
		if err := p.cmd.Wait(); err != nil {
			t.Fatalf("%s: %v\n%s", p.owner, err, p.out.String())
		}
		for line := range strings.Lines(p.out.String()) {
			var e uint64
			if _, err := fmt.Sscanf(line, "won %d", &e); err == nil {
				winners[e] = append(winners[e], p.owner)
			} else if strings.HasPrefix(line, "lost ") {
				lost++
			}
		}
	}
	for e := uint64(1); e <= epochs; e++ {
		if len(winners[e]) != 1 {
			t.Errorf("epoch %d: winners %v, want exactly one", e, winners[e])
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.Dir(), "vm", epochFileName(e)))
		if err != nil {
			t.Fatal(err)
		}
		if c, problem := decodeClaim(data, "vm", e); problem != "" || c.Owner != winners[e][0] {
			t.Errorf("epoch %d: file says %+v (%s), winner reported %s", e, c, problem, winners[e][0])
		}
	}
	if len(winners) != epochs {
		t.Errorf("%d epochs won, want %d", len(winners), epochs)
	}
	t.Logf("%d processes, %d epochs, %d lost claims", procs, len(winners), lost)
}
