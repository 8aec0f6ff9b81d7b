package agent

import (
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/logging"
)

func TestLagTracker(t *testing.T) {
	t0 := time.Unix(100, 0)
	l := newLagTracker(1000)
	l.add(mark{t0, 100, 10})
	l.add(mark{t0.Add(10 * time.Millisecond), 200, 20})
	l.add(mark{t0.Add(20 * time.Millisecond), 250, 20}) // no icount progress: ignored
	l.add(mark{t0.Add(30 * time.Millisecond), 300, 30})
	now := t0.Add(50 * time.Millisecond)
	steps := []struct {
		replayed uint64
		lag      time.Duration
		off      int64
	}{
		{0, 50 * time.Millisecond, 0},
		{10, 40 * time.Millisecond, 100},
		{15, 40 * time.Millisecond, 100},
		{20, 20 * time.Millisecond, 200},
		{30, 0, 300},
		{99, 0, 300},
	}
	for _, s := range steps {
		lag, off := l.lag(s.replayed, now)
		if lag != s.lag || off != s.off {
			t.Fatalf("replayed %d: lag %v off %d, want %v %d", s.replayed, lag, off, s.lag, s.off)
		}
	}
}

func TestLagTrackerBounded(t *testing.T) {
	l := newLagTracker(10)
	t0 := time.Unix(0, 0)
	for i := 1; i <= 1000; i++ {
		l.add(mark{t0.Add(time.Duration(i) * time.Millisecond), int64(i), uint64(i)})
	}
	if len(l.marks) > 10 {
		t.Fatalf("%d marks kept", len(l.marks))
	}
	if lag, _ := l.lag(0, t0.Add(2*time.Second)); lag <= 0 {
		t.Fatal("lag must stay positive when far behind")
	}
}

func TestRateMeter(t *testing.T) {
	r := rateMeter{window: 5 * time.Second}
	t0 := time.Unix(0, 0)
	for i := 0; i <= 20; i++ {
		r.add(t0.Add(time.Duration(i)*time.Second), int64(i)*1000)
	}
	if got := r.rate(); got < 999 || got > 1001 {
		t.Fatalf("rate %v, want 1000", got)
	}
}

func TestReplayPollInterval(t *testing.T) {
	now := time.Unix(1000, 0)
	recent := logging.ReceiverStats{BoundaryIcount: 500, LastFrameAt: now.Add(-10 * time.Millisecond)}
	stale := logging.ReceiverStats{BoundaryIcount: 500, LastFrameAt: now.Add(-time.Second)}
	cases := []struct {
		name           string
		replayed, prev uint64
		st             logging.ReceiverStats
		want           time.Duration
	}{
		{"executing: leave the vCPU alone", 200, 100, recent, replayPollEvery},
		{"not moving, fresh log: wake the main loop", 300, 300, recent, replayPollWaking},
		{"not moving, nothing new for a while", 500, 500, stale, replayPollEvery},
		{"nothing received yet", 0, 0, logging.ReceiverStats{}, replayPollEvery},
	}
	for _, c := range cases {
		if got := replayPollInterval(c.replayed, c.prev, c.st, now); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

func TestWorkLagFor(t *testing.T) {
	cases := []struct {
		primary, replayed uint64
		rate              float64
		want              time.Duration
	}{
		{1000, 1000, 1e6, 0},
		{1000, 2000, 1e6, 0}, // a report ahead of the primary's tail
		{700_000, 0, 0, 0},   // no rate yet
		{700_000, 0, 350e6, 2 * time.Millisecond},
		{400e6, 200e6, 400e6, 500 * time.Millisecond},
	}
	for _, c := range cases {
		if got := workLagFor(c.primary, c.replayed, c.rate); got != c.want {
			t.Errorf("workLagFor(%d, %d, %g) = %v, want %v", c.primary, c.replayed, c.rate, got, c.want)
		}
	}
}
