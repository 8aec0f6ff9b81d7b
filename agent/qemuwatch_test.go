package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/journal"
	"github.com/ftvmd/ftvmd/lifecycle"
	"github.com/ftvmd/ftvmd/qemu"
)

// watchStep is one probe call: the fake clock moves by dt, the call starts (if one
// is due; start says whether the test expects one), takes took, and ends with r.
// The want fields are the watch's answer and state after it.
type watchStep struct {
	dt    time.Duration
	start bool
	took  time.Duration
	r     probeResult

	want         watchChange
	unresponsive bool
	misses       int
	episodes     uint64
}

func runWatch(t *testing.T, after time.Duration, steps []watchStep) (*qemuWatch, time.Time) {
	t.Helper()
	w := newQEMUWatch(after)
	now := time.Unix(1_700_000_000, 0)
	for i, s := range steps {
		now = now.Add(s.dt)
		if got := w.due(now); got != s.start {
			t.Fatalf("step %d (%+v): due %v, want %v", i, s, got, s.start)
		}
		if !s.start {
			continue
		}
		w.started(now)
		now = now.Add(s.took)
		var err error
		if s.r == probeFailed {
			err = errors.New("qmp query-status: EOF")
		}
		got := w.observe(now, s.r, err)
		st := w.state()
		if got != s.want {
			t.Fatalf("step %d (%+v): change %v, want %v (state %+v)", i, s, got, s.want, st)
		}
		if st.Unresponsive != s.unresponsive || st.Misses != s.misses || st.Episodes != s.episodes {
			t.Fatalf("step %d (%+v): state %+v, want unresponsive %v, %d misses, %d episodes", i, s, st, s.unresponsive, s.misses, s.episodes)
		}
	}
	return w, now
}

