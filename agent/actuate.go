package agent

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/ftvmd/ftvmd/throttle"
)

// slowActuation is how long a pacing or quota call may take before the agent
// logs it as stuck and counts it. The calls are a netlink request or two (tap
// pacing) and one cgroup file write: milliseconds when the kernel is well.
const slowActuation = 2 * time.Second

// latestCall runs, on its own goroutine (run), the newest call posted to it: a
// call posted while another runs replaces any that still waits, so a call that
// blocks never queues the ones behind it and whoever posts never waits. A call
// still running after slow is logged at once (a watchdog: the call cannot be cut
// short, the kernel holds it) and counted.
type latestCall struct {
	name string
	slow time.Duration
	log  *slog.Logger
	wake chan struct{} // cap 1

	mu      sync.Mutex
	next    func()
	stuck   uint64    // calls that ran longer than slow
	running time.Time // when the call running now started; zero when none
}

func newLatestCall(name string, slow time.Duration, log *slog.Logger) *latestCall {
	return &latestCall{name: name, slow: slow, log: log, wake: make(chan struct{}, 1)}
}

// post makes f the next call, replacing one that has not started.
func (l *latestCall) post(f func()) {
	l.mu.Lock()
	l.next = f
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// run runs the posted calls until ctx ends.
func (l *latestCall) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-l.wake:
		}
		l.mu.Lock()
		f := l.next
		l.next = nil
		l.mu.Unlock()
		if f != nil {
			l.call(f)
		}
	}
}

func (l *latestCall) call(f func()) {
	start := time.Now()
	l.mu.Lock()
	l.running = start
	l.mu.Unlock()
	w := time.AfterFunc(l.slow, func() {
		l.mu.Lock()
		l.stuck++
		l.mu.Unlock()
		l.log.Warn("throttle: call stuck in the kernel; later decisions wait for it (the ack path does not)", "call", l.name, "for", l.slow)
	})
	f()
	if !w.Stop() {
		l.log.Warn("throttle: stuck call returned", "call", l.name, "took", time.Since(start).Round(time.Millisecond))
	}
	l.mu.Lock()
	l.running = time.Time{}
	l.mu.Unlock()
}

// stats returns how many calls ran longer than slow, and for how long the one
// running now has (0 when none runs).
func (l *latestCall) stats(now time.Time) (stuck uint64, runningFor time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.running.IsZero() {
		runningFor = now.Sub(l.running)
	}
	return l.stuck, runningFor
}

// actuator applies the throttle's decisions, the CPU quota (a cgroup write) and
// the pacing of the network's frames (on the tap path a qdisc changed over
// netlink), off the ack loop: each on its own latestCall, so a call that blocks
// neither holds the acks the output rule waits for nor the other actuator.
//
// Decisions carry the protection they were made in (gen): release (protection
// ends) moves to the next, and a decision of an earlier one that arrives after it
// (an ack loop that had not yet seen its channel end) is dropped. Applied after
// the release it would engage pacing or throttle an unprotected VM, and with no
// acks coming no later sample would lift it.
type actuator struct {
	log   *slog.Logger
	pace  inputPacer          // nil: nothing paces
	quota func(float64) error // nil: no cgroup
	pacer *latestCall
	cpu   *latestCall

	mu        sync.Mutex
	gen       uint64
	quotaErrs uint64
	started   bool
}

func newActuator(log *slog.Logger, pace inputPacer, quota func(float64) error, slow time.Duration) *actuator {
	return &actuator{
		log: log, pace: pace, quota: quota,
		pacer: newLatestCall("pace", slow, log),
		cpu:   newLatestCall("quota", slow, log),
	}
}

// start runs the actuator's two goroutines with go1 (the owner's) until ctx
// ends; later calls do nothing.
func (a *actuator) start(ctx context.Context, go1 func(func())) {
	a.mu.Lock()
	started := a.started
	a.started = true
	a.mu.Unlock()
	if started {
		return
	}
	go1(func() { a.pacer.run(ctx) })
	go1(func() { a.cpu.run(ctx) })
}

// generation is the protection decisions are made in now. A nil actuator
// (a primary whose streams have not started) acts on nothing.
func (a *actuator) generation() uint64 {
	if a == nil {
		return 0
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.gen
}

func (a *actuator) current(gen uint64) bool { return a.generation() == gen }

// pacing posts one lag sample for the input pacer.
func (a *actuator) pacing(gen uint64, s throttle.Sample) {
	if a == nil || a.pace == nil || !a.current(gen) {
		return
	}
	a.pacer.post(func() {
		if a.current(gen) {
			a.pace.Pace(s)
		}
	})
}

// setQuota posts a new CPU quota; lag and work are for the log.
func (a *actuator) setQuota(gen uint64, q float64, lag, work time.Duration) {
	if a == nil || a.quota == nil || !a.current(gen) {
		return
	}
	a.cpu.post(func() {
		if a.current(gen) {
			a.applyQuota(q, lag, work)
		}
	})
}

func (a *actuator) applyQuota(q float64, lag, work time.Duration) {
	if err := a.quota(q); err != nil {
		a.mu.Lock()
		a.quotaErrs++
		a.mu.Unlock()
		a.log.Warn("throttle", "err", err)
		return
	}
	a.log.Debug("throttle", "quota", q, "lag_ms", lag.Milliseconds(), "work_lag_ms", work.Milliseconds())
}

// release ends this protection's pacing and throttle: the pacer lets everything
// through and the quota goes back to a whole CPU, after any call running now.
// Decisions of this protection posted later are dropped.
func (a *actuator) release() {
	if a == nil {
		return
	}
	a.mu.Lock()
	a.gen++
	a.mu.Unlock()
	if a.pace != nil {
		a.pacer.post(a.pace.ReleasePacing)
	}
	if a.quota != nil {
		a.cpu.post(func() { a.applyQuota(1, 0, 0) })
	}
}

// errors returns the calls that failed to set the quota and, for each of the two
// actuators, the calls that ran longer than the watchdog allows.
func (a *actuator) errors() (quotaErrs, paceStuck, quotaStuck uint64) {
	if a == nil {
		return 0, 0, 0
	}
	a.mu.Lock()
	quotaErrs = a.quotaErrs
	a.mu.Unlock()
	paceStuck, _ = a.pacer.stats(time.Now())
	quotaStuck, _ = a.cpu.stats(time.Now())
	return quotaErrs, paceStuck, quotaStuck
}
