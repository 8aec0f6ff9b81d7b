package agent

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lifecycle"
	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/logspace"
	"github.com/ftvmd/ftvmd/replay"
)

// keeperFixture is a VM directory with an rr log and a console log of given sizes,
// and a keeper whose plan the test sets.
type keeperFixture struct {
	rr, console string
	k           *logKeeper

	mu     sync.Mutex
	plan   logPlan
	pauses []bool
}

func newKeeperFixture(t *testing.T, rrBytes, consoleBytes int, limit int64, cfg Config) *keeperFixture {
	t.Helper()
	dir := t.TempDir()
	if err := logspace.Probe(dir); err != nil {
		t.Skipf("temp dir cannot punch holes: %v", err)
	}
	f := &keeperFixture{rr: filepath.Join(dir, "log.rr"), console: filepath.Join(dir, "console.log")}
	if err := os.WriteFile(f.rr, ones(rrBytes), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(f.console, ones(consoleBytes), 0o600); err != nil {
		t.Fatal(err)
	}
	f.k = newLogKeeper(testLogger(t), f.rr, f.console, limit, cfg, func() logPlan {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.plan
	})
	f.k.pause = func(_ context.Context, paused bool) error {
		f.mu.Lock()
		f.pauses = append(f.pauses, paused)
		f.mu.Unlock()
		return nil
	}
	return f
}

func ones(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = 1
	}
	return b
}

func (f *keeperFixture) set(p logPlan) {
	f.mu.Lock()
	f.plan = p
	f.mu.Unlock()
}

func (f *keeperFixture) status() control.VMStatus {
	var st control.VMStatus
	f.k.fill(&st)
	return st
}

// TestLogKeeperFreesOnlyWhatIsNotNeeded: the rr log is freed up to what its reader
// needs, in whole blocks, never beyond; a held plan frees nothing; status shows
// the allocation, not the size.
func TestLogKeeperFreesOnlyWhatIsNotNeeded(t *testing.T) {
	cfg := DefaultConfig("h", t.TempDir())
	f := newKeeperFixture(t, 8<<20, 1000, 1<<30, cfg)
	ctx := context.Background()

	f.set(logPlan{keep: logspace.Keep{Needed: 3<<20 + 100}, keeps: "until acked", canWait: true})
	f.k.step(ctx)
	st := f.status()
	if st.LogFreed != 3<<20 {
		t.Fatalf("freed %d, want %d (the block below the need)", st.LogFreed, 3<<20)
	}
	if st.LogFileBytes != 8<<20+1000 {
		t.Fatalf("file bytes %d: the log must keep its size", st.LogFileBytes)
	}
	if want := int64(5<<20 + 4096); st.LogDiskBytes > want+8192 || st.LogDiskBytes < 5<<20 {
		t.Fatalf("%d bytes on disk, want about %d", st.LogDiskBytes, want)
	}
	if st.LogKeeps != "until acked" || st.LogDiskLimit != 1<<30 || st.LogFSFree <= 0 || st.LogFreeError != "" || st.LogDiskAlarm != "" {
		t.Fatalf("status %+v", st)
	}
	// Bytes at and after the need are intact.
	b, err := os.ReadFile(f.rr)
	if err != nil {
		t.Fatal(err)
	}
	for i := 3 << 20; i < len(b); i++ {
		if b[i] != 1 {
			t.Fatalf("byte %d was freed; only bytes below %d may be", i, 3<<20+100)
		}
	}
	// Held: nothing more is freed whatever the need says.
	f.set(logPlan{keep: logspace.Keep{Needed: 8 << 20}, hold: true, keeps: "all (the VM is failed)"})
	f.k.step(ctx)
	if st := f.status(); st.LogFreed != 3<<20 {
		t.Fatalf("a held log was freed to %d", st.LogFreed)
	}
	// A tail kept behind the need.
	f.set(logPlan{keep: logspace.Keep{Needed: 8 << 20, Behind: 1 << 20}})
	f.k.step(ctx)
	if st := f.status(); st.LogFreed != 7<<20 {
		t.Fatalf("freed %d with 1 MiB kept behind 8 MiB", st.LogFreed)
	}
	if len(f.pauses) != 0 {
		t.Fatalf("paused %v far from the limit", f.pauses)
	}
}