func TestQEMUWatch(t *testing.T) {
	const after = 10 * time.Second
	ms := time.Millisecond
	sec := time.Second
	for _, tc := range []struct {
		name  string
		steps []watchStep
	}{
		{"answers", []watchStep{
			{start: true, took: ms},
			{dt: 500 * ms, start: false},
			{dt: 499 * ms, start: true, took: 2 * ms},
			{dt: sec, start: true, took: ms},
		}},
		{"savevm-holds-the-monitor", []watchStep{
			// A probe queued behind a long legit command waits several calls and is
			// answered within the threshold: never unresponsive, however many calls
			// ran out of their wait.
			{start: true, took: sec, r: probeWaiting},
			{start: true, took: sec, r: probeWaiting},
			{start: true, took: sec, r: probeWaiting},
			{start: true, took: 3 * sec, r: probeWaiting},
			{start: true, took: 3 * sec},
			{dt: sec, start: true, took: ms},
		}},
		{"sigstop-5s-not-reported", []watchStep{
			// The chaos fault pause-primary-qemu: stopped 5 s, then answers.
			{start: true, took: ms},
			{dt: sec, start: true, took: sec, r: probeWaiting},
			{start: true, took: sec, r: probeWaiting},
			{start: true, took: sec, r: probeWaiting},
			{start: true, took: sec, r: probeWaiting},
			{start: true, took: sec},
		}},
		{"wedged-reported-at-threshold-not-before-then-clears", []watchStep{
			{start: true, took: ms},
			{dt: sec, start: true, took: sec, r: probeWaiting}, // out since t=1 s
			{start: true, took: sec, r: probeWaiting},
			{start: true, took: 7 * sec, r: probeWaiting},
			{start: true, took: sec - ms, r: probeWaiting}, // 9.999 s old
			// The next call is due 1 ms later; the probe is 10 s old when it starts.
			{dt: ms, start: true, r: probeWaiting, want: watchUnresponsive, unresponsive: true, episodes: 1},
			// Reported once; it stays so while the probe is out.
			{dt: sec, start: true, took: sec, r: probeWaiting, unresponsive: true, episodes: 1},
			{start: true, took: time.Hour, r: probeWaiting, unresponsive: true, episodes: 1},
			// The answer clears it.
			{start: true, took: 30 * ms, want: watchAnswers, episodes: 1},
			{dt: sec, start: true, took: ms, episodes: 1},
		}},
		{"misses-in-a-row", []watchStep{
			// A monitor that fails outright: three in a row.
			{start: true, took: ms, r: probeFailed, misses: 1},
			{dt: sec, start: true, took: ms, r: probeFailed, misses: 2},
			{dt: sec, start: true, took: ms, r: probeFailed, misses: 3, want: watchUnresponsive, unresponsive: true, episodes: 1},
			{dt: sec, start: true, took: ms, r: probeFailed, misses: 4, unresponsive: true, episodes: 1},
			{dt: sec, start: true, took: ms, want: watchAnswers, episodes: 1},
		}},
		{"misses-not-in-a-row", []watchStep{
			{start: true, took: ms, r: probeFailed, misses: 1},
			{dt: sec, start: true, took: ms, r: probeFailed, misses: 2},
			{dt: sec, start: true, took: ms},
			{dt: sec, start: true, took: ms, r: probeFailed, misses: 1},
			{dt: sec, start: true, took: ms, r: probeFailed, misses: 2},
		}},
		{"episodes-counted", []watchStep{
			{start: true, took: 10 * sec, r: probeWaiting, want: watchUnresponsive, unresponsive: true, episodes: 1},
			{start: true, took: ms, want: watchAnswers, episodes: 1},
			// The next episode measures from its own first unanswered probe.
			{dt: sec, start: true, took: 9 * sec, r: probeWaiting, episodes: 1},
			{start: true, took: sec, r: probeWaiting, want: watchUnresponsive, unresponsive: true, episodes: 2},
			{start: true, took: ms, want: watchAnswers, episodes: 2},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { runWatch(t, after, tc.steps) })
	}
}

// TestQEMUWatchState: what status and events are told.
func TestQEMUWatchState(t *testing.T) {
	w, now := runWatch(t, 2*time.Second, []watchStep{
		{start: true, took: time.Millisecond},
		{dt: time.Second, start: true, took: time.Second, r: probeWaiting},
		{start: true, took: time.Second, r: probeWaiting, want: watchUnresponsive, unresponsive: true, episodes: 1},
	})
	st := w.state()
	t0 := time.Unix(1_700_000_000, 0)
	if want := t0.Add(1001 * time.Millisecond); !st.Since.Equal(want) {
		t.Fatalf("since %v, want %v (the first unanswered probe's start)", st.Since, want)
	}
	if want := t0.Add(time.Millisecond); !st.LastGood.Equal(want) {
		t.Fatalf("last good %v, want %v", st.LastGood, want)
	}
	if r := st.Reason(); !strings.HasPrefix(r, "qemu not answering since 22:13:21 (last good probe 22:13:20)") {
		t.Fatalf("reason %q", r)
	}
	var h qemuHealth
	h.set(st)
	var vs control.VMStatus
	h.fill(&vs, now)
	if !vs.QEMUUnresponsive || vs.QEMUUnresponsiveSec != 2 || !vs.QEMUSince.Equal(st.Since) || !vs.QEMULastAnswer.Equal(st.LastGood) || vs.QEMUUnresponsives != 1 {
		t.Fatalf("status %+v from %+v", vs, st)
	}
	w.started(now)
	if c := w.observe(now.Add(5*time.Millisecond), probeAnswered, nil); c != watchAnswers {
		t.Fatalf("answer: %v", c)
	}
	if l := w.state(); l.Lasted != 2005*time.Millisecond || !l.Since.IsZero() {
		t.Fatalf("cleared state %+v, want it to have lasted 2.005s", l)
	}
	h.set(w.state())
	vs = control.VMStatus{}
	h.fill(&vs, now)
	if vs.QEMUUnresponsive || vs.QEMUUnresponsiveSec != 0 || !vs.QEMUSince.IsZero() || vs.QEMUUnresponsives != 1 {
		t.Fatalf("status after the answer %+v", vs)
	}
	if r := (qemuLiveness{Since: t0, LastErr: "EOF"}).Reason(); !strings.Contains(r, "no probe answered yet") || !strings.HasSuffix(r, ": EOF") {
		t.Fatalf("reason with no answer and an error: %q", r)
	}
}

func TestQEMUWatchDefaultThreshold(t *testing.T) {
	for _, after := range []time.Duration{0, -time.Second} {
		if w := newQEMUWatch(after); w.after != DefaultQEMUUnresponsiveAfter {
			t.Fatalf("threshold %v gave %v, want the default", after, w.after)
		}
	}
	c := DefaultConfig("h", t.TempDir())
	if c.QEMUUnresponsiveAfter != DefaultQEMUUnresponsiveAfter {
		t.Fatalf("default config: %v", c.QEMUUnresponsiveAfter)
	}
	for _, bad := range []time.Duration{-time.Second, 500 * time.Millisecond} {
		c.QEMUUnresponsiveAfter = bad
		if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "qemu unresponsive threshold") {
			t.Fatalf("threshold %v: %v", bad, err)
		}
	}
	// The chaos fault pause-primary-qemu stops the QEMU for up to 5 s and expects
	// nothing to change: the default must not report it.
	if DefaultQEMUUnresponsiveAfter <= 5*time.Second {
		t.Fatalf("default %v would report the 2-5 s pause-primary-qemu fault", DefaultQEMUUnresponsiveAfter)
	}
}

