package agent

import (
	"fmt"
	"time"

	"github.com/ftvmd/ftvmd/qemu"
)

// DefaultStallAfter is how long a backup's replay may sit still, while the backup
// holds log beyond it, before it is reported stalled.
const DefaultStallAfter = 3 * time.Second

// DefaultStallStepDown is how long a backup's replay may stay stalled before the
// divergence sentinel steps the backup down (agent --stall-step-down). Under load
// the replay stands still for a while and recovers: the load benchmarks' longest
// still was 2.25 s (docs/benchmarks.md, bench load, load 16-21), under the 3 s report
// threshold. A stall that lasts is no protection: a failover must first replay
// everything held behind it (the 47-48 s stalls under CPU overload in the in-place
// failover bench made a go-live take 81 s), and while it lasts the primary is
// throttled towards its floor for a backup that does not move (TestLoadLockstep's
// stall: quota at 0.10). 10 s is four times the longest recovering still seen and a
// bounded cost: a step-down ends the throttling at once and the primary protects the
// VM again from a fresh start (one snapshot pause) on its own.
const DefaultStallStepDown = 10 * time.Second

// replaySample is one look at the backup's replay.
type replaySample struct {
	At     time.Time
	Icount uint64 // instructions the replay has executed
	// LogIcount is the instruction count at the end of the log the backup can feed
	// its replay (its newest safe cut point). Above Icount, the replay has log with
	// instructions it has not executed; equal, it has nothing to do but wait.
	LogIcount uint64
	Position  int64 // log offset the replay has reached, as far as the backup knows
	Fed       int64 // log offset fed to the replaying QEMU
	Held      int64 // log offset the backup holds
	// Feed is the feed's side of the FIFO: whether the replay has log waiting for
	// it to read, or waits for the feed.
	Feed qemu.FeedState
}

// stallChange is what one sample changed.
type stallChange int

const (
	stallSame    stallChange = iota
	stallEntered             // the replay has just been found stalled
	stallCleared             // a stalled replay moved again (or ran out of log to replay)
)

// stallState describes the replay's current or last stall.
type stallState struct {
	Stalled  bool
	For      time.Duration // the current stall's length so far; after it cleared, its final length
	AtIcount uint64        // where the replay stopped
	Position int64         // log offset it stopped at, as far as the backup knows
	Fed      int64         // log offset fed to its QEMU (at the latest sample while stalled)
	Held     int64         // log offset the backup holds (likewise)
	Episodes uint64        // stalls so far, the current one included
	// Waiting says which side stands still, from the feed's view when the stall
	// began (see stallWaiting).
	Waiting string
}

// Beyond is how much log the backup holds past the stalled replay's position.
func (s stallState) Beyond() int64 { return max(s.Held-s.Position, 0) }

// stallDetector decides when the backup's replay has stalled: its instruction count
// has not moved for `after` while the log the backup can feed it goes beyond that
// count. It reports the stall once when it begins, keeps its length up to date, and
// clears it when the count moves again. It is pure: the caller samples the replay
// and supplies the clock.
//
// A still count alone is no stall: an idle guest's replay executes everything it is
// fed and waits for more, and while it waits its count cannot move. Its log is not
// quiet for long (timer and idle checkpoints carry instructions), so a replay that
// is working through it moves; one that does not, with such log in hand, is stuck,
// and a failover would find it there.
type stallDetector struct {
	after time.Duration

	seen    bool      // a sample has arrived
	icount  uint64    // the latest sample's count
	still   time.Time // since when the count has not moved with log beyond it; zero: not so
	current stallState
}

func newStallDetector(after time.Duration) *stallDetector {
	if after <= 0 {
		after = DefaultStallAfter
	}
	return &stallDetector{after: after}
}

// observe takes one sample (samples come in time order) and says what it changed.
func (d *stallDetector) observe(s replaySample) stallChange {
	moved := !d.seen || s.Icount != d.icount
	d.seen, d.icount = true, s.Icount
	ahead := s.LogIcount > s.Icount
	if moved || !ahead {
		// Progress, or nothing to make progress on: whatever stood still ends here.
		wasStalled, stillFor := d.current.Stalled, max(s.At.Sub(d.still), 0)
		d.still = time.Time{}
		if ahead {
			d.still = s.At // it moved now, so any standing still starts now
		}
		if wasStalled {
			d.current.Stalled, d.current.For = false, stillFor
			return stallCleared
		}
		return stallSame
	}
	if d.still.IsZero() {
		// Log beyond the count has just arrived (the replay was waiting): measure
		// from now, not from when the count last moved.
		d.still = s.At
	}
	stillFor := max(s.At.Sub(d.still), 0)
	if d.current.Stalled {
		d.current.For, d.current.Fed, d.current.Held = stillFor, s.Fed, s.Held
		return stallSame
	}
	if stillFor < d.after {
		return stallSame
	}
	d.current = stallState{
		Stalled: true, For: stillFor, AtIcount: s.Icount,
		Position: s.Position, Fed: s.Fed, Held: s.Held, Episodes: d.current.Episodes + 1,
		Waiting: stallWaiting(s.Feed),
	}
	return stallEntered
}

// state is the current stall, or the last one (Stalled false) if any.
func (d *stallDetector) state() stallState { return d.current }

// stallWaiting names the side of the FIFO that stands still in a stall:
//   - log waits in the pipe, or a feed write waits for room: the replaying QEMU does
//     not read (it is stuck, stopped or starved of CPU);
//   - the pipe is empty and the feed holds log up to a later safe cut point it has
//     not written: the feed is stuck (the agent's side);
//   - the feed has written everything up to its newest safe cut point: the log the
//     backup holds beyond it has no safe cut point yet.
func stallWaiting(f qemu.FeedState) string {
	switch {
	case f.Blocked > 0:
		return fmt.Sprintf("qemu: a feed write of %d bytes has waited %s for room in the FIFO (%d unread of %d)",
			f.Blocked, f.BlockedFor.Round(time.Millisecond), f.Unread, f.Pipe)
	case f.Unread > 0:
		return fmt.Sprintf("qemu: %d bytes wait unread in the FIFO", f.Unread)
	case f.Unread < 0:
		return "unknown: the FIFO cannot be inspected"
	case f.Fed < f.UpTo:
		return fmt.Sprintf("feed: the FIFO is empty and %d bytes up to the newest safe cut point are not fed", f.UpTo-f.Fed)
	default:
		return "cut: the replay has everything up to the newest safe cut point; the log held beyond it has none yet"
	}
}
