package bench

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

// fakeCopies is an in-memory protected VM: a primary and a backup whose status the
// test changes while a watch reads it.
type fakeCopies struct {
	mu       sync.Mutex
	p, b     control.VMStatus
	advance  bool // each backup read replays 1000 more instructions
	advanceP bool // each primary read logs 500 more
}

func newFakeCopies() *fakeCopies {
	return &fakeCopies{
		p:       control.VMStatus{State: "protected", Icount: 1 << 40, LagMS: 12, ThrottleQuota: 1},
		b:       control.VMStatus{State: "replaying", Icount: 1000},
		advance: true,
	}
}

func (f *fakeCopies) status(_ context.Context, h lab.Host, _ string) (control.VMStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if h.Name == lab.HostA.Name {
		if f.advanceP {
			f.p.Icount += 500
		}
		return f.p, nil
	}
	if f.advance {
		f.b.Icount += 1000
	}
	return f.b, nil
}

func (f *fakeCopies) set(fn func(f *fakeCopies)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

func consoles(t *testing.T, primary, backup string) Copies {
	t.Helper()
	d := t.TempDir()
	c := Copies{VM: "vm", PrimaryConsole: filepath.Join(d, "p.log"), BackupConsole: filepath.Join(d, "b.log")}
	if err := os.WriteFile(c.PrimaryConsole, []byte(primary), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.BackupConsole, []byte(backup), 0o644); err != nil {
		t.Fatal(err)
	}
	return c
}

// trafficUntil is a pattern that moves a byte every 10 ms for d, or until stopped.
func trafficUntil() LoadPattern {
	return LoadPattern{Name: "fake", Run: func(ctx context.Context, _ LoadTarget, d time.Duration) (Traffic, error) {
		var tr Traffic
		for start := time.Now(); time.Since(start) < d; {
			select {
			case <-ctx.Done():
				return tr, ctxErr(ctx, "fake", ctx.Err())
			case <-time.After(10 * time.Millisecond):
				tr.ToClientBytes++
			}
		}
		return tr, nil
	}}
}

func TestLoadPhaseInLockstep(t *testing.T) {
	f := newFakeCopies()
	c := consoles(t, "boot\ncounter 1\ncounter 2\n", "boot\ncounter 1\n")
	ph, err := runLoadPhase(context.Background(), f.status, c, trafficUntil(), LabTarget(), 1200*time.Millisecond, 500*time.Millisecond, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if ph.Stalled || ph.Error != "" || ph.ToClientBytes == 0 || ph.LagMS.N < 3 || ph.LagMS.P50 != 12 || ph.Seconds < 1.2 {
		t.Fatalf("phase: %+v", ph)
	}
	if !strings.Contains(ph.Line(), "stalled=false") || !strings.Contains(ph.JSON(), `"stalled":false`) {
		t.Fatalf("line %q, json %s", ph.Line(), ph.JSON())
	}
}

func TestLoadPhaseFailures(t *testing.T) {
	const grace = 400 * time.Millisecond
	for _, tc := range []struct {
		name    string
		break_  func(f *fakeCopies)
		backup  string // backup console ("" = a prefix of the primary's)
		want    string
		stalled bool
	}{
		{name: "replay stalls", break_: func(f *fakeCopies) { f.advance = false }, want: "stalled: its icount stood at", stalled: true},
		{name: "backup stops", break_: func(f *fakeCopies) { f.b.State = "failed"; f.b.Detail = "qemu exited" }, want: "backup failed (qemu exited)"},
		{name: "primary unprotected", break_: func(f *fakeCopies) { f.p.State = "unprotected" }, want: "primary unprotected"},
		{name: "replay emits", break_: func(f *fakeCopies) { f.b.EmittedFrames = 2 }, want: "emitted 2 frames"},
		{name: "invariant", break_: func(f *fakeCopies) { f.p.InvariantFails = 1 }, want: "invariant failed: 1 on the primary"},
		{name: "backup ahead", break_: func(f *fakeCopies) { f.p.Icount = 10 }, want: "more than the primary logged"},
		{name: "consoles diverge", backup: "boot\ncounter 9", want: "consoles diverge at byte 13"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeCopies()
			backup := tc.backup
			if backup == "" {
				backup = "boot\n"
			}
			c := consoles(t, "boot\ncounter 1\n", backup)
			if tc.break_ != nil {
				time.AfterFunc(300*time.Millisecond, func() { f.set(tc.break_) })
			}
			stopped := make(chan struct{})
			pat := trafficUntil()
			run := pat.Run
			pat.Run = func(ctx context.Context, tg LoadTarget, d time.Duration) (Traffic, error) {
				defer close(stopped)
				return run(ctx, tg, d)
			}
			t0 := time.Now()
			ph, err := runLoadPhase(context.Background(), f.status, c, pat, LabTarget(), time.Hour, grace, time.Second)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error with %q, got %v", tc.want, err)
			}
			if errors.Is(err, ErrStalled) != tc.stalled || ph.Stalled != tc.stalled || ph.Error != err.Error() {
				t.Fatalf("stalled %v, phase %+v, err %v", tc.stalled, ph, err)
			}
			select {
			case <-stopped:
			default:
				t.Fatal("the traffic driver was left running")
			}
			if el := time.Since(t0); el > 5*time.Second {
				t.Fatalf("the failure took %s to end the phase", el)
			}
		})
	}
}

