// Package throttle slows the primary's QEMU when its backup falls behind, as VMware FT
// does: replay runs slower than record, so without it a busy guest leaves its backup
// further behind every second. Controller is the pure decision; Cgroup applies it.
package throttle

import "time"

// Controller turns the backup's lag into a CPU quota for the primary, as a fraction of
// one CPU in (0, 1]; 1 means unthrottled. It is a pure state machine: the caller feeds
// samples and applies Quota().
//
// Above the set point (40% of the bound) the backup is replaying flat out, so the ratio
// of its instruction rate to the primary's says at what quota the two would run at the
// same speed; the controller goes there, a little below to drain the lag, in one step.
// Without rates it falls back to multiplicative decrease. Below a fifth of the bound
// it releases the primary quickly, since a short burst of guest work (the common case)
// should run at full speed while the lag budget lasts. In between it holds.
type Controller struct {
	Bound time.Duration // lag bound: above it, throttle
	// MinQuota is the floor, so the guest never stops entirely (see
	// DefaultMinQuota for why it is not lower).
	MinQuota float64
	quota    float64
	// Throttled time accounting, for the cost report.
	throttledFor time.Duration
	lastAt       time.Time
}

// Sample is one observation of the pair.
type Sample struct {
	Lag time.Duration // work the backup still has to replay, in time
	// Instruction rates over the last second or so; 0 when unknown.
	PrimaryRate, BackupRate float64
}

// DefaultMinQuota is the controller's floor: 10% of a CPU. A lower floor was
// tried and made the lag worse, not better (TestSoakShort, 2026-11-30 10:37 UTC,
// load 8-15: at 0.02 the lag p99 was 8.4 s, max 10 s, against 636 ms at 0.1 in a
// 20-minute soak at load 6-15; one run each, so no clean A/B). The likely loop:
// the backup replays an instruction batch only once the event that ends it is in
// the log, so a primary slowed to a crawl also slows the log the backup waits for
// (the run's work lag stayed ~5 ms while the age lag passed 1 s), the age lag
// grows, and the controller slows the primary further. The floor stays where that
// loop is weak; a backup that falls behind a primary at the floor is shown in
// status (AtFloor) instead.
const DefaultMinQuota = 0.1

// NewController returns an unthrottled controller for the given bound.
func NewController(bound time.Duration) *Controller {
	return &Controller{Bound: bound, MinQuota: DefaultMinQuota, quota: 1}
}

// Observe takes one sample at time now and returns the new quota. Call it at a fixed
// cadence (the agent uses 100 ms), not per ack.
func (c *Controller) Observe(s Sample, now time.Time) float64 {
	if !c.lastAt.IsZero() && c.quota < 1 {
		c.throttledFor += now.Sub(c.lastAt)
	}
	c.lastAt = now
	// 40%, not 50%: the lag is measured a few ms late and the guest's work comes in
	// bursts, so the peaks run well above the mean (measured p99 ~2.2x p50).
	setPoint := c.Bound * 2 / 5
	switch {
	case s.Lag > setPoint:
		// Drain: aim below the matching quota, the more the further above the set point.
		over := float64(s.Lag-setPoint) / float64(c.Bound)
		drain := 1 - 0.5*min(over, 1)
		if s.PrimaryRate > 0 && s.BackupRate > 0 {
			match := c.quota * s.BackupRate / s.PrimaryRate
			c.quota = clamp(match*drain, c.quota*0.5, c.quota*0.95)
		} else if s.Lag > 2*c.Bound {
			c.quota *= 0.6
		} else {
			c.quota *= 0.85
		}
	case s.Lag < c.Bound/5:
		// From the floor to a whole CPU in under a second of steps (9): a caught-up
		// backup should not keep a burst of guest work slow.
		c.quota = c.quota*1.2 + 0.05
	}
	c.quota = clamp(c.quota, c.MinQuota, 1)
	return c.quota
}

func clamp(v, lo, hi float64) float64 {
	return max(lo, min(v, hi))
}

// Quota is the current CPU fraction; 1 means no throttle.
func (c *Controller) Quota() float64 { return c.quota }

// AtFloor says the quota is at its floor: if the lag still exceeds the bound, the
// backup cannot keep pace even with the primary slowed as far as it goes, which
// status says (the host is short of CPU for the replay).
func (c *Controller) AtFloor() bool { return c.quota <= c.MinQuota }

// ThrottledFor is the total time the quota was below 1.
func (c *Controller) ThrottledFor() time.Duration { return c.throttledFor }
