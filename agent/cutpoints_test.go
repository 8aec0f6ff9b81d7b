package agent

import "testing"

func TestCutPoints(t *testing.T) {
	var c cutPoints
	if _, ok := c.icountAt(12); ok || c.last() != 0 {
		t.Fatal("empty ring knows a point")
	}
	for i := int64(0); i < 100; i++ {
		c.add(100+i*10, uint64(i*1000))
	}
	if c.last() != 100+99*10 {
		t.Fatalf("last %d, want the newest point", c.last())
	}
	if p := c.newest(); p != (cutPoint{100 + 99*10, 99000}) {
		t.Fatalf("newest %+v, want the last point added with its icount", p)
	}
	if v, ok := c.icountAt(100 + 99*10); !ok || v != 99000 {
		t.Fatalf("newest point: %d %v", v, ok)
	}
	if v, ok := c.icountAt(100 + 40*10); !ok || v != 40000 {
		t.Fatalf("point within the ring: %d %v", v, ok)
	}
	if _, ok := c.icountAt(100 + 10*10); ok {
		t.Fatal("a point older than the ring is still known")
	}
	if _, ok := c.icountAt(105); ok {
		t.Fatal("an offset that was never a cut point is known")
	}
}

// TestReplayPositions: a replayed count maps to the newest frame end at or below it,
// also for a replay far behind (beyond what cutPoints remembers), and an unknown
// position is said to be unknown, not made up.
func TestReplayPositions(t *testing.T) {
	p := newReplayPositions()
	if _, ok := p.at(0); ok {
		t.Fatal("a position before any frame")
	}
	p.add(12, 0)
	for i := int64(1); i <= 1000; i++ {
		p.add(12+i*100, uint64(i*10))
	}
	p.add(12+1000*100+50, 10000) // no new instructions: not a new position
	for _, s := range []struct {
		icount uint64
		off    int64
	}{
		{0, 12},
		{5, 12},   // inside the first frame's instructions: at least its start
		{10, 112}, // exactly a frame end
		{4999, 49912},
		{99999, 100012}, // past everything held: the newest frame end
	} {
		if off, ok := p.at(s.icount); !ok || off != s.off {
			t.Fatalf("icount %d: position %d %v, want %d", s.icount, off, ok, s.off)
		}
	}
	// The replay never goes back, so what it passed is forgotten...
	if off, ok := p.at(5); ok {
		t.Fatalf("a passed position (%d) is still kept", off)
	}
	// ...and a bounded memory that lost a position says so.
	small := &replayPositions{t: newLagTracker(4)}
	for i := int64(1); i <= 10; i++ {
		small.add(i*100, uint64(i))
	}
	if off, ok := small.at(1); ok {
		t.Fatalf("dropped position reported as %d", off)
	}
	if off, ok := small.at(10); !ok || off != 1000 {
		t.Fatalf("newest position %d %v, want 1000", off, ok)
	}
}
