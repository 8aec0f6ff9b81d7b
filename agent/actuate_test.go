package agent

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/replay"
	"github.com/ftvmd/ftvmd/throttle"
)

// gate blocks the calls that pass it while closed, as a netlink request or a
// cgroup write stuck in the kernel would.
type gate struct {
	once    sync.Once
	entered chan struct{} // closed when the first call blocks
	open    chan struct{}
}

func newGate() *gate { return &gate{entered: make(chan struct{}), open: make(chan struct{})} }

func (g *gate) pass() {
	g.once.Do(func() { close(g.entered) })
	<-g.open
}

// fakePacer is an inputPacer that records its calls and runs a real
// throttle.Pacer, blocking in Pace and ReleasePacing while its gate is closed.
type fakePacer struct {
	g     *gate
	mu    sync.Mutex
	calls []string
	p     *throttle.Pacer
	now   time.Time
}

func newFakePacer(t *testing.T, g *gate) *fakePacer {
	t.Helper()
	p, err := throttle.NewPacer(throttle.PacerConfig{Bound: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return &fakePacer{g: g, p: p, now: time.Unix(1_700_000_000, 0)}
}

func (f *fakePacer) Pace(s throttle.Sample) {
	f.g.pass()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "pace")
	f.now = f.now.Add(100 * time.Millisecond)
	f.p.Observe(s, f.now)
}

func (f *fakePacer) ReleasePacing() {
	f.g.pass()
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, "release")
	f.p.Release()
}

func (f *fakePacer) PacerStats() throttle.PacerStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.p.Stats()
}

func (f *fakePacer) log() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// fakeQuota is a cgroup's SetQuota that records the quotas and blocks while its
// gate is closed.
type fakeQuota struct {
	g  *gate
	mu sync.Mutex
	qs []float64
}

func (f *fakeQuota) set(q float64) error {
	f.g.pass()
	f.mu.Lock()
	f.qs = append(f.qs, q)
	f.mu.Unlock()
	return nil
}

func (f *fakeQuota) log() []float64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.qs)
}

// ackOut is an output path that records the newest ack.
type ackOut struct {
	fakeOut
	acked atomic.Int64
}

func (o *ackOut) Ack(off int64) { o.acked.Store(max(o.acked.Load(), off)) }

func startActuator(t *testing.T, a *actuator) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	a.start(ctx, func(f func()) { wg.Add(1); go func() { defer wg.Done(); f() }() })
	t.Cleanup(func() { cancel(); wg.Wait() })
}

