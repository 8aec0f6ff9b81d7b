package throttle

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Defaults for PacerConfig.
const (
	// DefaultPaceQueue is how many bytes of network frames a pacer holds before it
	// drops: 4 MiB is a third of a second of a 100 Mbit/s stream, more than a TCP
	// sender keeps in flight to the lab's guest, so a paced sender is slowed by
	// delayed ACKs and not by losses.
	DefaultPaceQueue = 4 << 20
	// DefaultMinPaceRate is the floor of the paced rate, in bytes/s (2 Mbit/s):
	// request/response traffic and TCP ACKs pass at once even while a bulk stream is
	// paced, and a stuck backup cannot stop the network entirely.
	DefaultMinPaceRate = 256 << 10
	// paceBurst is how much sending time a paced link may save up while idle: a
	// short burst evens out the step of one frame without letting a queue out at
	// once.
	paceBurst = 10 * time.Millisecond
	// releaseAfter is how long the limit must hold nothing back, with the lag
	// well within the bound, before pacing ends. Ending it at the first sample in
	// which nothing waited let a bulk stream out unpaced between two of its bursts,
	// and the lag passed the bound again before pacing could re-engage (measured in
	// the lab: 5 of the 9 samples over the bound in a 40 s stream came right after
	// such a release).
	releaseAfter = time.Second
)

// ErrPacerConfig reports an invalid PacerConfig.
var ErrPacerConfig = errors.New("throttle: invalid pacer config")

// PacerConfig configures a Pacer.
type PacerConfig struct {
	// Bound is the lag bound: at or below it the pacer passes every frame at once.
	Bound time.Duration
	// QueueBytes bounds the frames held (0: DefaultPaceQueue); a frame that does
	// not fit is dropped and counted.
	QueueBytes int
	// MinRate is the lowest paced rate in bytes/s (0: DefaultMinPaceRate).
	MinRate float64
	// OnlyOverFloor: engage only when more than MinRate flowed in the sample's
	// period. Less says the network's frames are not what is behind the lag (a
	// QEMU stopped by SIGSTOP reads none; a guest busy on its CPU gets a few
	// requests): pacing would only sit at its floor, pace nothing that flowed,
	// and then hold the traffic that comes (a stopped QEMU resuming, a bulk
	// stream starting) to the floor until the additive steps or a quiet second
	// lift it; the CPU quota is what acts on such a lag. Off, pacing engages at
	// the floor whatever flowed (the relay's unit tests rely on it).
	OnlyOverFloor bool
}

func (c *PacerConfig) validate() error {
	switch {
	case c.Bound <= 0:
		return fmt.Errorf("%w: lag bound %s, want > 0", ErrPacerConfig, c.Bound)
	case c.QueueBytes < 0:
		return fmt.Errorf("%w: queue of %d bytes", ErrPacerConfig, c.QueueBytes)
	case c.MinRate < 0 || math.IsNaN(c.MinRate) || math.IsInf(c.MinRate, 0):
		return fmt.Errorf("%w: minimum rate %v bytes/s", ErrPacerConfig, c.MinRate)
	}
	if c.QueueBytes == 0 {
		c.QueueBytes = DefaultPaceQueue
	}
	if c.MinRate == 0 {
		c.MinRate = DefaultMinPaceRate
	}
	return nil
}

// Verdict is what Offer decided for a frame.
type Verdict int

const (
	// Send: hand the frame to QEMU now; the pacer keeps no copy.
	Send Verdict = iota
	// Held: the pacer copied the frame into its queue; Next gives it back.
	Held
	// Dropped: the queue is full; the frame is lost (counted), as a full NIC queue
	// would lose it.
	Dropped
)

