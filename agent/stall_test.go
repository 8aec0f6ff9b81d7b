package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/qemu"
)

// stallStep is one sample: the fake clock moves by dt, then the replay is seen at
// icount with the log it can be fed reaching logIcount. The want fields are the
// detector's answer and state after the sample.
type stallStep struct {
	dt                time.Duration
	icount, logIcount uint64
	pos, fed, held    int64

	want     stallChange
	stalled  bool
	stallFor time.Duration // state().For (checked once any stall began)
	episodes uint64
}

// runStall feeds the steps to a detector with threshold after and checks each one.
func runStall(t *testing.T, after time.Duration, steps []stallStep) *stallDetector {
	t.Helper()
	d := newStallDetector(after)
	now := time.Unix(1_700_000_000, 0)
	for i, s := range steps {
		now = now.Add(s.dt)
		got := d.observe(replaySample{At: now, Icount: s.icount, LogIcount: s.logIcount, Position: s.pos, Fed: s.fed, Held: s.held})
		st := d.state()
		if got != s.want {
			t.Fatalf("step %d (%+v): change %v, want %v (state %+v)", i, s, got, s.want, st)
		}
		if st.Stalled != s.stalled || st.Episodes != s.episodes {
			t.Fatalf("step %d (%+v): state %+v, want stalled %v after %d episodes", i, s, st, s.stalled, s.episodes)
		}
		if s.episodes > 0 && st.For != s.stallFor {
			t.Fatalf("step %d (%+v): stall lasted %v, want %v", i, s, st.For, s.stallFor)
		}
	}
	return d
}

func TestStallDetector(t *testing.T) {
	const after = 3 * time.Second
	ms := time.Millisecond
	for _, tc := range []struct {
		name  string
		steps []stallStep
	}{
		{"idle-guest-no-new-log", []stallStep{
			// The replay has executed everything it holds: it waits, however long.
			{icount: 500, logIcount: 500},
			{dt: after, icount: 500, logIcount: 500},
			{dt: time.Minute, icount: 500, logIcount: 500},
			{dt: time.Hour, icount: 500, logIcount: 500},
		}},
		{"idle-guest-log-keeps-coming", []stallStep{
			// Timer and idle checkpoints bring a few instructions at a time, and the
			// replay executes them: it is behind most of the time but never still.
			{icount: 500, logIcount: 510},
			{dt: 2 * time.Second, icount: 510, logIcount: 520},
			{dt: 2 * time.Second, icount: 520, logIcount: 530},
			{dt: 2 * time.Second, icount: 530, logIcount: 530},
			{dt: 2 * time.Second, icount: 530, logIcount: 540},
			{dt: 2 * time.Second, icount: 540, logIcount: 550},
		}},
		{"stalled-with-log-reported-after-threshold-not-before", []stallStep{
			{icount: 100, logIcount: 200, pos: 1000, fed: 3000, held: 4000},
			{dt: time.Second, icount: 100, logIcount: 300, pos: 1000, fed: 3000, held: 5000},
			{dt: after - time.Second - ms, icount: 100, logIcount: 300, pos: 1000, fed: 3000, held: 5000},
			{dt: ms, icount: 100, logIcount: 300, pos: 1000, fed: 3000, held: 6000,
				want: stallEntered, stalled: true, stallFor: after, episodes: 1},
			// Reported once; the length keeps growing.
			{dt: 9 * time.Second, icount: 100, logIcount: 400, pos: 1000, fed: 3500, held: 9000,
				stalled: true, stallFor: 12 * time.Second, episodes: 1},
			// It moves: cleared, and the episode's length is kept.
			{dt: 5 * ms, icount: 101, logIcount: 400, pos: 1100, fed: 9000, held: 9000,
				want: stallCleared, stallFor: 12*time.Second + 5*ms, episodes: 1},
			{dt: time.Second, icount: 300, logIcount: 400, pos: 7000, fed: 9000, held: 9000,
				stallFor: 12*time.Second + 5*ms, episodes: 1},
		}},
		{"slow-but-moving", []stallStep{
			// Far behind and crawling is lag (the throttle's business), not a stall.
			{icount: 100, logIcount: 1_000_000},
			{dt: 2900 * ms, icount: 101, logIcount: 2_000_000},
			{dt: 2900 * ms, icount: 102, logIcount: 3_000_000},
			{dt: 2900 * ms, icount: 103, logIcount: 4_000_000},
		}},
		{"waiting-then-log-arrives", []stallStep{
			// Still for a minute while there was nothing to replay: the clock starts
			// only when log beyond the count arrives.
			{icount: 100, logIcount: 100},
			{dt: time.Minute, icount: 100, logIcount: 100},
			{dt: time.Second, icount: 100, logIcount: 150},
			{dt: after - ms, icount: 100, logIcount: 150},
			{dt: ms, icount: 100, logIcount: 150, want: stallEntered, stalled: true, stallFor: after, episodes: 1},
		}},
		{"moves-then-stops", []stallStep{
			// The clock starts at the last move, not at the first sample.
			{icount: 100, logIcount: 500},
			{dt: 2 * time.Second, icount: 200, logIcount: 500},
			{dt: 2 * time.Second, icount: 200, logIcount: 500},
			{dt: after - 2*time.Second, icount: 200, logIcount: 500, want: stallEntered, stalled: true, stallFor: after, episodes: 1},
		}},
		{"episodes-counted", []stallStep{
			{icount: 1, logIcount: 9},
			{dt: after, icount: 1, logIcount: 9, want: stallEntered, stalled: true, stallFor: after, episodes: 1},
			{dt: time.Second, icount: 2, logIcount: 9, want: stallCleared, stallFor: after + time.Second, episodes: 1},
			{dt: time.Second, icount: 2, logIcount: 9, stallFor: after + time.Second, episodes: 1},
			{dt: 2 * time.Second, icount: 2, logIcount: 9, want: stallEntered, stalled: true, stallFor: after, episodes: 2},
			// Caught up with everything it holds: not stalled any more, waiting.
			{dt: time.Second, icount: 9, logIcount: 9, want: stallCleared, stallFor: 4 * time.Second, episodes: 2},
			{dt: time.Hour, icount: 9, logIcount: 9, stallFor: 4 * time.Second, episodes: 2},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) { runStall(t, after, tc.steps) })
	}
}

