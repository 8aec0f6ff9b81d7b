package throttle

import (
	"testing"
	"time"
)

// A simulated backup that replays at 0.75x the primary's unthrottled speed: without a
// throttle its lag grows without end; with the controller it stays near the bound, with
// and without instruction rates in the samples.
func TestControllerBoundsLagOfSlowBackup(t *testing.T) {
	for _, mode := range []string{"none", "lag only", "lag and rates"} {
		c := NewController(100 * time.Millisecond)
		const step = 20 * time.Millisecond
		const backupSpeed = 0.75
		var primary, backup float64 // work done, in seconds of unthrottled primary time
		now := time.Unix(0, 0)
		var maxLag time.Duration
		var qSum float64
		for i := 0; i < 3000; i++ { // 60 s of simulated time
			q := 1.0
			if mode != "none" {
				q = c.Quota()
			}
			primary += q * step.Seconds()
			bstep := backupSpeed * step.Seconds()
			if backup+bstep > primary {
				bstep = primary - backup
			}
			backup += bstep
			// Lag in wall time: how long the backup needs to reach where the primary is.
			lag := time.Duration((primary - backup) / backupSpeed * float64(time.Second))
			now = now.Add(step)
			if i%5 == 0 { // the agent's 100 ms cadence
				s := Sample{Lag: lag}
				if mode == "lag and rates" {
					s.PrimaryRate, s.BackupRate = q, bstep/step.Seconds()
				}
				c.Observe(s, now)
			}
			if i > 500 && lag > maxLag {
				maxLag = lag
			}
			if i >= 1000 {
				qSum += q
			}
		}
		avgQ := qSum / 2000
		switch {
		case mode == "none" && maxLag < 5*time.Second:
			t.Fatalf("simulation broken: unthrottled lag only reached %v", maxLag)
		case mode != "none" && maxLag > 150*time.Millisecond:
			t.Fatalf("%s: throttled lag reached %v, bound 100ms", mode, maxLag)
		case mode != "none" && (avgQ > 0.8 || avgQ < 0.6):
			t.Fatalf("%s: mean quota %.2f, want near the backup's relative speed 0.75", mode, avgQ)
		}
	}
}

// After the floor, a caught-up backup releases the primary within a second of
// controller steps (a burst of guest work should not start throttled).
func TestControllerRecoversFast(t *testing.T) {
	c := NewController(100 * time.Millisecond)
	now := time.Unix(0, 0)
	for i := 0; i < 20; i++ {
		now = now.Add(100 * time.Millisecond)
		c.Observe(Sample{Lag: time.Second}, now)
	}
	if c.Quota() != c.MinQuota {
		t.Fatalf("quota %.2f after sustained 10x lag, want the floor", c.Quota())
	}
	for i := 0; i < 10; i++ {
		now = now.Add(100 * time.Millisecond)
		c.Observe(Sample{}, now)
	}
	if c.Quota() != 1 {
		t.Fatalf("quota %.2f after 10 caught-up steps, want 1", c.Quota())
	}
}

// Above the set point with rates, the quota goes to (a little below) the matching
// quota in one step, and a garbage rate cannot cut it by more than half.
func TestControllerMatchesRates(t *testing.T) {
	c := NewController(100 * time.Millisecond)
	c.Observe(Sample{Lag: 45 * time.Millisecond, PrimaryRate: 400e6, BackupRate: 300e6}, time.Unix(1, 0))
	if q := c.Quota(); q < 0.70 || q > 0.75 {
		t.Fatalf("quota %.3f, want just under 0.75", q)
	}
	c.Observe(Sample{Lag: 60 * time.Millisecond, PrimaryRate: 400e6, BackupRate: 1}, time.Unix(2, 0))
	if q := c.Quota(); q < 0.35 {
		t.Fatalf("quota %.3f: one bad rate sample cut more than half", q)
	}
}

func TestControllerReleasesWhenCaughtUp(t *testing.T) {
	c := NewController(100 * time.Millisecond)
	now := time.Unix(0, 0)
	for i := 0; i < 10; i++ {
		now = now.Add(100 * time.Millisecond)
		c.Observe(Sample{Lag: time.Second}, now)
	}
	if c.Quota() > 0.1 {
		t.Fatalf("quota %.2f after sustained 10x lag", c.Quota())
	}
	for i := 0; i < 200; i++ {
		now = now.Add(100 * time.Millisecond)
		c.Observe(Sample{}, now)
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

// The floor holds: a backup that cannot keep pace even with the primary at its
// floor is reported (AtFloor), and the quota never goes under the floor.
func TestControllerAtFloor(t *testing.T) {
	c := NewController(100 * time.Millisecond)
	now := time.Unix(0, 0)
	if c.AtFloor() {
		t.Fatal("an unthrottled controller says it is at its floor")
	}
	for i := 0; i < 50; i++ {
		now = now.Add(100 * time.Millisecond)
		if q := c.Observe(Sample{Lag: 10 * time.Second}, now); q < c.MinQuota {
			t.Fatalf("quota %.3f under the floor %.3f", q, c.MinQuota)
		}
	}
	if !c.AtFloor() {
		t.Fatalf("quota %.3f after 5 s of 100x lag, want the floor %.3f", c.Quota(), c.MinQuota)
	}
}