// TestLogKeeperLimit: at the limit a guest that can wait for its backup is paused
// and resumes once the acknowledged log is freed; the limit wins over a kept whole
// log; the alarm says so and clears.
func TestLogKeeperLimit(t *testing.T) {
	cfg := DefaultConfig("h", t.TempDir())
	f := newKeeperFixture(t, 6<<20, 0, 4<<20, cfg)
	ctx := context.Background()

	// Nothing acknowledged yet: over the limit, paused.
	f.set(logPlan{keep: logspace.Keep{Needed: replay.HeaderSize}, keeps: "until acked", canWait: true})
	f.k.step(ctx)
	st := f.status()
	if !st.LogLimitPaused || len(f.pauses) != 1 || !f.pauses[0] {
		t.Fatalf("not paused at the limit: %+v, pauses %v", st, f.pauses)
	}
	if !strings.HasPrefix(st.LogDiskAlarm, "AT LIMIT") || !strings.Contains(st.LogDiskAlarm, "paused") {
		t.Fatalf("alarm %q", st.LogDiskAlarm)
	}
	f.k.step(ctx) // still over: not paused twice
	if len(f.pauses) != 1 {
		t.Fatalf("pauses %v", f.pauses)
	}
	// The backup acknowledges most of it: freed, resumed, alarm cleared.
	f.set(logPlan{keep: logspace.Keep{Needed: 5 << 20}, keeps: "until acked", canWait: true})
	f.k.step(ctx)
	st = f.status()
	if st.LogLimitPaused || len(f.pauses) != 2 || f.pauses[1] || st.LogDiskAlarm != "" || st.LogFreed != 5<<20 {
		t.Fatalf("after the ack: %+v, pauses %v", st, f.pauses)
	}

	// A whole log kept (--keep-log): kept below the limit, freed to the need over it.
	g := newKeeperFixture(t, 3<<20, 0, 4<<20, cfg)
	g.set(logPlan{keep: logspace.Keep{Needed: 3 << 20, All: true}, keeps: "all (--keep-log)"})
	g.k.step(ctx)
	if st := g.status(); st.LogFreed != 0 {
		t.Fatalf("a kept log was freed to %d below its limit", st.LogFreed)
	}
	if _, err := appendTo(g.rr, 2<<20); err != nil {
		t.Fatal(err)
	}
	g.k.step(ctx) // measures 5 MiB: over
	g.k.step(ctx) // frees to the need
	st = g.status()
	if st.LogFreed != 3<<20 || !strings.Contains(st.LogKeeps, "limit was reached") {
		t.Fatalf("over the limit: freed %d, keeps %q", st.LogFreed, st.LogKeeps)
	}
	if len(g.pauses) != 0 {
		t.Fatalf("a log that cannot shrink by waiting paused the guest: %v", g.pauses)
	}
}

func appendTo(path string, n int) (int, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return f.Write(ones(n))
}

// TestLogKeeperRotatesConsole: the console log past its size is rotated and its
// copies count against the limit.
func TestLogKeeperRotatesConsole(t *testing.T) {
	cfg := DefaultConfig("h", t.TempDir())
	cfg.ConsoleMaxBytes, cfg.ConsoleKeep = 64<<10, 2
	f := newKeeperFixture(t, 4096, 200<<10, 1<<30, cfg)
	f.set(logPlan{keep: logspace.Keep{Needed: replay.HeaderSize}})
	f.k.step(context.Background())
	st := f.status()
	if st.ConsoleRotations != 1 {
		t.Fatalf("%d rotations", st.ConsoleRotations)
	}
	cp, err := logspace.Stat(f.console + ".1")
	if err != nil || cp.Size != 200<<10 {
		t.Fatalf("copy %+v %v: the console's whole blocks go to console.log.1", cp, err)
	}
	con, err := logspace.Stat(f.console)
	if err != nil || con.Allocated > 8192 || con.Size != 200<<10 {
		t.Fatalf("console %+v %v: its blocks must be freed, its size kept", con, err)
	}
	// The copy counts against the limit, the freed console does not.
	if st.LogFileBytes != 4096+2*200<<10 || st.LogDiskBytes > 4096+cp.Allocated+con.Allocated {
		t.Fatalf("files %d bytes, %d on disk", st.LogFileBytes, st.LogDiskBytes)
	}
}

func TestLogAlarm(t *testing.T) {
	const gib = 1 << 30
	for _, c := range []struct {
		used, limit, free int64
		paused            bool
		want              string
	}{
		{used: gib / 2, limit: gib, free: 100 * gib, want: ""},
		{used: gib*8/10 + 1, limit: gib, free: 100 * gib, want: "80% of the VM's 1GiB"},
		{used: gib, limit: gib, free: 100 * gib, want: "AT LIMIT"},
		{used: gib, limit: gib, free: 100 * gib, paused: true, want: "guest paused"},
		{used: gib / 2, limit: gib, free: gib / 4, want: "the file system has 256MiB free, less than the 512MiB"},
		{used: gib * 9 / 10, limit: gib, free: 1 << 20, want: "90% of the VM's 1GiB (max_log_disk); the file system has 1MiB free"},
	} {
		got := logAlarm(c.used, c.limit, c.free, c.paused, "keeping only what is needed")
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("logAlarm(%d, %d, %d, %v) = %q, want %q", c.used, c.limit, c.free, c.paused, got, c.want)
		}
	}
}

