package netbuf

import (
	"errors"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/throttle"
)

// fakeShaper is an in-memory Shaper: it records what was applied and serves the
// counters a test sets, as a tap with a tbf would.
type fakeShaper struct {
	installed            bool
	rate                 uint64
	burst, limit         uint32
	sets, clears         int
	setErr, clearErr     error
	countErr             error
	tx                   uint64
	backlog, backlogN    uint32
	over, drops, packets uint64
}

func (f *fakeShaper) Set(rate uint64, burst, limit uint32) error {
	if f.setErr != nil {
		return f.setErr
	}
	if !f.installed {
		f.over, f.drops, f.packets = 0, 0, 0 // a new qdisc counts from 0
	}
	f.installed, f.rate, f.burst, f.limit = true, rate, burst, limit
	f.sets++
	return nil
}

func (f *fakeShaper) Clear() error {
	if f.clearErr != nil {
		return f.clearErr
	}
	f.installed, f.rate, f.backlog, f.backlogN = false, 0, 0, 0
	f.clears++
	return nil
}

func (f *fakeShaper) Counters() (ShaperCounters, error) {
	if f.countErr != nil {
		return ShaperCounters{}, f.countErr
	}
	c := ShaperCounters{TxBytes: f.tx, Installed: f.installed}
	if f.installed {
		c.Backlog, c.BacklogFrames, c.Overlimits, c.Drops, c.Packets = f.backlog, f.backlogN, f.over, f.drops, f.packets
	}
	return c, nil
}

func newTestTapPacer(t *testing.T, sh Shaper, now *time.Time) *TapPacer {
	t.Helper()
	p, err := throttle.NewPacer(throttle.PacerConfig{Bound: 100 * time.Millisecond, MinRate: 100e3})
	if err != nil {
		t.Fatal(err)
	}
	tp, err := NewTapPacer(TapPacerConfig{Pacer: p, Shaper: sh, QueueBytes: 1 << 20, Now: func() time.Time { return *now }})
	if err != nil {
		t.Fatal(err)
	}
	return tp
}

