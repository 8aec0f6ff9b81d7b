package agent

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/journal"
	"github.com/ftvmd/ftvmd/lifecycle"
	"github.com/ftvmd/ftvmd/qemu"
)

// The QEMU liveness watch: every VM's QEMU the agent runs (a primary, protected or
// not; a replaying backup) is asked query-status on a period. A QEMU that stops
// answering (a deadlock, SIGSTOP, a host thread that froze) is otherwise noticed
// only through what it breaks: a protected primary's backup sees its log stop and
// the stall and peer-loss handling act, but an unprotected primary's QEMU can be
// dead for hours while the agent retries re-protection (session 11: "qmp stop:
// context deadline exceeded" every few seconds, status saying it ran unprotected).
//
// Defaults, and why:
//   - DefaultQEMUUnresponsiveAfter (10 s) is how old the unanswered probe must be.
//     The monitor runs one command at a time, so a probe queues behind a legit
//     long command: a savevm pauses the guest for 0.3-1 s, more under load, and
//     the lab's overloaded runs saw replays stand still for seconds. The chaos
//     fault pause-primary-qemu SIGSTOPs the primary's QEMU for 2-5 s and expects
//     nothing to change: 10 s is twice its longest, so that fault is not reported.
//     It is also the stall step-down's threshold (DefaultStallStepDown): a backup
//     whose QEMU is wedged steps down about when it is reported unresponsive.
//   - qemuProbeEvery (1 s): one query-status a second per VM is nothing next to
//     the log traffic, and bounds the time to notice at threshold + 1 s.
//   - qemuProbeWait (1 s): how long one Probe call waits before the watch looks at
//     the probe's age again. A probe that waits is judged by its age, never by
//     one timeout: the command stays out (qemu.Machine.Probe) and the next call
//     waits for it.
//   - qemuProbeMisses (3): probes that fail outright (the monitor answers with an
//     error, or its socket broke) in a row. Not deadline misses: those are age.
const (
	DefaultQEMUUnresponsiveAfter = 10 * time.Second
	qemuProbeEvery               = time.Second
	qemuProbeWait                = time.Second
	qemuProbeMisses              = 3
)

// probeResult is how one probe call ended.
type probeResult int

const (
	probeAnswered probeResult = iota // QEMU answered
	probeWaiting                     // the call's wait ended; the probe is still out
	probeFailed                      // the monitor gave an error
)

// watchChange is what one observation changed.
type watchChange int

const (
	watchSame         watchChange = iota
	watchUnresponsive             // the QEMU has just been found unresponsive
	watchAnswers                  // an unresponsive QEMU answered
)

// qemuLiveness is the watch's view of the QEMU, for status and events.
type qemuLiveness struct {
	Unresponsive bool
	// Since: when the QEMU stopped answering: the start of the first probe not
	// answered since the last good one (zero while it answers).
	Since    time.Time
	LastGood time.Time // the latest answer (zero: none yet)
	// LastErr: the latest failed probe's error, if the latest probe failed.
	LastErr  string
	Misses   int    // probes failed in a row
	Episodes uint64 // unresponsive episodes so far, the current one included
	// Lasted: how long the last episode lasted once it ended.
	Lasted time.Duration
}

// Reason says why the QEMU is taken for unresponsive, for a status detail.
func (l qemuLiveness) Reason() string {
	s := "qemu not answering since " + l.Since.UTC().Format("15:04:05")
	if l.LastGood.IsZero() {
		s += " (no probe answered yet)"
	} else {
		s += " (last good probe " + l.LastGood.UTC().Format("15:04:05") + ")"
	}
	if l.LastErr != "" {
		s += ": " + l.LastErr
	}
	return s
}

// qemuWatch decides whether a QEMU answers. It is pure: the caller probes, tells it
// when each probe started and how it ended, and supplies the clock.
//
// A QEMU is unresponsive once the oldest probe not answered since the last answer
// has been out for `after` (however many calls waited for it), or `misses` probes in
// a row failed; it answers again at the next answer.
type qemuWatch struct {
	after  time.Duration
	every  time.Duration
	misses int

	probing   bool      // a probe call is under way
	lastStart time.Time // when the latest probe call started
	cur       qemuLiveness
}

func newQEMUWatch(after time.Duration) *qemuWatch {
	if after <= 0 {
		after = DefaultQEMUUnresponsiveAfter
	}
	return &qemuWatch{after: after, every: qemuProbeEvery, misses: qemuProbeMisses}
}

// due says whether a probe call should start now: none is under way and the
// period since the last one has passed.
func (w *qemuWatch) due(now time.Time) bool {
	return !w.probing && (w.lastStart.IsZero() || !now.Before(w.lastStart.Add(w.every)))
}

// next is when the next probe call is due (now when it is).
func (w *qemuWatch) next(now time.Time) time.Time {
	if w.lastStart.IsZero() {
		return now
	}
	return w.lastStart.Add(w.every)
}

// started notes that a probe call starts now.
func (w *qemuWatch) started(now time.Time) {
	w.probing, w.lastStart = true, now
	if w.cur.Since.IsZero() {
		w.cur.Since = now
	}
}

