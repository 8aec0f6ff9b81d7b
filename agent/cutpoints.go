package agent

import "sync"

// cutPoints remembers the instruction count at the most recent safe cut points of the
// backup's log, so that "the replay has consumed everything up to offset X" (seen
// from outside QEMU, see qemu.FeedWatch) turns into a replayed instruction count.
// The feed only ever stops at a safe cut point, and it is at most a few points
// behind the newest, so a small ring suffices.
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
