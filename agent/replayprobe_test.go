package agent

import (
	"os"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/qemu"
)

func TestPollWait(t *testing.T) {
	cases := []struct {
		name string
		v    pollView
		want time.Duration
	}{
		{"caught up: a frame wakes the loop", pollView{caughtUp: true, drained: true, sinceFrame: time.Millisecond}, pollIdleEvery},
		{"frames flowing, drained: they check", pollView{drained: true, sinceFrame: time.Millisecond, untilQuery: -time.Second}, feedCheckFlowing},
		{"frames stopped: the loop sees the final drain", pollView{drained: true, sinceFrame: time.Second}, feedCheckEvery},
		{"no frame yet", pollView{sinceFrame: -1, queryOut: true}, feedCheckEvery},
		{"not drained: a due query comes first", pollView{sinceFrame: time.Millisecond, untilQuery: 10 * time.Millisecond}, 10 * time.Millisecond},
		{"not drained, waking query: no sooner than the old tick", pollView{sinceFrame: time.Millisecond, untilQuery: time.Millisecond}, feedCheckEvery},
		{"not drained, query overdue", pollView{sinceFrame: time.Millisecond, untilQuery: -time.Millisecond}, feedCheckEvery},
		{"not drained, query out: its answer wakes the loop", pollView{sinceFrame: time.Millisecond, queryOut: true}, feedCheckFlowing},
	}
	for _, c := range cases {
		if got := pollWait(c.v); got != c.want {
			t.Errorf("%s: got %v, want %v", c.name, got, c.want)
		}
	}
}

// TestFeedProbeIdleWake: the poll loop sleeps long only while the replay is caught
// up, and a frame given to the feed after it went to sleep wakes it.
func TestFeedProbeIdleWake(t *testing.T) {
	b := &backup{cutPoints: new(cutPoints)}
	b.cutPoints.add(100, 1000)
	p := newFeedProbe(b, nil, nil)
	if p.sleepIdle() {
		t.Fatal("idle before any check found the replay drained")
	}
	if p.idle.Load() {
		t.Fatal("idle left set after a refused sleep")
	}
	p.afterFeed()
	select {
	case <-p.wake:
		t.Fatal("woken while not idle")
	default:
	}
	p.drained, p.drainedAt = true, 100
	if !p.sleepIdle() {
		t.Fatal("no long sleep with the replay drained at the newest cut point")
	}
	b.cutPoints.add(200, 2000) // the sink: a new frame's cut point, then the feed
	if p.caughtUp() {
		t.Fatal("caught up with log beyond what was drained")
	}
	p.afterFeed()
	select {
	case <-p.wake:
	default:
		t.Fatal("a frame fed during the long sleep did not wake the loop")
	}
	p.drained, p.drainedAt = true, 150
	if p.sleepIdle() {
		t.Fatal("long sleep with the replay drained short of the newest cut point")
	}
}

// TestFeedProbeClosed: a sink that loaded the probe just before the poll loop ended
// checks nothing (the watch is closed and stays closed; this backup has no feed).
func TestFeedProbeClosed(t *testing.T) {
	b := &backup{cutPoints: new(cutPoints)}
	p := newFeedProbe(b, nil, qemu.NewFeedWatch(os.Getpid(), "/nonexistent"))
	p.close()
	if p.check() {
		t.Fatal("a closed probe found the replay drained")
	}
	p.beforeFeed()
}