// The ack loop hands every ack to the output rule while the pacing and the quota
// calls are blocked (before, it made them itself: a netlink call or a cgroup
// write that blocked held the acks, and with them the guest's output, for as long
// as it blocked). The blocked calls do not queue the later decisions either: one
// call each, however many samples came meanwhile.
func TestAckLoopNotHeldByBlockedActuators(t *testing.T) {
	a := testAgent(t, "hosta", "")
	p := testPrimary(t, a, "hostb:7800")
	out := new(ackOut)
	p.out = out
	g := newGate()
	pacer, quota := newFakePacer(t, g), &fakeQuota{g: g}
	p.pace = pacer
	p.quota = 0.5 // the controller says 1 at its first sample: a quota to set
	p.act = newActuator(p.log, pacer, quota.set, time.Hour)
	startActuator(t, p.act)

	link := logging.NewMemLink()
	src := logging.NewMemLog(replay.HeaderSize)
	snd := logging.NewSender(link.A(), src, logging.SenderConfig{StartOffset: replay.HeaderSize,
		HeartbeatInterval: 10 * time.Millisecond, PeerTimeout: 5 * time.Second})
	rcv := logging.NewReceiver(link.B(), logging.NewMemLog(replay.HeaderSize), logging.ReceiverConfig{StartOffset: replay.HeaderSize,
		HeartbeatInterval: 10 * time.Millisecond, PeerTimeout: 5 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, f := range []func(){
		func() { _ = snd.Run(ctx) },
		func() { _ = rcv.Run(ctx) },
		func() { p.ackLoop(ctx, snd) },
	} {
		wg.Add(1)
		go func() { defer wg.Done(); f() }()
	}
	openGate := sync.OnceFunc(func() { close(g.open) })
	defer func() { openGate(); cancel(); wg.Wait() }()

	off, ic := int64(replay.HeaderSize), uint64(0)
	publish := func() {
		if err := src.Append(off, make([]byte, 100)); err != nil {
			t.Fatal(err)
		}
		off += 100
		ic += 1000
		snd.Publish(off, ic)
		rcv.SetReplayed(ic)
	}
	waitAcked := func(what string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for out.acked.Load() < off {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the output rule saw acks up to %d, the log is at %d", what, out.acked.Load(), off)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	publish()
	waitAcked("before any call blocked")
	select {
	case <-g.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("no pacing or quota call was made")
	}
	// Both calls are blocked now, or about to be: the first sample posted both.
	// Acks keep reaching the output rule for a second of samples (10 of them).
	for range 20 {
		publish()
		waitAcked("with the calls blocked")
		time.Sleep(50 * time.Millisecond)
	}
	if n := len(pacer.log()) + len(quota.log()); n != 0 {
		t.Fatalf("%d calls returned through a closed gate", n)
	}
	openGate()
	deadline := time.Now().Add(5 * time.Second)
	for len(quota.log()) == 0 || len(pacer.log()) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("after the calls returned: pace calls %v, quotas %v", pacer.log(), quota.log())
		}
		time.Sleep(5 * time.Millisecond)
	}
	// One quota: the blocked 1 (nothing newer differed); the pacer ran the
	// blocked sample, then the newest, not the ten in between.
	if q := quota.log(); len(q) != 1 || q[0] != 1 {
		t.Fatalf("quotas %v, want [1]", q)
	}
	if n := len(pacer.log()); n > 4 {
		t.Fatalf("%d pace calls right after the blocked one returned: the samples queued behind it", n)
	}
}

// A release (protection ends) drops the decisions of the ended protection that
// come after it. Before, the ack loop and the release each called the pacer
// directly: a sample of the ended protection (its lag over the bound: the backup
// had died) applied after the release engaged pacing at its floor (a released
// pacer has no rate yet), and on an unprotected VM no later sample lifts it; the
// quota likewise stayed throttled.
func TestActuatorDropsDecisionsOfAnEndedProtection(t *testing.T) {
	gp, gq := newGate(), newGate()
	pacer, quota := newFakePacer(t, gp), &fakeQuota{g: gq}
	act := newActuator(slog.New(slog.DiscardHandler), pacer, quota.set, time.Hour)
	startActuator(t, act)
	gen := act.generation()
	act.pacing(gen, throttle.Sample{Lag: 20 * time.Millisecond})
	act.setQuota(gen, 0.5, 0, 0)
	<-gp.entered // a call of this protection is running (blocked) in each
	<-gq.entered
	act.release()
	// The ack loop, not yet ended, decides on its last ack: far over the bound.
	act.pacing(gen, throttle.Sample{Lag: 2 * time.Second})
	act.setQuota(gen, 0.1, 2*time.Second, 0)
	close(gp.open)
	close(gq.open)
	deadline := time.Now().Add(5 * time.Second)
	for pl, ql := pacer.log(), quota.log(); len(pl) < 2 || len(ql) < 2; pl, ql = pacer.log(), quota.log() {
		if time.Now().After(deadline) {
			t.Fatalf("pace calls %v, quotas %v", pl, ql)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond) // a stale call would run now
	if pl := pacer.log(); !slices.Equal(pl, []string{"pace", "release"}) {
		t.Fatalf("pace calls %v, want [pace release]", pl)
	}
	if ql := quota.log(); !slices.Equal(ql, []float64{0.5, 1}) {
		t.Fatalf("quotas %v, want [0.5 1]", ql)
	}
	if st := pacer.PacerStats(); st.Active {
		t.Fatalf("pacing active after the release: %+v", st)
	}
	// The next protection's decisions go through.
	act.pacing(act.generation(), throttle.Sample{})
	for len(pacer.log()) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the next protection's sample did not reach the pacer: %v", pacer.log())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A call that runs past the watchdog is counted while it runs, and in status.
func TestLatestCallWatchdog(t *testing.T) {
	g := newGate()
	quota := &fakeQuota{g: g}
	act := newActuator(slog.New(slog.DiscardHandler), nil, quota.set, 20*time.Millisecond)
	startActuator(t, act)
	act.setQuota(act.generation(), 0.5, 0, 0)
	<-g.entered
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, _, stuck := act.errors()
		if stuck == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a call blocked past the watchdog was not counted")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, running := act.cpu.stats(time.Now()); running < 20*time.Millisecond {
		t.Fatalf("the stuck call has run for %s", running)
	}
	close(g.open)
	for len(quota.log()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the call did not return")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if qe, ps, qs := act.errors(); qe != 0 || ps != 0 || qs != 1 {
		t.Fatalf("errors %d, pace stuck %d, quota stuck %d; want 0, 0, 1", qe, ps, qs)
	}
}

// The catch-up's samples over the bound stay out of the throttle until the lag
// first falls within it, or for catchUpGrace at most.
func TestCatchUpSkipsOnlyTheCatchUp(t *testing.T) {
	bound := 100 * time.Millisecond
	t0 := time.Unix(1_700_000_000, 0)
	var c catchUp
	if !c.skip(4800*time.Millisecond, bound, t0) || !c.skip(2*time.Second, bound, t0.Add(time.Second)) {
		t.Fatal("the catch-up's first samples reached the throttle")
	}
	if c.skip(30*time.Millisecond, bound, t0.Add(1100*time.Millisecond)) {
		t.Fatal("a sample within the bound was skipped")
	}
	if c.skip(time.Second, bound, t0.Add(1200*time.Millisecond)) {
		t.Fatal("a sample over the bound after the catch-up was skipped")
	}
	var slow catchUp // a backup that never catches up
	if !slow.skip(5*time.Second, bound, t0) || !slow.skip(5*time.Second, bound, t0.Add(catchUpGrace-time.Millisecond)) {
		t.Fatal("skipped too little")
	}
	if slow.skip(5*time.Second, bound, t0.Add(catchUpGrace)) {
		t.Fatal("a backup that never caught up was kept from the throttle beyond the grace")
	}
}
