package throttle

import (
	"bytes"
	"errors"
	"sort"
	"testing"
	"time"
)

const testBound = 100 * time.Millisecond

func newTestPacer(t *testing.T, cfg PacerConfig) *Pacer {
	t.Helper()
	if cfg.Bound == 0 {
		cfg.Bound = testBound
	}
	p, err := NewPacer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// frameOf is a frame of size bytes whose first byte is id, to check order.
func frameOf(id byte, size int) []byte {
	b := make([]byte, size)
	b[0] = id
	return b
}

// offerAll offers n frames of size bytes at now and counts the verdicts.
func offerAll(p *Pacer, n, size int, now time.Time) map[Verdict]int {
	v := map[Verdict]int{}
	for i := 0; i < n; i++ {
		v[p.Offer(frameOf(byte(i), size), now)]++
	}
	return v
}

// drain takes every frame Next lets go from start until end, stepping the fake clock
// to each wait Next names, and returns the bytes released.
func drain(t *testing.T, p *Pacer, start, end time.Time) int {
	t.Helper()
	now, got := start, 0
	for now.Before(end) {
		f, wait := p.Next(now)
		switch {
		case f != nil:
			got += len(f)
		case wait == 0:
			return got // nothing held
		default:
			now = now.Add(wait)
		}
	}
	return got
}

func TestPacerConfig(t *testing.T) {
	for _, cfg := range []PacerConfig{
		{},
		{Bound: -time.Second},
		{Bound: time.Second, QueueBytes: -1},
		{Bound: time.Second, MinRate: -1},
	} {
		if _, err := NewPacer(cfg); !errors.Is(err, ErrPacerConfig) {
			t.Errorf("NewPacer(%+v) = %v, want ErrPacerConfig", cfg, err)
		}
	}
	p := newTestPacer(t, PacerConfig{})
	if p.cfg.QueueBytes != DefaultPaceQueue || p.cfg.MinRate != DefaultMinPaceRate {
		t.Fatalf("defaults not filled in: %+v", p.cfg)
	}
}

// Within the bound every frame passes at once, however many arrive at one instant.
func TestPacerWithinBoundPassesAll(t *testing.T) {
	p := newTestPacer(t, PacerConfig{})
	now := time.Unix(0, 0)
	for i := 0; i < 10; i++ {
		now = now.Add(100 * time.Millisecond)
		p.Observe(Sample{Lag: testBound}, now) // at the bound is within it
		if v := offerAll(p, 1000, 1514, now); v[Send] != 1000 {
			t.Fatalf("step %d: verdicts %v, want all sent", i, v)
		}
	}
	if f, wait := p.Next(now); f != nil || wait != 0 {
		t.Fatalf("Next with nothing held = %v, %v", f, wait)
	}
	st := p.Stats()
	if st.Active || st.Rate != 0 || st.Paced != 0 || st.PacedFor != 0 || st.Engaged != 0 {
		t.Fatalf("stats %+v, want untouched", st)
	}
}

// Passing the bound limits the rate to half of what flowed; Next then lets the held
// frames go at that rate, in order.
func TestPacerOverBoundLimitsRate(t *testing.T) {
	p := newTestPacer(t, PacerConfig{})
	now := time.Unix(0, 0)
	p.Observe(Sample{}, now)
	// 1.2 MB in 100 ms flowed: 12 MB/s (a 100 Mbit/s stream).
	offerAll(p, 800, 1500, now.Add(50*time.Millisecond))
	now = now.Add(100 * time.Millisecond)
	p.Observe(Sample{Lag: 150 * time.Millisecond}, now)
	st := p.Stats()
	if !st.Active || st.Engaged != 1 || st.EngagedLag != 150*time.Millisecond {
		t.Fatalf("stats %+v, want engaged at 150ms", st)
	}
	if want := 6e6; st.Rate < want*0.99 || st.Rate > want*1.01 {
		t.Fatalf("rate %.0f B/s, want half of 12 MB/s", st.Rate)
	}
	// A burst of 2 MB at one instant: one frame goes, the rest wait.
	v := offerAll(p, 1333, 1500, now)
	if v[Send] != 1 || v[Held] != 1332 || v[Dropped] != 0 {
		t.Fatalf("verdicts %v, want 1 sent and the rest held", v)
	}
	if f, wait := p.Next(now); f != nil || wait <= 0 {
		t.Fatalf("Next right after the burst = %d bytes, wait %v; want a wait", len(f), wait)
	}
	// Over one second of fake time about 6 MB may go: everything held (2 MB) goes,
	// and in order; over 100 ms about 600 kB.
	got := drain(t, p, now, now.Add(100*time.Millisecond))
	if got < 590e3 || got > 620e3 {
		t.Fatalf("released %d bytes in 100 ms at 6 MB/s", got)
	}
	var last byte
	for i := 0; ; i++ {
		now = now.Add(time.Millisecond)
		f, _ := p.Next(now.Add(time.Second))
		if f == nil {
			break
		}
		if i > 0 && f[0] != last+1 {
			t.Fatalf("frame %d out of order after %d", f[0], last)
		}
		last = f[0]
	}
	if p.Len() != 0 || p.Stats().QueueBytes != 0 {
		t.Fatalf("queue not empty: %+v", p.Stats())
	}
	// A frame behind nothing and within the rate goes at once.
	if v := p.Offer(frameOf(0, 1500), now.Add(2*time.Second)); v != Send {
		t.Fatalf("lone frame with tokens: %v", v)
	}
}

// While the lag grows above the bound the rate halves at each sample, down to the
// floor; while it falls back towards the bound it holds.
func TestPacerDecreasesWhileLagGrows(t *testing.T) {
	p := newTestPacer(t, PacerConfig{MinRate: 100e3})
	now := time.Unix(0, 0)
	p.Observe(Sample{}, now)
	offerAll(p, 1000, 1000, now) // 1 MB in 100 ms: 10 MB/s
	step := func(lag time.Duration) float64 {
		now = now.Add(100 * time.Millisecond)
		p.Observe(Sample{Lag: lag}, now)
		return p.Rate()
	}
	rates := []float64{step(110 * time.Millisecond)}
	for _, lag := range []time.Duration{130, 160, 200} {
		rates = append(rates, step(lag*time.Millisecond))
	}
	for i, want := range []float64{5e6, 2.5e6, 1.25e6, 625e3} {
		if r := rates[i]; r < want*0.99 || r > want*1.01 {
			t.Fatalf("rates %v, want halving from 5 MB/s", rates)
		}
	}
	// Falling, still above the bound: hold.
	if r := step(180 * time.Millisecond); r != rates[3] {
		t.Fatalf("rate %v while the lag falls, want held at %v", r, rates[3])
	}
	// Growing again for long: the floor, never zero.
	for i := 0; i < 20; i++ {
		step(time.Duration(200+i) * time.Millisecond)
	}
	if r := p.Rate(); r != 100e3 {
		t.Fatalf("rate %v after a long growth, want the floor", r)
	}
}

// A full queue drops what does not fit and counts it; nothing held is lost, and the
// held frames come out in order.
func TestPacerQueueFullDrops(t *testing.T) {
	p := newTestPacer(t, PacerConfig{QueueBytes: 10_000, MinRate: 10e3})
	now := time.Unix(0, 0)
	p.Observe(Sample{}, now)
	now = now.Add(100 * time.Millisecond)
	p.Observe(Sample{Lag: time.Second}, now) // nothing flowed: the floor
	if p.Rate() != 10e3 {
		t.Fatalf("rate %v, want the floor", p.Rate())
	}
	var verdicts []Verdict
	for i := 0; i < 15; i++ {
		verdicts = append(verdicts, p.Offer(frameOf(byte(i), 1000), now))
	}
	// The first goes on the fresh bucket, ten fill the queue, four are dropped.
	want := []Verdict{Send, Held, Held, Held, Held, Held, Held, Held, Held, Held, Held, Dropped, Dropped, Dropped, Dropped}
	for i := range want {
		if verdicts[i] != want[i] {
			t.Fatalf("verdicts %v, want %v", verdicts, want)
		}
	}
	st := p.Stats()
	if st.Drops != 4 || st.QueueFrames != 10 || st.QueueBytes != 10_000 || st.Paced != 10 {
		t.Fatalf("stats %+v", st)
	}
	// Room made by Next takes a frame again.
	later := now.Add(time.Second)
	f, _ := p.Next(later)
	if f == nil || f[0] != 1 {
		t.Fatalf("first held frame: %v", f)
	}
	if v := p.Offer(frameOf(99, 1000), later); v != Held {
		t.Fatalf("frame after room was made: %v", v)
	}
	var ids []byte
	for now := later; p.Len() > 0; {
		f, wait := p.Next(now)
		if f != nil {
			ids = append(ids, f[0])
		}
		now = now.Add(wait)
	}
	if !bytes.Equal(ids, []byte{2, 3, 4, 5, 6, 7, 8, 9, 10, 99}) {
		t.Fatalf("held frames came out as %v", ids)
	}
}

// Back under the set point (half the bound) the rate grows additively while it holds
// frames back; below a quarter of the bound pacing ends once nothing waited for a
// second.
func TestPacerRecovers(t *testing.T) {
	p := newTestPacer(t, PacerConfig{MinRate: 100e3})
	now := time.Unix(0, 0)
	p.Observe(Sample{}, now)
	offerAll(p, 800, 1000, now) // 8 MB/s
	now = now.Add(100 * time.Millisecond)
	p.Observe(Sample{Lag: 120 * time.Millisecond}, now) // engaged at 4 MB/s
	now = now.Add(100 * time.Millisecond)
	p.Observe(Sample{Lag: 140 * time.Millisecond}, now) // 2 MB/s
	if r := p.Rate(); r != 2e6 {
		t.Fatalf("rate %v, want 2 MB/s", r)
	}
	hold := func() { // a burst over the bucket: something waits
		if v := offerAll(p, 100, 1000, now); v[Held] == 0 {
			t.Fatalf("a burst of 100 kB at %.0f B/s: %v, want some held", p.Rate(), v)
		}
	}
	step := func(lag time.Duration) float64 {
		hold()
		now = now.Add(100 * time.Millisecond)
		p.Observe(Sample{Lag: lag}, now)
		drain(t, p, now, now.Add(time.Hour))
		return p.Rate()
	}
	// Within the bound but above the set point (half of it) and falling: hold.
	if r := step(80 * time.Millisecond); r != 2e6 {
		t.Fatalf("rate %v falling above the set point, want held at 2 MB/s", r)
	}
	// Below the set point, additive: +1/8 of the engaging rate (4 MB/s) per sample.
	if r := step(45 * time.Millisecond); r != 2.5e6 {
		t.Fatalf("rate %v below the set point, want 2.5 MB/s", r)
	}
	if r := step(30 * time.Millisecond); r != 3e6 {
		t.Fatalf("rate %v, want 3 MB/s", r)
	}
	// Below a quarter of the bound, still additive while frames wait.
	if r := step(20 * time.Millisecond); r != 3.5e6 {
		t.Fatalf("rate %v below a quarter of the bound, want 3.5 MB/s", r)
	}
	if !p.Active() {
		t.Fatal("released while frames still waited")
	}
	// Sample periods in which nothing had to wait: the rate is not raised (the
	// limit does not limit), and pacing ends after a second of them, not before.
	quiet := func(lag time.Duration) {
		now = now.Add(100 * time.Millisecond)
		p.Observe(Sample{Lag: lag}, now)
	}
	for i := 0; i < 9; i++ {
		quiet(10 * time.Millisecond)
		if st := p.Stats(); !st.Active || st.Rate != 3.5e6 {
			t.Fatalf("after %d quiet samples: %+v, want still paced at 3.5 MB/s", i+1, st)
		}
	}
	// A frame held back restarts the second; so does a lag above a quarter of the
	// bound hold pacing.
	hold()
	quiet(10 * time.Millisecond)
	drain(t, p, now, now.Add(time.Hour))
	for i := 0; i < 10; i++ {
		quiet(30 * time.Millisecond)
	}
	if !p.Active() {
		t.Fatal("released with the lag above a quarter of the bound")
	}
	quiet(10 * time.Millisecond)
	st := p.Stats()
	if st.Active || st.Rate != 0 {
		t.Fatalf("stats %+v, want unlimited after a quiet second well within the bound", st)
	}
	if want := 2600 * time.Millisecond; st.PacedFor != want {
		t.Fatalf("paced for %v, want the %v from engaging to release", st.PacedFor, want)
	}
	if v := offerAll(p, 1000, 1500, now); v[Send] != 1000 {
		t.Fatalf("after release: %v", v)
	}
}

// Release ends pacing at once and lets every held frame go.
func TestPacerRelease(t *testing.T) {
	p := newTestPacer(t, PacerConfig{MinRate: 1000})
	now := time.Unix(0, 0)
	p.Observe(Sample{}, now)
	now = now.Add(100 * time.Millisecond)
	p.Observe(Sample{Lag: time.Second}, now)
	if v := offerAll(p, 5, 1000, now); v[Held] != 4 {
		t.Fatalf("verdicts %v", v)
	}
	p.Release()
	// New frames queue behind the held ones, which all go now.
	if v := p.Offer(frameOf(9, 10), now); v != Held {
		t.Fatalf("frame behind held ones: %v", v)
	}
	if got := drain(t, p, now, now.Add(time.Nanosecond)); got != 4010 {
		t.Fatalf("released %d bytes at once, want 4010", got)
	}
	if v := p.Offer(frameOf(10, 10), now); v != Send {
		t.Fatalf("after the queue emptied: %v", v)
	}
}

// A simulated window-limited TCP sender (1 MiB in flight, 100 Mbit/s link) streams
// into a guest whose backup replays 8 MB/s of log: unpaced, the lag grows without
// end; paced, its p99 stays within the bound, with no frame dropped and most of the
// backup's capacity used.
func TestPacerBoundsLagOfWindowLimitedSender(t *testing.T) {
	for _, paced := range []bool{false, true} {
		p := newTestPacer(t, PacerConfig{})
		const (
			step     = time.Millisecond
			frame    = 1500
			window   = 1 << 20
			linkRate = 12.5e6 // bytes/s
			replay   = 8e6    // bytes/s of log the backup replays
		)
		now := time.Unix(0, 0)
		var inflight, logged, replayed, linkCredit float64
		var lags []time.Duration
		deliver := func(f []byte) { inflight -= float64(len(f)); logged += float64(len(f)) }
		for i := 0; i < 60_000; i++ { // 60 s
			now = now.Add(step)
			linkCredit = min(linkCredit+linkRate*step.Seconds(), 2*linkRate*step.Seconds())
			for linkCredit >= frame && inflight+frame <= window {
				linkCredit -= frame
				inflight += frame
				f := make([]byte, frame)
				switch p.Offer(f, now) {
				case Send:
					deliver(f)
				case Dropped:
					t.Fatalf("paced=%v: frame dropped at %v with %d held", paced, now, p.Len())
				}
			}
			for f, _ := p.Next(now); f != nil; f, _ = p.Next(now) {
				deliver(f)
			}
			replayed = min(replayed+replay*step.Seconds(), logged)
			lag := time.Duration((logged - replayed) / replay * float64(time.Second))
			if paced && i%100 == 0 {
				p.Observe(Sample{Lag: lag}, now)
			}
			if i >= 10_000 {
				lags = append(lags, lag)
			}
		}
		sort.Slice(lags, func(i, j int) bool { return lags[i] < lags[j] })
		p99, maxLag := lags[len(lags)*99/100], lags[len(lags)-1]
		rate := logged / 60
		t.Logf("paced=%v: lag p50 %v p99 %v max %v, delivered %.2f MB/s, paced %v, drops %d",
			paced, lags[len(lags)/2], p99, maxLag, rate/1e6, p.Stats().PacedFor, p.Stats().Drops)
		switch {
		case !paced && maxLag < 10*time.Second:
			t.Fatalf("simulation broken: unpaced lag only reached %v", maxLag)
		case paced && p99 > testBound:
			t.Fatalf("paced lag p99 %v, bound %v", p99, testBound)
		case paced && rate < 0.7*replay:
			t.Fatalf("paced stream delivered %.2f MB/s, under 70%% of the backup's %.0f MB/s", rate/1e6, replay/1e6)
		}
	}
}

// A kernel data path offers no frames: it accounts for what its qdisc let through
// before each sample, and the pacer decides as it does for frames it saw. Step by
// step: engaging at half the accounted rate, halving while the lag grows, raising
// only while the limit held something back, release after a quiet second, and the
// path's drops in the stats.
func TestPacerAccountedTraffic(t *testing.T) {
	p := newTestPacer(t, PacerConfig{MinRate: 100e3})
	now := time.Unix(0, 0)
	p.Observe(Sample{}, now)
	type step struct {
		traffic    Traffic
		lag        time.Duration
		wantActive bool
		wantRate   float64
		wantDrops  uint64
	}
	ms := time.Millisecond
	steps := []step{
		// Within the bound: 1 MB in 100 ms flows unpaced.
		{Traffic{Bytes: 1e6}, 50 * ms, false, 0, 0},
		// Over it: half of the 8 MB/s that flowed in the last 100 ms.
		{Traffic{Bytes: 800e3}, 150 * ms, true, 4e6, 0},
		// Still growing: halved; the qdisc dropped 3 frames.
		{Traffic{Bytes: 400e3, Limited: true, Drops: 3}, 160 * ms, true, 2e6, 3},
		// Falling above the set point: held.
		{Traffic{Bytes: 200e3, Limited: true}, 90 * ms, true, 2e6, 3},
		// Below the set point and limited: +1/8 of the engaging 4 MB/s.
		{Traffic{Bytes: 200e3, Limited: true}, 40 * ms, true, 2.5e6, 3},
		// Below it, nothing held back: a limit nothing meets is not raised.
		{Traffic{Bytes: 100e3}, 40 * ms, true, 2.5e6, 3},
		// Limited again, below a quarter of the bound: raised, not released.
		{Traffic{Bytes: 250e3, Limited: true, Drops: 1}, 10 * ms, true, 3e6, 4},
	}
	// Nine quiet samples well within the bound keep it paced; the tenth (a quiet
	// second) releases it.
	for i := 0; i < 9; i++ {
		steps = append(steps, step{Traffic{Bytes: 10e3}, 10 * ms, true, 3e6, 4})
	}
	steps = append(steps, step{Traffic{Bytes: 10e3}, 10 * ms, false, 0, 4})
	// Negative bytes (a counter that went back) count as none: unpaced again, a
	// lag over the bound engages at the floor.
	steps = append(steps, step{Traffic{Bytes: -5e6}, 200 * ms, true, 100e3, 4})
	for i, s := range steps {
		now = now.Add(100 * time.Millisecond)
		p.Account(s.traffic)
		p.Observe(Sample{Lag: s.lag}, now)
		st := p.Stats()
		if st.Active != s.wantActive || st.Rate != s.wantRate || st.Drops != s.wantDrops {
			t.Fatalf("step %d (%+v, lag %v): active %v rate %.0f drops %d; want %v %.0f %d",
				i, s.traffic, s.lag, st.Active, st.Rate, st.Drops, s.wantActive, s.wantRate, s.wantDrops)
		}
		if st.QueueFrames != 0 || st.Paced != 0 {
			t.Fatalf("step %d: the pacer holds frames it was never offered: %+v", i, st)
		}
	}
	if st := p.Stats(); st.Engaged != 2 || st.EngagedLag != 200*ms {
		t.Fatalf("engaged %d times, last at %v; want 2, at 200ms", st.Engaged, st.EngagedLag)
	}
}

// A pacer released when the backup is lost, which then passes the traffic of an
// unprotected while, behaves at the next protection as a new pacer does: its first
// sample only starts a period (the unprotected time in between is not read as one
// sample period), and the second engages on the traffic of that period (here: a
// protection of a running VM already over the bound, as a backup catching up from
// a snapshot may be).
func TestPacerReleasedStartsAfresh(t *testing.T) {
	protect := func(p *Pacer, start time.Time) (first, second PacerStats) {
		// 1.2 MB in the 100 ms before the first sample, the lag over the bound.
		offerAll(p, 800, 1500, start.Add(-50*time.Millisecond))
		p.Observe(Sample{Lag: 150 * time.Millisecond}, start)
		first = p.Stats()
		// 0.6 MB in the next 100 ms: 6 MB/s.
		offerAll(p, 400, 1500, start.Add(50*time.Millisecond))
		p.Observe(Sample{Lag: 160 * time.Millisecond}, start.Add(100*time.Millisecond))
		return first, p.Stats()
	}
	fresh := newTestPacer(t, PacerConfig{MinRate: 1000})
	first, want := protect(fresh, time.Unix(100, 0))
	if first.Active || !want.Active || want.Rate != 3e6 {
		t.Fatalf("a new pacer: after its first sample %+v, after its second %+v; want unpaced, then paced at 3 MB/s", first, want)
	}

	p := newTestPacer(t, PacerConfig{MinRate: 1000})
	p.Observe(Sample{}, time.Unix(0, 0))
	protect(p, time.Unix(0, int64(100*time.Millisecond)))
	p.Release()
	drain(t, p, time.Unix(1, 0), time.Unix(2, 0))
	// A minute unprotected: 60 MB pass unpaced (1 MB/s on average).
	for i := 0; i < 60; i++ {
		if v := offerAll(p, 1000, 1000, time.Unix(int64(2+i), 0)); v[Send] != 1000 {
			t.Fatalf("unprotected, second %d: verdicts %v, want all sent", i, v)
		}
	}
	first, got := protect(p, time.Unix(100, 0))
	if first.Active || !got.Active || got.Rate != want.Rate {
		t.Fatalf("re-protected: after the first sample %+v, after the second %+v; a new pacer engages at %.0f B/s", first, got, want.Rate)
	}
}

// The first sample of a pacer (new, or released) has no period: however far over
// the bound, it does not engage; before, it engaged at the floor, with no
// traffic measured, and the agent's first sample of each protection (the backup's
// catch-up, 4.8 s in the lab) paced the guest at 256 KiB/s for a second.
func TestPacerFirstSampleDoesNotEngage(t *testing.T) {
	p := newTestPacer(t, PacerConfig{MinRate: 256 << 10})
	now := time.Unix(0, 0)
	for round := range 2 {
		p.Account(Traffic{Bytes: 50e6}) // whatever passed before: no period to divide it by
		p.Observe(Sample{Lag: 4800 * time.Millisecond}, now)
		if st := p.Stats(); st.Active || st.Engaged != uint64(round) {
			t.Fatalf("round %d: engaged on the first sample: %+v", round, st)
		}
		now = now.Add(100 * time.Millisecond)
		p.Account(Traffic{Bytes: 1e6}) // 10 MB/s over a real period
		p.Observe(Sample{Lag: 4700 * time.Millisecond}, now)
		if st := p.Stats(); !st.Active || st.Rate != 5e6 {
			t.Fatalf("round %d: second sample: %+v, want paced at 5 MB/s", round, st)
		}
		p.Release()
		now = now.Add(time.Minute)
	}
}

// With OnlyOverFloor (the agent's setting) a lag over the bound engages pacing
// only when more than the floor flowed in the period: a SIGSTOPped QEMU reads no
// frames while its backup's lag grows, and pacing engaged then sat at the floor
// for the traffic after it resumed (seen in the lab on the tap path, session 12).
func TestPacerOnlyOverFloor(t *testing.T) {
	for _, only := range []bool{false, true} {
		p := newTestPacer(t, PacerConfig{MinRate: 256 << 10, OnlyOverFloor: only})
		now := time.Unix(0, 0)
		p.Observe(Sample{}, now)
		// QEMU stopped: nothing went to it in four samples, the lag grows.
		for i := range 4 {
			now = now.Add(100 * time.Millisecond)
			p.Account(Traffic{Bytes: 0})
			p.Observe(Sample{Lag: time.Duration(i+1) * 110 * time.Millisecond}, now)
		}
		if st := p.Stats(); st.Active != !only || (!only && st.Rate != 256<<10) {
			t.Fatalf("OnlyOverFloor %v, nothing flowed: %+v", only, st)
		}
		if !only {
			continue
		}
		// Exactly the floor flowed: still not.
		now = now.Add(100 * time.Millisecond)
		p.Account(Traffic{Bytes: (256 << 10) / 10})
		p.Observe(Sample{Lag: 500 * time.Millisecond}, now)
		if p.Active() {
			t.Fatalf("engaged with the floor flowing: %+v", p.Stats())
		}
		// Resumed: 4 MB/s flows with the lag still over the bound: half of it.
		now = now.Add(100 * time.Millisecond)
		p.Account(Traffic{Bytes: 400e3})
		p.Observe(Sample{Lag: 400 * time.Millisecond}, now)
		if st := p.Stats(); !st.Active || st.Rate != 2e6 {
			t.Fatalf("resumed: %+v, want paced at 2 MB/s", st)
		}
	}
}
