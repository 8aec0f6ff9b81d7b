// Package throttle slows the primary's QEMU when its backup falls behind, as VMware FT
// does: replay runs slower than record, so without it a busy guest leaves its backup
// further behind every second. Controller is the pure decision; Cgroup applies it.
package throttle

import "time"

// Controller turns the backup's lag into a CPU quota for the primary, as a fraction of
// one CPU in (0, 1]; 1 means unthrottled. It is a pure state machine: the caller feeds
// lag samples and applies Quota().
//
// The rule is multiplicative decrease when the lag is above the bound and gentle
// increase once it is back under half the bound: the backup must be able to catch up
// (quota strictly below its replay speed) and the primary must not oscillate hard.
type Controller struct {
	Bound    time.Duration // lag bound: above it, throttle
	MinQuota float64       // floor, so the guest never stops entirely
	quota    float64
	// Throttled time accounting, for the cost report.
	throttledFor time.Duration
	lastAt       time.Time
}

// NewController returns an unthrottled controller for the given bound.
func NewController(bound time.Duration) *Controller {
	return &Controller{Bound: bound, MinQuota: 0.1, quota: 1}
}

// Observe takes one lag sample at time now and returns the new quota.
func (c *Controller) Observe(lag time.Duration, now time.Time) float64 {
	if !c.lastAt.IsZero() && c.quota < 1 {
		c.throttledFor += now.Sub(c.lastAt)
	}
	c.lastAt = now
	switch {
	case lag > c.Bound:
		// Above the bound: cut in proportion to how far above it we are.
		over := float64(lag) / float64(c.Bound)
		f := 0.85
		if over > 2 {
			f = 0.6
		}
		c.quota *= f
	case lag > c.Bound*3/4:
		// Approaching the bound: cut mildly so it is not crossed.
		c.quota *= 0.95
	case lag < c.Bound/2:
		c.quota = c.quota*1.05 + 0.01
	}
	if c.quota < c.MinQuota {
		c.quota = c.MinQuota
	}
	if c.quota > 1 {
		c.quota = 1
	}
	return c.quota
}

// Quota is the current CPU fraction; 1 means no throttle.
func (c *Controller) Quota() float64 { return c.quota }

// ThrottledFor is the total time the quota was below 1.
func (c *Controller) ThrottledFor() time.Duration { return c.throttledFor }