func TestStallMessageSaysWhereTheCopiesStand(t *testing.T) {
	f := newFakeCopies()
	f.advance, f.advanceP = false, true
	f.p.LogWritten, f.p.LogAcked, f.p.LogReplayed = 5000, 4000, 3000
	c := consoles(t, "x", "x")
	ph, err := runLoadPhase(context.Background(), f.status, c, trafficUntil(), LabTarget(), time.Hour, 300*time.Millisecond, time.Second)
	if err == nil || !regexp.MustCompile(`while the primary logged [1-9]\d* more`).MatchString(err.Error()) {
		t.Errorf("want the primary's progress meanwhile in %v", err)
	}
	for _, want := range []string{"icount stood at 1000", "lag 12 ms", "log written 5000", "acked 4000", "replayed 3000"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want %q in %v", want, err)
		}
	}
	if ph.LongestStillS < 0.3 || ph.PrimaryLongestStillS > 0.3 {
		t.Errorf("backup still %.2f s, primary still %.2f s: want the backup's only", ph.LongestStillS, ph.PrimaryLongestStillS)
	}
}

func TestBackupCaughtUp(t *testing.T) {
	c := consoles(t, "a\nb\n", "a\nb\nc\n")
	if err := BackupCaughtUp(context.Background(), c.PrimaryConsole, c.BackupConsole, 10*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	c = consoles(t, "a\nb\n", "a\n")
	if err := BackupCaughtUp(context.Background(), c.PrimaryConsole, c.BackupConsole, 10*time.Millisecond); err == nil {
		t.Fatal("a backup behind passed")
	}
}

func TestSummarizeLoadPoolsRuns(t *testing.T) {
	runs := []LoadRun{
		{Phases: []LoadPhase{{Pattern: "get", Seconds: 60, ToClientMBs: 4, lags: []float64{1, 2, 3}}, {Pattern: "put", Seconds: 60, ToGuestMBs: 9, lags: []float64{5}}}},
		{Phases: []LoadPhase{{Pattern: "get", Seconds: 10, ToClientMBs: 2, Stalled: true, Error: "stalled", LongestStillS: 3, lags: []float64{100}}, {Pattern: "put", Error: "not run: phase get failed"}}},
	}
	sums := summarizeLoad(LoadPatterns(), runs)
	get, put := sums[0], sums[1]
	if get.Runs != 2 || get.Stalled != 1 || get.Failed != 1 || get.LagMS.N != 4 || get.LagMS.Max != 100 || get.LongestStil != 3 {
		t.Fatalf("get: %+v", get)
	}
	if put.Runs != 1 || put.Failed != 0 || put.ToGuestMBs.P50 != 9 {
		t.Fatalf("put: %+v", put)
	}
	if !strings.Contains(get.Line(), "stalled YES (1 of 2 runs)") || !strings.Contains(put.Line(), "stalled no") {
		t.Fatalf("lines: %q / %q", get.Line(), put.Line())
	}
}

func TestStallFollowUp(t *testing.T) {
	c := consoles(t, "x", "x")
	// Stuck for good: the error says it still stood after the follow-up.
	f := newFakeCopies()
	f.advance = false
	_, err := runLoadPhase(context.Background(), f.status, c, trafficUntil(), LabTarget(), time.Hour, 300*time.Millisecond, time.Second)
	if !errors.Is(err, ErrStalled) || !strings.Contains(err.Error(), "1 s later (traffic stopped) it still stood") {
		t.Fatalf("want a stall that still stood, got %v", err)
	}
	// Stuck for a while: still a failure, and the error says when it moved again.
	f = newFakeCopies()
	f.advance = false
	time.AfterFunc(time.Second, func() { f.set(func(f *fakeCopies) { f.advance = true }) })
	ph, err := runLoadPhase(context.Background(), f.status, c, trafficUntil(), LabTarget(), time.Hour, 300*time.Millisecond, 5*time.Second)
	if !errors.Is(err, ErrStalled) || !ph.Stalled || !strings.Contains(err.Error(), "it moved again") {
		t.Fatalf("want a stall that moved again, got %v", err)
	}
}

func TestThreadStates(t *testing.T) {
	s := ThreadStates(os.Getpid())
	if !strings.Contains(s, "wchan=") || strings.Count(s, "\n") < 2 {
		t.Fatalf("threads of this test: %q", s)
	}
	if s := ThreadStates(0); !strings.Contains(s, "no pid") {
		t.Fatalf("no pid: %q", s)
	}
}

func TestKeepFileOutlivesTheSource(t *testing.T) {
	d := t.TempDir()
	src, dst := filepath.Join(d, "log.rr"), filepath.Join(d, "kept")
	if err := os.WriteFile(src, []byte("rr log"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, []byte("stale"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := keepFile(src, dst); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(src); err != nil { // the next lab's purge
		t.Fatal(err)
	}
	if b, err := os.ReadFile(dst); err != nil || string(b) != "rr log" {
		t.Fatalf("kept %q %v", b, err)
	}
	if err := keepFile(filepath.Join(d, "missing"), dst); err == nil {
		t.Fatal("a missing source was kept")
	}
}