// TestStallState: the state a stall is reported with.
func TestStallState(t *testing.T) {
	d := runStall(t, time.Second, []stallStep{
		{icount: 7, logIcount: 8, pos: 100, fed: 300, held: 400},
		{dt: time.Second, icount: 7, logIcount: 8, pos: 100, fed: 350, held: 500, want: stallEntered, stalled: true, stallFor: time.Second, episodes: 1},
		{dt: time.Second, icount: 7, logIcount: 9, pos: 100, fed: 380, held: 900, stalled: true, stallFor: 2 * time.Second, episodes: 1},
	})
	want := stallState{Stalled: true, For: 2 * time.Second, AtIcount: 7, Position: 100, Fed: 380, Held: 900, Episodes: 1,
		Waiting: stallWaiting(qemu.FeedState{})}
	if st := d.state(); st != want {
		t.Fatalf("state %+v, want %+v", st, want)
	}
	if b := d.state().Beyond(); b != 800 {
		t.Fatalf("held beyond the replay: %d, want 800", b)
	}
	if b := (stallState{Position: 10, Held: 5}).Beyond(); b != 0 {
		t.Fatalf("a position past the held log gave %d bytes beyond, want 0", b)
	}
}

// TestStallDefaultThreshold: no threshold means the default, never "at once".
func TestStallDefaultThreshold(t *testing.T) {
	for _, after := range []time.Duration{0, -time.Second} {
		runStall(t, after, []stallStep{
			{icount: 1, logIcount: 2},
			{dt: DefaultStallAfter - time.Millisecond, icount: 1, logIcount: 2},
			{dt: time.Millisecond, icount: 1, logIcount: 2, want: stallEntered, stalled: true, stallFor: DefaultStallAfter, episodes: 1},
		})
	}
}

// TestStallAfterConfig: agents detect stalls by default, and a negative threshold is
// refused rather than taken for "report at once".
func TestStallAfterConfig(t *testing.T) {
	c := DefaultConfig("h", t.TempDir())
	if c.StallAfter != DefaultStallAfter {
		t.Fatalf("default stall threshold %v, want %v", c.StallAfter, DefaultStallAfter)
	}
	c.StallAfter = -time.Second
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "stall threshold") {
		t.Fatalf("negative stall threshold: %v", err)
	}
}

// TestStallWaiting: the stall report names the side of the FIFO that stands still.
func TestStallWaiting(t *testing.T) {
	for _, tc := range []struct {
		name string
		f    qemu.FeedState
		want string
	}{
		{"write waits for room", qemu.FeedState{Fed: 100, UpTo: 900, Unread: 1 << 20, Pipe: 1 << 20, Blocked: 4096, BlockedFor: 2 * time.Second}, "qemu: a feed write of 4096 bytes has waited 2s"},
		{"bytes unread", qemu.FeedState{Fed: 100, UpTo: 100, Unread: 512, Pipe: 1 << 20}, "qemu: 512 bytes wait unread"},
		{"feed stuck", qemu.FeedState{Fed: 100, UpTo: 900, Unread: 0, Pipe: 1 << 20}, "feed: the FIFO is empty and 800 bytes"},
		{"no cut point", qemu.FeedState{Fed: 900, UpTo: 900, Unread: 0, Pipe: 1 << 20}, "cut: "},
		{"no fifo", qemu.FeedState{Fed: 12, UpTo: 900, Unread: -1}, "unknown"},
	} {
		if got := stallWaiting(tc.f); !strings.HasPrefix(got, tc.want) {
			t.Errorf("%s: stallWaiting = %q, want prefix %q", tc.name, got, tc.want)
		}
	}
	d := newStallDetector(time.Second)
	t0 := time.Unix(1000, 0)
	fs := qemu.FeedState{Fed: 100, UpTo: 900, Unread: 0, Pipe: 1 << 20}
	d.observe(replaySample{At: t0, Icount: 5, LogIcount: 10, Feed: fs})
	if c := d.observe(replaySample{At: t0.Add(2 * time.Second), Icount: 5, LogIcount: 10, Feed: fs}); c != stallEntered {
		t.Fatalf("observe = %v, want stallEntered", c)
	}
	if w := d.state().Waiting; !strings.HasPrefix(w, "feed:") {
		t.Errorf("stall Waiting = %q, want the feed named", w)
	}
}