// observe takes how the probe call ended (calls come in time order) and says what
// it changed.
func (w *qemuWatch) observe(now time.Time, r probeResult, err error) watchChange {
	w.probing = false
	if r == probeAnswered {
		w.cur.LastGood, w.cur.Misses, w.cur.LastErr = now, 0, ""
		since := w.cur.Since
		w.cur.Since = time.Time{}
		if w.cur.Unresponsive {
			w.cur.Unresponsive, w.cur.Lasted = false, max(now.Sub(since), 0)
			return watchAnswers
		}
		return watchSame
	}
	if r == probeFailed {
		w.cur.Misses++
		if err != nil {
			w.cur.LastErr = err.Error()
		}
	}
	if w.cur.Unresponsive {
		return watchSame
	}
	if w.cur.Misses >= w.misses || now.Sub(w.cur.Since) >= w.after {
		w.cur.Unresponsive = true
		w.cur.Episodes++
		return watchUnresponsive
	}
	return watchSame
}

// state is the watch's current view.
func (w *qemuWatch) state() qemuLiveness { return w.cur }

// prober is what the watch asks: qemu.Machine.Probe.
type prober interface {
	Probe(ctx context.Context) error
}

var _ prober = (*qemu.Machine)(nil)

// watchQEMU probes q until ctx ends or the QEMU exits (its exit is the agent's
// other business: the lifecycle hears QEMUExited) and calls report after each
// probe with what it changed (watchSame mostly: the status keeps the last good
// probe's time). clock and sleep are the time source (time.Now and sleepCtx in the
// agent).
func watchQEMU(ctx context.Context, q prober, w *qemuWatch, clock func() time.Time,
	sleep func(context.Context, time.Duration) bool, report func(watchChange, qemuLiveness)) {
	for {
		now := clock()
		if !w.due(now) {
			if !sleep(ctx, w.next(now).Sub(now)) {
				return
			}
			continue
		}
		w.started(now)
		pctx, cancel := context.WithTimeout(ctx, qemuProbeWait)
		err := q.Probe(pctx)
		cancel()
		if ctx.Err() != nil || errors.Is(err, qemu.ErrExited) {
			return
		}
		r := probeAnswered
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			r = probeWaiting
		case err != nil:
			r = probeFailed
		}
		c := w.observe(clock(), r, err)
		report(c, w.state())
	}
}

// sleepCtx waits d or until ctx ends; false when ctx ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// qemuHealth is a VM copy's liveness as its watch last saw it, for status().
type qemuHealth struct {
	mu  sync.Mutex
	cur qemuLiveness
}

func (h *qemuHealth) set(l qemuLiveness) {
	h.mu.Lock()
	h.cur = l
	h.mu.Unlock()
}

// fill puts the liveness in a VM's status (nothing before the first probe).
func (h *qemuHealth) fill(st *control.VMStatus, now time.Time) {
	h.mu.Lock()
	l := h.cur
	h.mu.Unlock()
	st.QEMULastAnswer, st.QEMUUnresponsives = l.LastGood, l.Episodes
	if l.Unresponsive {
		st.QEMUUnresponsive, st.QEMUSince = true, l.Since
		st.QEMUUnresponsiveSec = max(now.Sub(l.Since), 0).Seconds()
		st.QEMUProbeError = l.LastErr
	}
}

// watchVMQEMU runs the liveness watch of one VM copy's QEMU until ctx ends or the
// QEMU exits: it keeps h up to date and, when the QEMU stops answering or answers
// again, logs it, records it in the journal and tells the copy's lifecycle.
func (a *Agent) watchVMQEMU(ctx context.Context, log *slog.Logger, vm, role string, peer func() string,
	q prober, h *qemuHealth, step func(lifecycle.Event) error) {
	w := newQEMUWatch(a.cfg.QEMUUnresponsiveAfter)
	watchQEMU(ctx, q, w, time.Now, sleepCtx, func(c watchChange, l qemuLiveness) {
		// The status changes last: one that shows the change finds it in the journal
		// and the lifecycle too.
		defer h.set(l)
		switch c {
		case watchUnresponsive:
			reason := l.Reason()
			log.Error("qemu not answering: the vm is wedged", "since", l.Since, "last_good", l.LastGood,
				"misses", l.Misses, "err", l.LastErr, "episodes", l.Episodes)
			a.record(journal.Event{Kind: journal.KindQEMUUnresponsive, VM: vm, Role: role, Peer: peer(), Detail: reason})
			_ = step(lifecycle.QEMUUnresponsive(reason))
		case watchAnswers:
			log.Warn("qemu answers again", "lasted", l.Lasted.Round(time.Millisecond), "episodes", l.Episodes)
			a.record(journal.Event{Kind: journal.KindQEMUAnswers, VM: vm, Role: role, Peer: peer(),
				DurationMS: ms(l.Lasted), Detail: "qemu answers again"})
			_ = step(lifecycle.QEMUAnswers())
		}
	})
}
