package throttle

import (
	"testing"
	"time"
)

// A simulated backup that replays at 0.75x the primary's unthrottled speed: without a
// throttle its lag grows without end; with the controller it stays near the bound.
func TestControllerBoundsLagOfSlowBackup(t *testing.T) {
	for _, withThrottle := range []bool{false, true} {
		c := NewController(100 * time.Millisecond)
		const step = 20 * time.Millisecond
		var primary, backup float64 // work done, in seconds of unthrottled primary time
		now := time.Unix(0, 0)
		var maxLag time.Duration
		for i := 0; i < 3000; i++ { // 60 s of simulated time
			q := 1.0
			if withThrottle {
				q = c.Quota()
			}
			primary += q * step.Seconds()
			backup += 0.75 * step.Seconds()
			if backup > primary {
				backup = primary
			}
			// Lag in wall time: how long the backup needs to reach where the primary is.
			lag := time.Duration((primary - backup) / 0.75 * float64(time.Second))
			now = now.Add(step)
			c.Observe(lag, now)
			if i > 500 && lag > maxLag {
				maxLag = lag
			}
		}
		if !withThrottle && maxLag < 5*time.Second {
			t.Fatalf("simulation broken: unthrottled lag only reached %v", maxLag)
		}
		if withThrottle && maxLag > 150*time.Millisecond {
			t.Fatalf("throttled lag reached %v, bound 100ms", maxLag)
		}
		if withThrottle && (c.Quota() > 0.9 || c.Quota() < 0.5) {
			t.Fatalf("steady quota %.2f, want near the backup's relative speed 0.75", c.Quota())
		}
	}
}

func TestControllerReleasesWhenCaughtUp(t *testing.T) {
	c := NewController(100 * time.Millisecond)
	now := time.Unix(0, 0)
	for i := 0; i < 10; i++ {
		now = now.Add(100 * time.Millisecond)
		c.Observe(time.Second, now)
	}
	if c.Quota() > 0.1 {
		t.Fatalf("quota %.2f after sustained 10x lag", c.Quota())
	}
	for i := 0; i < 200; i++ {
		now = now.Add(100 * time.Millisecond)
		c.Observe(0, now)
	}
	if c.Quota() != 1 {
		t.Fatalf("quota %.2f after catching up, want 1", c.Quota())
	}
	if c.ThrottledFor() <= 0 {
		t.Fatal("throttled time not accounted")
	}
}

func TestQuotaFloor(t *testing.T) {
	if quotaUS(0.0001, 100000) != 1000 {
		t.Fatal("quota below the kernel minimum")
	}
}