// fakeProber is a QEMU whose answers the test controls, on a fake clock: a probe
// call while it is wedged waits its whole deadline (the clock moves by it), one
// while it answers takes lat. It counts commands sent as qemu.Machine.Probe does:
// one in flight at a time.
type fakeProber struct {
	mu      sync.Mutex
	now     time.Time
	wedged  bool
	fail    error
	lat     time.Duration
	calls   int
	onProbe func(n int) // called at each call's start, under no lock
}

func (f *fakeProber) clock() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }

func (f *fakeProber) sleep(ctx context.Context, d time.Duration) bool {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
	return ctx.Err() == nil
}

func (f *fakeProber) Probe(ctx context.Context) error {
	f.mu.Lock()
	f.calls++
	n, hook := f.calls, f.onProbe
	f.mu.Unlock()
	if hook != nil {
		hook(n)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case f.fail != nil:
		f.now = f.now.Add(f.lat)
		return fmt.Errorf("qmp query-status: %w", f.fail)
	case f.wedged:
		f.now = f.now.Add(qemuProbeWait)
		return fmt.Errorf("qmp query-status: %w", context.DeadlineExceeded)
	}
	f.now = f.now.Add(f.lat)
	return nil
}

// TestWatchQEMULoop: the loop probes on its period, reports a QEMU wedged past the
// threshold once, clears it when it answers, and ends when the QEMU exits.
func TestWatchQEMULoop(t *testing.T) {
	f := &fakeProber{now: time.Unix(1_700_000_000, 0), lat: time.Millisecond}
	type rep struct {
		c  watchChange
		at time.Time
	}
	var reps []rep
	var wedgedAt time.Time
	f.onProbe = func(n int) {
		f.mu.Lock()
		defer f.mu.Unlock()
		switch n {
		case 5:
			f.wedged, wedgedAt = true, f.now
		case 25:
			f.wedged = false
		case 30:
			f.fail = qemu.ErrExited
		}
	}
	ctx := context.Background()
	watchQEMU(ctx, f, newQEMUWatch(5*time.Second), f.clock, f.sleep, func(c watchChange, l qemuLiveness) {
		if c != watchSame {
			reps = append(reps, rep{c, f.now})
		}
	})
	if f.calls != 30 {
		t.Fatalf("%d probe calls, want 30 (the loop ends at the exit)", f.calls)
	}
	if len(reps) != 2 || reps[0].c != watchUnresponsive || reps[1].c != watchAnswers {
		t.Fatalf("reports %+v, want unresponsive then answers", reps)
	}
	if d := reps[0].at.Sub(wedgedAt); d < 5*time.Second || d > 5*time.Second+qemuProbeWait {
		t.Fatalf("reported %v after the wedge, want within one probe wait of the 5s threshold", d)
	}
}

