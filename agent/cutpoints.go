package agent

import "sync"

// cutPoints remembers the most recent safe cut points of the backup's log and the
// instruction count at each. The newest is the feed's limit (and go-live's cut); the
// others turn "the replay has consumed everything up to offset X" (seen from outside
// QEMU, see qemu.FeedWatch) into a replayed instruction count. The feed only ever
// stops at a safe cut point, at most a few behind the newest, so a small ring
// suffices.
type cutPoints struct {
	mu   sync.Mutex
	ring [64]cutPoint
	n    int // points recorded so far (the ring holds the last len(ring))
}

type cutPoint struct {
	off    int64
	icount uint64
}

func (c *cutPoints) add(off int64, icount uint64) {
	c.mu.Lock()
	c.ring[c.n%len(c.ring)] = cutPoint{off, icount}
	c.n++
	c.mu.Unlock()
}

// last returns the newest safe cut point (0 before any was added).
func (c *cutPoints) last() int64 { return c.newest().off }

// newest returns the newest safe cut point and its instruction count (zero before
// any was added).
func (c *cutPoints) newest() cutPoint {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == 0 {
		return cutPoint{}
	}
	return c.ring[(c.n-1)%len(c.ring)]
}

// icountAt returns the instruction count at safe cut point off, if it is still known.
func (c *cutPoints) icountAt(off int64) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := 0; i < len(c.ring) && i < c.n; i++ {
		p := c.ring[(c.n-1-i)%len(c.ring)]
		if p.off == off {
			return p.icount, true
		}
		if p.off < off {
			break // older points only go further back
		}
	}
	return 0, false
}

// replayPositions maps the backup's replayed instruction count to how far into the
// log its replay has got, for the stall report. cutPoints keeps too few points for a
// replay that has fallen behind, so this keeps one per received frame (the newest safe
// cut point then), bounded like the primary's lag marks.
type replayPositions struct {
	mu sync.Mutex
	t  *lagTracker
}

func newReplayPositions() *replayPositions {
	return &replayPositions{t: newLagTracker(1 << 16)}
}

func (p *replayPositions) add(off int64, icount uint64) {
	p.mu.Lock()
	p.t.add(mark{off: off, icount: icount})
	p.mu.Unlock()
}

// at returns the log offset a replay at icount has reached at least, if still known.
func (p *replayPositions) at(icount uint64) (int64, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.t.position(icount)
}