func TestTapPacerConfig(t *testing.T) {
	p, err := throttle.NewPacer(throttle.PacerConfig{Bound: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, cfg := range []TapPacerConfig{
		{Shaper: &fakeShaper{}, QueueBytes: 1},
		{Pacer: p, QueueBytes: 1},
		{Pacer: p, Shaper: &fakeShaper{}},
		{Pacer: p, Shaper: &fakeShaper{}, QueueBytes: -1},
		{Pacer: p, Shaper: &fakeShaper{}, QueueBytes: 1, MTU: -1},
	} {
		if _, err := NewTapPacer(cfg); !errors.Is(err, ErrTapPacerConfig) {
			t.Errorf("NewTapPacer(%+v) = %v, want ErrTapPacerConfig", cfg, err)
		}
	}
}

// Step by step: no qdisc while the lag is within the bound; the tbf installed at
// half the rate the tap's counter saw flowing once it passes the bound, with the
// pacer's queue as its limit and a burst of 10 ms (at least two frames); changed
// in place as the rate moves; the qdisc's drops and backlog in the stats; removed
// when pacing ends.
func TestTapPacerFollowsPacer(t *testing.T) {
	sh := &fakeShaper{}
	now := time.Unix(0, 0)
	tp := newTestTapPacer(t, sh, &now)
	sample := func(txDelta uint64, lag time.Duration) {
		now = now.Add(100 * time.Millisecond)
		sh.tx += txDelta
		tp.Pace(throttle.Sample{Lag: lag})
	}
	sample(0, 0) // the first sample: counters are taken as the base
	sample(1e6, 50*time.Millisecond)
	if sh.installed || sh.sets != 0 {
		t.Fatalf("qdisc set within the bound: %+v", sh)
	}
	// 1.6 MB in 100 ms (16 MB/s) with the lag over the bound: 8 MB/s.
	sample(1.6e6, 150*time.Millisecond)
	if !sh.installed || sh.rate != 8e6 || sh.limit != 1<<20 || sh.burst != 80e3 {
		t.Fatalf("after engaging: %+v, want tbf at 8 MB/s, burst 80 kB, limit 1 MiB", sh)
	}
	// The qdisc holds 30 kB and dropped 2 frames; the lag still grows: halved,
	// changed in place.
	sh.backlog, sh.backlogN, sh.drops, sh.over, sh.packets = 30e3, 20, 2, 5, 500
	sample(800e3, 160*time.Millisecond)
	if !sh.installed || sh.rate != 4e6 || sh.sets != 2 || sh.clears != 0 {
		t.Fatalf("after the lag grew: %+v, want the rate changed in place to 4 MB/s", sh)
	}
	st := tp.PacerStats()
	if !st.Active || st.Drops != 2 || st.QueueBytes != 30e3 || st.QueueFrames != 20 || st.Paced != 500 || st.Engaged != 1 {
		t.Fatalf("stats %+v", st)
	}
	// Falling above the set point: the rate holds, no netlink call.
	sh.backlog, sh.backlogN = 0, 0
	sample(400e3, 90*time.Millisecond)
	if sh.sets != 2 {
		t.Fatalf("qdisc set again with the rate unchanged: %d sets", sh.sets)
	}
	// Below the set point and the qdisc held frames back (overlimits moved):
	// raised by an eighth of the engaging rate.
	sh.over += 3
	sample(400e3, 30*time.Millisecond)
	if sh.rate != 5e6 {
		t.Fatalf("rate %d after a limited sample below the set point, want 5 MB/s", sh.rate)
	}
	// Below it, nothing held back: not raised.
	sample(100e3, 30*time.Millisecond)
	if sh.rate != 5e6 {
		t.Fatalf("rate %d after an unlimited sample, want 5 MB/s", sh.rate)
	}
	// A quiet second well within the bound ends pacing: the qdisc goes.
	for i := 0; i < 10; i++ {
		sample(1e3, 10*time.Millisecond)
	}
	if sh.installed || sh.clears != 1 {
		t.Fatalf("after a quiet second: %+v, want the qdisc removed", sh)
	}
	st = tp.PacerStats()
	if st.Active || st.Rate != 0 || st.QueueBytes != 0 || st.Drops != 2 || st.PacedFor <= 0 {
		t.Fatalf("stats after release %+v", st)
	}
	// Engaged again: a fresh qdisc whose counters start at 0 (its drops add up).
	sample(1e6, 200*time.Millisecond)
	if !sh.installed || sh.sets != 4 {
		t.Fatalf("re-engaging: %+v", sh)
	}
	sh.drops = 1
	sample(0, 300*time.Millisecond)
	if st := tp.PacerStats(); st.Drops != 3 || st.Engaged != 2 {
		t.Fatalf("stats after re-engaging %+v, want 3 drops over both qdiscs", st)
	}
	// Losing the backup: removed at once.
	tp.ReleasePacing()
	if sh.installed || tp.PacerStats().Active {
		t.Fatalf("after ReleasePacing: %+v", sh)
	}
}

// A failure to install, change or remove the qdisc, or to read the counters, is
// counted and tried again at the next sample; nothing panics, and the pacer's
// decisions go on.
func TestTapPacerErrorsCountedNotFatal(t *testing.T) {
	sh := &fakeShaper{setErr: errors.New("no tbf here")}
	now := time.Unix(0, 0)
	tp := newTestTapPacer(t, sh, &now)
	step := func(lag time.Duration) {
		now = now.Add(100 * time.Millisecond)
		sh.tx += 1e6
		tp.Pace(throttle.Sample{Lag: lag})
	}
	step(0)
	step(200 * time.Millisecond)
	st := tp.PacerStats()
	if sh.installed || !st.Active || st.ApplyErrors != 1 {
		t.Fatalf("failed install: shaper %+v, stats %+v", sh, st)
	}
	// The next sample tries again and succeeds.
	sh.setErr = nil
	step(210 * time.Millisecond)
	if !sh.installed || tp.PacerStats().ApplyErrors != 1 {
		t.Fatalf("retry: %+v", sh)
	}
	// Counters that cannot be read: counted, the sample still steers the rate.
	sh.countErr = errors.New("netlink busy")
	rate := sh.rate
	step(300 * time.Millisecond)
	if st := tp.PacerStats(); st.ApplyErrors != 2 || sh.rate >= rate {
		t.Fatalf("unreadable counters: errors %d, rate %d (was %d), want halved", st.ApplyErrors, sh.rate, rate)
	}
	sh.countErr = nil
	// A removal that fails is tried again; Close then removes it.
	sh.clearErr = errors.New("busy")
	tp.ReleasePacing()
	if !sh.installed || tp.PacerStats().ApplyErrors != 3 {
		t.Fatalf("failed removal: %+v", sh)
	}
	if err := tp.Close(); err == nil {
		t.Fatal("Close hid the failed removal")
	}
	sh.clearErr = nil
	if err := tp.Close(); err != nil || sh.installed {
		t.Fatalf("Close: %v, %+v", err, sh)
	}
	// Closed: later samples install nothing.
	step(time.Second)
	step(2 * time.Second)
	if sh.installed {
		t.Fatal("a sample after Close installed the qdisc")
	}
}

func TestShapeBurst(t *testing.T) {
	for _, c := range []struct {
		rate uint64
		mtu  int
		want uint32
	}{
		{100e6, 1518, 1e6},      // 10 ms at 100 MB/s
		{8e6, 1518, 80e3},       // 10 ms at 8 MB/s
		{256 << 10, 1518, 3036}, // the floor rate: two frames, not 2.6 kB
		{1e3, 9018, 18036},      // jumbo frames
	} {
		if got := shapeBurst(c.rate, c.mtu); got != c.want {
			t.Errorf("shapeBurst(%d, %d) = %d, want %d", c.rate, c.mtu, got, c.want)
		}
	}
}

// blockingShaper is a fakeShaper whose Set blocks until release is closed, as a
// netlink call stuck in the kernel would.
type blockingShaper struct {
	fakeShaper
	entered chan struct{}
	release chan struct{}
}

func (b *blockingShaper) Set(rate uint64, burst, limit uint32) error {
	close(b.entered)
	<-b.release
	return b.fakeShaper.Set(rate, burst, limit)
}

// A kernel call that blocks holds up the next sample, never the pacer's stats
// (the agent's status and its ack loop read them): before, Pace held the lock
// PacerStats takes across its netlink calls.
func TestTapPacerStatsDoNotWaitOnTheKernel(t *testing.T) {
	sh := &blockingShaper{entered: make(chan struct{}), release: make(chan struct{})}
	now := time.Unix(0, 0)
	tp := newTestTapPacer(t, sh, &now)
	tp.Pace(throttle.Sample{}) // the base
	now = now.Add(100 * time.Millisecond)
	sh.tx += 1.6e6
	done := make(chan struct{})
	go func() {
		defer close(done)
		tp.Pace(throttle.Sample{Lag: 150 * time.Millisecond}) // engages: Set blocks
	}()
	<-sh.entered
	got := make(chan throttle.PacerStats, 1)
	go func() { got <- tp.PacerStats() }()
	select {
	case st := <-got:
		if !st.Active || st.Rate != 8e6 {
			t.Fatalf("stats while the qdisc is being set: %+v, want active at 8 MB/s", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("PacerStats waited on a blocked netlink call")
	}
	close(sh.release)
	<-done
	if !sh.installed || sh.rate != 8e6 {
		t.Fatalf("after the call returned: %+v", sh.fakeShaper)
	}
}
