package agent

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvmd/ftvmd/qemu"
	"github.com/ftvmd/ftvmd/replay"
)

// replayProgress is how far the backup knows its replay has got. The poll loop and
// the log sink (before it lets the feed pass more log, see feedProbe) both report
// into it; a report never moves it back.
type replayProgress struct {
	b *backup

	mu       sync.Mutex
	replayed uint64 // instructions the replay has executed, at least
	position int64  // how far into the log it has got, at least
}

func newReplayProgress(b *backup) *replayProgress {
	return &replayProgress{b: b, position: replay.HeaderSize}
}

// report records that the replay has executed v instructions and passes it on: to
// the receiver (whose acks carry it to the primary, one going out at once) and to
// status.
func (p *replayProgress) report(v uint64) { p.record(v, false) }

// record is report; quiet, the receiver sends no ack for it (the caller is the
// sink, whose frame's ack follows).
func (p *replayProgress) record(v uint64, quiet bool) {
	p.mu.Lock()
	if v <= p.replayed {
		p.mu.Unlock()
		return // a late answer never moves progress back
	}
	p.replayed = v
	if off, ok := p.b.positions.at(v); ok {
		p.position = off
	}
	p.mu.Unlock()
	if quiet {
		p.b.recv.NoteReplayed(v)
	} else {
		p.b.recv.SetReplayed(v)
	}
	p.b.mu.Lock()
	if v > p.b.replayed {
		p.b.replayed = v
	}
	p.b.mu.Unlock()
}

func (p *replayProgress) get() (replayed uint64, position int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.replayed, p.position
}

// feedProbe asks the FIFO watch (qemu.FeedWatch) whether the replay has executed
// everything fed to it. The poll loop runs it on its clock, and the log sink runs it
// as each frame arrives, before the feed writes that frame's log: a replay that
// keeps up has consumed the log fed before and sits in read(2), so the frame's own
// wake-up reports its progress, where a timer of the poll loop's own would wake the
// backup's agent (and, on a shared core, take the replay's vCPU off it) once more.
type feedProbe struct {
	b     *backup
	prog  *replayProgress
	watch *qemu.FeedWatch

	mu      sync.Mutex
	closed  bool      // the watch is closed (close): no more checks
	checked time.Time // the last check
	// drained says the last check found the replay blocked on an empty FIFO, and
	// drainedAt at which fed offset (0: it did not).
	drained   bool
	drainedAt int64
	// idle: the poll loop sleeps long, trusting the replay to be caught up; the
	// sink then wakes it (wake) when it gives the feed more log.
	idle atomic.Bool
	wake chan struct{} // cap 1
}

func newFeedProbe(b *backup, prog *replayProgress, w *qemu.FeedWatch) *feedProbe {
	return &feedProbe{b: b, prog: prog, watch: w, wake: make(chan struct{}, 1)}
}

// check looks once and reports what it finds; it says whether the replay was found
// drained.
func (p *feedProbe) check() bool { return p.checkQuiet(false) }

// checkQuiet is check; quiet, see replayProgress.record.
func (p *feedProbe) checkQuiet(quiet bool) bool {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return false
	}
	v, fed, ok := p.b.replayedFromFeed(p.watch)
	p.checked = time.Now()
	p.drained = ok
	if ok {
		p.drainedAt = fed
	}
	p.mu.Unlock()
	if ok {
		p.prog.record(v, quiet)
	}
	return ok
}

// close closes the watch; a check after it (a sink that loaded the probe just
// before the poll loop ended) finds nothing.
func (p *feedProbe) close() {
	p.mu.Lock()
	p.closed = true
	p.watch.Close()
	p.mu.Unlock()
}

// caughtUp says the last check found the replay drained at the feed's limit (the
// newest safe cut point): it has executed everything it may be given, and nothing
// is left to learn until the sink gives the feed more.
func (p *feedProbe) caughtUp() bool {
	p.mu.Lock()
	drained, at := p.drained, p.drainedAt
	p.mu.Unlock()
	return drained && at == p.b.cutPoints.newest().off
}

// lastDrained is the last check's finding.
func (p *feedProbe) lastDrained() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.drained
}

// beforeFeed is the sink's hook: a check before the feed is told of the new frame's
// log, unless one ran less than feedCheckEvery ago (frames of a bulk transfer come
// thousands a second; the checks stay within the poll loop's old rate).
func (p *feedProbe) beforeFeed() {
	p.mu.Lock()
	recent := time.Since(p.checked) < feedCheckEvery
	p.mu.Unlock()
	if !recent {
		p.checkQuiet(true)
	}
}

// afterFeed is the sink's other hook: it wakes the poll loop when it sleeps long.
func (p *feedProbe) afterFeed() {
	if p.idle.Load() {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// sleepIdle tries to put the poll loop in its long sleep: it says whether it may
// (the replay is caught up). Marking idle first and looking after pairs with the
// sink's update of the feed's limit then its look at idle: either this sees the new
// limit, or the sink sees idle and wakes the loop.
func (p *feedProbe) sleepIdle() bool {
	p.idle.Store(true)
	if p.caughtUp() {
		return true
	}
	p.idle.Store(false)
	return false
}

// The poll loop's clock (see pollWait).
const (
	// feedCheckEvery is how often the poll loop checks whether the replay has
	// drained its FIFO (a few small /proc reads) when no frame does it.
	feedCheckEvery = 5 * time.Millisecond
	// feedCheckFlowing is the same while frames arrive (each checks before it is
	// fed): the loop's own checks only back them up.
	feedCheckFlowing = 20 * time.Millisecond
	// framesFlowing: a frame within this long counts as frames arriving.
	framesFlowing = 15 * time.Millisecond
	// pollIdleEvery is the loop's sleep while the replay is caught up (a frame
	// wakes it): it only samples the stall detector, which has nothing to find.
	pollIdleEvery = 100 * time.Millisecond
)

// pollView is what the poll loop knows when it picks its next wake-up.
type pollView struct {
	caughtUp   bool          // the replay has executed everything the feed may give it
	drained    bool          // the last check found it blocked on an empty FIFO
	sinceFrame time.Duration // since the last frame arrived (< 0: none yet)
	queryOut   bool          // a query-replay is in flight
	untilQuery time.Duration // until the next query-replay is due
}

// pollWait is how long the poll loop sleeps: long while the replay is caught up,
// feedCheckEvery after the frames stop (the final drain is the loop's to see), longer
// while they flow (each checks), and, while the replay is not drained, never past a
// due query-replay, rounded up to feedCheckEvery as the loop's old ticks did (the
// primary's view of the lag is as fresh as before, and the replay is not queried
// more often).
func pollWait(v pollView) time.Duration {
	if v.caughtUp {
		return pollIdleEvery
	}
	w := feedCheckEvery
	if v.sinceFrame >= 0 && v.sinceFrame < framesFlowing {
		w = feedCheckFlowing
	}
	if !v.drained && !v.queryOut {
		// No sooner than feedCheckEvery, as when the loop ticked at that rate: a
		// query takes the replay mutex from the vCPU, and the 1 ms "waking" interval
		// taken at its word made a replay under network input slower (bench net, one
		// draw: iperf3 client->guest 348 Mbit/s against 908).
		w = min(w, max(v.untilQuery, feedCheckEvery))
	}
	return w
}