// TestBackupLogPlan: a backup keeps what its replay has not been fed, and with a
// retention the whole log while it is within it, nothing more once it is not.
func TestBackupLogPlan(t *testing.T) {
	const fed, held = 5000, 9000
	none := backupLogPlan(fed, held, time.Hour, logspace.Retention{})
	if none.keep != (logspace.Keep{Needed: fed}) || none.hold || none.canWait {
		t.Fatalf("no retention: %+v", none)
	}
	within := backupLogPlan(fed, held, time.Minute, logspace.Retention{Age: time.Hour})
	if !within.keep.All || within.keep.FreeTo(false) != 0 || within.keep.FreeTo(true) != fed {
		t.Fatalf("within the retention: %+v", within)
	}
	lapsed := backupLogPlan(fed, held, 2*time.Hour, logspace.Retention{Age: time.Hour})
	if lapsed.keep.All || lapsed.keep.FreeTo(false) != fed || !strings.Contains(lapsed.keeps, "passed the retention") {
		t.Fatalf("lapsed: %+v", lapsed)
	}
	bySize := backupLogPlan(fed, held, 0, logspace.Retention{Bytes: held - 1})
	if bySize.keep.All {
		t.Fatalf("a log longer than the retention is kept whole: %+v", bySize)
	}
	if all := backupLogPlan(fed, held, 1000*time.Hour, logspace.Retention{All: true}); !all.keep.All {
		t.Fatalf("retention all: %+v", all)
	}
}

// TestPrimaryLogPlan: protected (or with the backup just lost), the log keeps what
// the backup has not acknowledged and the guest may wait for it; unprotected, its
// tail, once the sender no longer reads; failed, everything.
func TestPrimaryLogPlan(t *testing.T) {
	env := lifePrimary(t, nil, 10*time.Millisecond)
	p := env.p
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	p.sender = logging.NewSender(c1, nil, logging.SenderConfig{StartOffset: replay.HeaderSize})
	p.mu.Lock()
	p.written = 100 << 20
	p.mu.Unlock()

	got := p.logPlan()
	if got.keep != (logspace.Keep{Needed: replay.HeaderSize}) || !got.canWait || got.hold {
		t.Fatalf("protected: %+v", got)
	}
	p.keepLog = true
	if got := p.logPlan(); !got.keep.All || !strings.Contains(got.keeps, "--keep-log") {
		t.Fatalf("protected with --keep-log: %+v", got)
	}
	p.keepLog = false
	_ = p.life.step(lifecycle.PeerLost(errors.New("peer silent")))
	waitLife(t, p.life, lifecycle.Degraded)
	if got := p.logPlan(); got.keep.Needed != replay.HeaderSize || !got.canWait {
		t.Fatalf("degraded: %+v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := p.unprotect(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	waitLife(t, p.life, lifecycle.Unprotected)
	// The sender may still be reading: nothing past what it sent is freed.
	if got := p.logPlan(); got.keep.Needed != replay.HeaderSize || got.canWait {
		t.Fatalf("unprotected, sender running: %+v", got)
	}
	done := make(chan struct{})
	close(done)
	p.mu.Lock()
	p.senderDone = done
	p.mu.Unlock()
	got = p.logPlan()
	if got.keep.Needed != 100<<20 || got.keep.Behind != DefaultUnprotectedLogKeep || got.keep.All || got.canWait {
		t.Fatalf("unprotected: %+v", got)
	}
	p.a.cfg.UnprotectedLogKeep = -1
	if got := p.logPlan(); !got.keep.All {
		t.Fatalf("unprotected, keep all: %+v", got)
	}
	p.fail(errors.New("test fault"))
	waitLife(t, p.life, lifecycle.Failed)
	if got := p.logPlan(); !got.hold {
		t.Fatalf("failed: %+v", got)
	}
}

// TestConsoleTailThroughRotation: the divergence sentinel's console reader, following
// a console that is rotated under it, reads every byte once and in order, and a
// rotation waits for what it has not read.
func TestConsoleTailThroughRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "console.log")
	if err := logspace.Probe(filepath.Dir(path)); err != nil {
		t.Skipf("temp dir cannot punch holes: %v", err)
	}
	w, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	rot := &logspace.Rotator{Path: path, MaxBytes: 64 << 10, Keep: 1}
	tail := newConsoleTail(path, rot)
	var all, got []byte
	for i := 0; len(all) < 1<<20; i++ {
		line := []byte(strings.Repeat("x", i%300) + "\n")
		if _, err := w.Write(line); err != nil {
			t.Fatal(err)
		}
		all = append(all, line...)
		if i%40 == 0 {
			b, err := tail.next()
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, b...)
		}
		if i%25 == 0 {
			if _, err := rot.Rotate(); err != nil {
				t.Fatal(err)
			}
		}
	}
	for {
		b, err := tail.next()
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 {
			break
		}
		got = append(got, b...)
	}
	if string(got) != string(all) {
		t.Fatalf("the tail read %d bytes of %d, or not in order", len(got), len(all))
	}
	if rot.Rotations() == 0 {
		t.Fatal("no rotation happened")
	}
	tail.close()
}