// TestWatchQEMUStops: a cancelled context ends the loop at once.
func TestWatchQEMUStops(t *testing.T) {
	f := &fakeProber{now: time.Unix(1_700_000_000, 0), lat: time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	f.onProbe = func(n int) {
		if n == 3 {
			cancel()
		}
	}
	watchQEMU(ctx, f, newQEMUWatch(0), f.clock, f.sleep, func(watchChange, qemuLiveness) {})
	if f.calls != 3 {
		t.Fatalf("%d calls, want 3", f.calls)
	}
}

// blockingProber is a QEMU monitor on the real clock: while gate is open (nil or
// closed) it answers at once; while it is an open channel, a probe waits for it to
// close (or for its context).
type blockingProber struct {
	mu   sync.Mutex
	gate chan struct{}
}

func (b *blockingProber) Probe(ctx context.Context) error {
	b.mu.Lock()
	g := b.gate
	b.mu.Unlock()
	if g == nil {
		return nil
	}
	select {
	case <-g:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qmp query-status: %w", ctx.Err())
	}
}

// TestWatchVMQEMU: the agent's wiring of the watch, on the real clock: a QEMU that
// stops answering shows in the copy's status, its journal and its lifecycle, and
// all three clear when it answers.
func TestWatchVMQEMU(t *testing.T) {
	a := testAgent(t, "hosta", "")
	j := journal.NewMemory(100)
	a.journal = j
	a.cfg.QEMUUnresponsiveAfter = 300 * time.Millisecond // below the flag's minimum: a fast test
	gate := make(chan struct{})
	q := &blockingProber{gate: gate}
	var h qemuHealth
	var mu sync.Mutex
	var steps []string
	step := func(ev lifecycle.Event) error {
		mu.Lock()
		defer mu.Unlock()
		steps = append(steps, ev.Type.String()+" "+ev.Reason)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		a.watchVMQEMU(ctx, a.log, "vm1", "primary", func() string { return "hostb" }, q, &h, step)
	}()
	defer func() { cancel(); <-done }()

	wait := func(what string, cond func(control.VMStatus) bool) control.VMStatus {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			var st control.VMStatus
			h.fill(&st, time.Now())
			if cond(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s: %+v", what, st)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	st := wait("unresponsive", func(s control.VMStatus) bool { return s.QEMUUnresponsive })
	if st.QEMUUnresponsives != 1 || st.QEMUUnresponsiveSec < 0.3 || !st.QEMULastAnswer.IsZero() {
		t.Fatalf("status %+v", st)
	}
	mu.Lock()
	got := strings.Join(steps, "|")
	mu.Unlock()
	if !strings.HasPrefix(got, "QEMUUnresponsive qemu not answering since ") || !strings.Contains(got, "no probe answered yet") {
		t.Fatalf("lifecycle heard %q", got)
	}
	q.mu.Lock()
	q.gate = nil
	q.mu.Unlock()
	close(gate)
	st = wait("answers", func(s control.VMStatus) bool { return !s.QEMUUnresponsive })
	if st.QEMUUnresponsives != 1 || st.QEMULastAnswer.IsZero() {
		t.Fatalf("status after the answer %+v", st)
	}
	mu.Lock()
	got = strings.Join(steps, "|")
	mu.Unlock()
	if n := strings.Count(got, "|"); n != 1 || !strings.HasSuffix(got, "|QEMUAnswers ") {
		t.Fatalf("lifecycle heard %q, want one unresponsive then one answer", got)
	}
	evs, _ := j.Read("vm1", 0)
	if k := strings.Join(kinds(evs), ","); k != "qemu-unresponsive,qemu-answers" {
		t.Fatalf("events %s", k)
	}
	if evs[0].Role != "primary" || evs[0].Peer != "hostb" || !strings.HasPrefix(evs[0].Detail, "qemu not answering since") || evs[1].DurationMS < 300 {
		t.Fatalf("events %+v", evs)
	}
}
