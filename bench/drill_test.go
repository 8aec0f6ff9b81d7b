package bench

import (
	"testing"
	"time"
)

// The failover's outage is the gap over the failover, not a longer stall of the
// protected pair before the fault or of the survivor after it.
func TestLongestGapOver(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 7, 0, 0, 0, time.UTC)
	at := func(ms ...int) loadResult {
		var r loadResult
		for _, m := range ms {
			r.times = append(r.times, t0.Add(time.Duration(m)*time.Millisecond))
		}
		return r
	}
	fault, live := t0.Add(1000*time.Millisecond), t0.Add(1050*time.Millisecond)
	cases := []struct {
		name        string
		r           loadResult
		outage, gap time.Duration
	}{
		// A 600 ms stall before the fault (a dropped request on the primary),
		// then the failover's 250 ms.
		{"stall before the fault", at(0, 100, 700, 980, 1230, 1250), 250 * time.Millisecond, 600 * time.Millisecond},
		// An answer the old primary released just after the fault ends a short
		// gap; the wait for the survivor is the one after it.
		{"answer just after the fault", at(900, 990, 1002, 1260, 1280), 258 * time.Millisecond, 258 * time.Millisecond},
		// A stall of the survivor that starts after it was seen live is not the
		// failover's.
		{"stall after go-live", at(900, 990, 1230, 1240, 2240), 240 * time.Millisecond, 1000 * time.Millisecond},
		// The gap spans the whole failover.
		{"one gap", at(500, 990, 1500), 510 * time.Millisecond, 510 * time.Millisecond},
		{"no answers", at(), 0, 0},
	}
	for _, c := range cases {
		if got := c.r.longestGapOver(fault, live); got != c.outage {
			t.Errorf("%s: outage %v, want %v", c.name, got, c.outage)
		}
		if got := c.r.maxGapAround(fault); got != c.gap {
			t.Errorf("%s: longest gap %v, want %v", c.name, got, c.gap)
		}
	}
}