func (v Verdict) String() string {
	switch v {
	case Send:
		return "send"
	case Held:
		return "held"
	case Dropped:
		return "dropped"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// Pacer paces the frames the network hands to a recording VM when its backup falls
// behind. A CPU quota cannot slow them: every frame received is logged, and a
// 100 Mbit/s stream into the guest is 12 MiB/s of log the backup must receive and
// replay. Holding frames in the agent slows a TCP sender down (its ACKs come later)
// without losses.
//
// The rate follows AIMD, steered by the lag samples the throttle gets: unlimited
// while the lag is within the bound; on passing it, half the rate that was flowing.
// From then on the set point is half the bound: above it the rate is halved again at
// each sample while the lag still grows, and held while it falls; below it the rate
// is raised by an eighth of the engaging rate per sample in which it held a frame
// back (a limit nothing meets is not raised further); below a quarter of the bound
// pacing ends once no frame had to wait for a second.
//
// Pacer is a pure state machine (no I/O, no clock, not safe for concurrent use):
// the caller feeds it lag samples (Observe) and frames (Offer) and asks which held
// frame may go when (Next), so a user-space relay and a kernel data path (applying
// Rate to a qdisc) can share the decisions. A kernel path offers no frames: it
// tells the pacer what its qdisc let through before each sample (Account).
type Pacer struct {
	cfg PacerConfig

	active   bool
	rate     float64 // bytes/s while active
	addStep  float64 // additive increase per sample, bytes/s
	tokens   float64 // bytes that may go now; negative: the debt of the last frame
	tokensAt time.Time
	lastLag  time.Duration
	lastAt   time.Time
	// unlimitedFor is how long, while active, no frame had to wait.
	unlimitedFor time.Duration

	queue      [][]byte // held frames, oldest first, from head
	head       int
	queueBytes int

	passed     int64 // bytes handed on since the last sample
	heldSince  int   // frames held since the last sample
	pacedFor   time.Duration
	paced      uint64 // frames that waited in the queue
	drops      uint64
	engaged    uint64
	engagedLag time.Duration
}

// NewPacer returns an unlimited pacer.
func NewPacer(cfg PacerConfig) (*Pacer, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Pacer{cfg: cfg}, nil
}

// Observe takes one lag sample at time now and adjusts the rate. Call it at the
// throttle's cadence (the agent's 100 ms): each step is a decision on how the lag
// moved since the last one.
func (p *Pacer) Observe(s Sample, now time.Time) {
	var dt time.Duration
	if !p.lastAt.IsZero() && now.After(p.lastAt) {
		dt = now.Sub(p.lastAt)
	}
	flowing := 0.0 // bytes/s handed on since the last sample
	if dt > 0 {
		flowing = float64(p.passed) / dt.Seconds()
	}
	limited := p.heldSince > 0 || p.Len() > 0 // the rate held a frame back
	if p.active {
		p.pacedFor += dt
		if limited {
			p.unlimitedFor = 0
		} else {
			p.unlimitedFor += dt
		}
	}
	// Once engaged, the pacer steers the lag to half the bound rather than to the
	// bound itself: a rate that just matches the backup puts the lag's peaks, and
	// with them its p99, over the bound at every probe upwards.
	setPoint := p.cfg.Bound / 2
	switch {
	case !p.active:
		// Engage only on a rate measured over a real period. The first sample
		// after NewPacer or Release has none (flowing reads 0), and in the agent
		// it is the backup's catch-up from a protection's start, seconds of lag:
		// engaged on it, the pacer went to its floor whatever the traffic and
		// released again a second later. The next sample, a throttle period later,
		// has the rate.
		if s.Lag > p.cfg.Bound && dt > 0 && (!p.cfg.OnlyOverFloor || flowing > p.cfg.MinRate) {
			p.engage(s.Lag, flowing, now)
		}
	case s.Lag > setPoint:
		if s.Lag >= p.lastLag {
			p.setRate(p.rate/2, now) // still growing: multiplicative decrease
		}
		// Falling: the backup is draining at this rate; keep it.
	case s.Lag <= setPoint/2 && p.unlimitedFor >= releaseAfter:
		// Well within the bound and nothing had to wait for a while: the
		// traffic has fallen below the limit (a stream ended), not just dipped
		// between two bursts.
		p.active, p.rate = false, 0
	case limited:
		// Additive increase. Not multiplicative: a paced TCP sender keeps its
		// whole window in the queue, and a rate that jumps lets it out at once,
		// which the backup then sees as a step of lag.
		p.setRate(p.rate+p.addStep, now)
	}
	// Not limited: the rate stays where it is. Raising a limit nothing meets
	// would only let the next burst through unpaced.
	p.lastLag, p.lastAt = s.Lag, now
	p.passed, p.heldSince = 0, 0
}

// Traffic is what a data path that applies Rate itself (a qdisc on a tap) saw
// since the last sample: the frames never passed through Offer, so the pacer
// learns of them here.
type Traffic struct {
	// Bytes went to QEMU since the last sample.
	Bytes int64
	// Limited: the rate held something back (frames waited or were dropped).
	Limited bool
	// Drops are frames dropped on the path's full queue since the last sample.
	Drops uint64
}

// Account adds traffic the pacer did not see through Offer to the sample period
// in progress: call it just before each Observe, with the counts since the last
// one. Its bytes set the rate pacing engages at (half the rate that was flowing),
// and Limited lets the rate grow additively as frames held by Offer do.
func (p *Pacer) Account(t Traffic) {
	if t.Bytes > 0 {
		p.passed += t.Bytes
	}
	if t.Limited {
		p.heldSince++
	}
	p.drops += t.Drops
}

// engage starts pacing at half the rate that let the lag pass the bound.
func (p *Pacer) engage(lag time.Duration, flowing float64, now time.Time) {
	p.active = true
	p.unlimitedFor = 0
	p.engaged++
	p.engagedLag = lag
	p.tokens, p.tokensAt = 0, now
	p.setRate(flowing/2, now)
	// Recovering from half to the engaging rate takes about 8 samples below the
	// bound, under a second.
	p.addStep = max(p.rate/8, p.cfg.MinRate)
}

func (p *Pacer) setRate(r float64, now time.Time) {
	p.refill(now)
	p.rate = max(r, p.cfg.MinRate)
	p.tokens = min(p.tokens, p.burst())
}

func (p *Pacer) burst() float64 { return p.rate * paceBurst.Seconds() }

// refill adds the tokens earned since the last refill.
func (p *Pacer) refill(now time.Time) {
	if now.After(p.tokensAt) {
		p.tokens = min(p.tokens+p.rate*now.Sub(p.tokensAt).Seconds(), p.burst())
		p.tokensAt = now
	}
}

// Release ends pacing at once (the VM is no longer protected): the held frames may
// all go.
//
// The sample state starts afresh too: the next protection's first sample must not
// read the traffic of the unprotected time in between as the rate flowing in one
// sample period.
func (p *Pacer) Release() {
	p.active, p.rate = false, 0
	p.lastAt, p.lastLag = time.Time{}, 0
	p.passed, p.heldSince = 0, 0
}

// Offer decides on one frame from the network arriving at now. On Held the pacer
// keeps a copy, so the caller may reuse frame's buffer whatever the verdict.
func (p *Pacer) Offer(frame []byte, now time.Time) Verdict {
	if p.Len() == 0 {
		if !p.active {
			p.passed += int64(len(frame))
			return Send
		}
		p.refill(now)
		if p.tokens >= 0 {
			p.tokens -= float64(len(frame))
			p.passed += int64(len(frame))
			return Send
		}
	}
	// Behind earlier frames, or over the rate: queue, in order.
	if p.queueBytes+len(frame) > p.cfg.QueueBytes {
		p.drops++
		return Dropped
	}
	if p.head > 0 && p.head*2 >= len(p.queue) {
		// Reuse the front of the slice once half of it is spent, so a queue that
		// never quite empties does not grow its slice for ever.
		n := copy(p.queue, p.queue[p.head:])
		clear(p.queue[n:])
		p.queue, p.head = p.queue[:n], 0
	}
	p.queue = append(p.queue, append([]byte(nil), frame...))
	p.queueBytes += len(frame)
	p.paced++
	p.heldSince++
	return Held
}

// Next returns the oldest held frame if it may go at now (the caller then owns it),
// or nil and how long until it may. It returns nil and 0 when nothing is held.
func (p *Pacer) Next(now time.Time) ([]byte, time.Duration) {
	if p.Len() == 0 {
		return nil, 0
	}
	f := p.queue[p.head]
	if p.active {
		p.refill(now)
		if p.tokens < 0 {
			wait := time.Duration(math.Ceil(-p.tokens / p.rate * float64(time.Second)))
			return nil, max(wait, time.Nanosecond)
		}
		p.tokens -= float64(len(f))
	}
	p.queue[p.head] = nil
	p.head++
	p.queueBytes -= len(f)
	p.passed += int64(len(f))
	return f, 0
}

// Len is the number of frames held.
func (p *Pacer) Len() int { return len(p.queue) - p.head }

// Active reports whether the pacer limits the rate.
func (p *Pacer) Active() bool { return p.active }

// Rate is the paced rate in bytes/s, 0 when unlimited.
func (p *Pacer) Rate() float64 {
	if !p.active {
		return 0
	}
	return p.rate
}

// PacerStats are a pacer's counters.
type PacerStats struct {
	Active      bool
	Rate        float64       // bytes/s, 0 when unlimited
	QueueBytes  int           // bytes held now
	QueueFrames int           // frames held now
	Paced       uint64        // frames that waited in the queue
	Drops       uint64        // frames dropped on a full queue
	PacedFor    time.Duration // total time the rate was limited
	Engaged     uint64        // times the lag passing the bound started pacing
	EngagedLag  time.Duration // the lag that started pacing last
	// ApplyErrors are a kernel path's failures to apply the rate (its qdisc);
	// a Pacer itself has none: the path fills it in.
	ApplyErrors uint64
}

// Stats returns the counters.
func (p *Pacer) Stats() PacerStats {
	return PacerStats{
		Active: p.active, Rate: p.Rate(), QueueBytes: p.queueBytes, QueueFrames: p.Len(),
		Paced: p.paced, Drops: p.drops, PacedFor: p.pacedFor, Engaged: p.engaged, EngagedLag: p.engagedLag,
	}
}
