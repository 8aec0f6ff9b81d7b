package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

// Lockstep under load: while a traffic pattern runs against a protected guest, a
// watch reads both copies' status several times a second and fails the phase as
// soon as the backup stops replaying, the consoles disagree, a copy leaves its
// state, the replaying QEMU emits a frame or the output rule's invariant breaks.

// StallGrace is how long the backup's replayed instruction count may stand still
// before the phase fails as stalled. A live replay advances many times a second
// (the guest's timer alone makes it); the stall of issue 12 froze it for good.
const StallGrace = 3 * time.Second

// StallFollow is how long a stalled phase keeps watching (the traffic stopped)
// to tell a replay stuck for good from one that moves again: the phase fails
// either way, and its error says which.
const StallFollow = 20 * time.Second

// Watch periods: lag is sampled every watchTick, the full check (consoles too)
// runs every watchCheck.
const (
	watchTick  = 250 * time.Millisecond
	watchCheck = time.Second
)

// ErrStalled marks a phase that failed because the replay stood still.
var ErrStalled = errors.New("the backup's replay stalled")

// LoadPhase is one pattern's figures on one protected guest.
type LoadPhase struct {
	Pattern string  `json:"pattern"`
	Seconds float64 `json:"seconds"`
	// LagMS is the primary's LagMS (age of the oldest log position the backup has
	// not replayed), sampled every 250 ms.
	LagMS Dist `json:"lag_ms"`
	Traffic
	ToClientMBs float64 `json:"guest_to_client_MB_s"`
	ToGuestMBs  float64 `json:"client_to_guest_MB_s"`
	// Stalled: the backup's icount stood still for StallGrace. LongestStillS is
	// the longest time it stood still in the phase, stalled or not.
	Stalled       bool    `json:"stalled"`
	LongestStillS float64 `json:"longest_still_s"`
	// PrimaryLongestStillS is the same for the primary's logged icount: a backup
	// standing still while the primary stands still too has nothing to replay.
	PrimaryLongestStillS float64 `json:"primary_longest_still_s"`
	ThrottledS           float64 `json:"throttled_s"` // time the throttle held the primary back
	LogMbitS             float64 `json:"log_mbit_s"`  // rr log written by the primary
	BackupIPS            float64 `json:"backup_instructions_per_s"`
	Error                string  `json:"error,omitempty"`
	// Diagnosis is what the watch saw of both QEMUs' threads when the replay was
	// found standing still (see ThreadStates); empty otherwise.
	Diagnosis string `json:"diagnosis,omitempty"`

	lags []float64 // the samples behind LagMS, for pooling over labs
}

// Line is the phase as one key=value line, for logs and grep.
func (p LoadPhase) Line() string {
	s := fmt.Sprintf("loadphase pattern=%s seconds=%.1f lag_p50_ms=%.1f lag_p99_ms=%.1f lag_max_ms=%.1f lag_samples=%d to_client_bytes=%d to_guest_bytes=%d to_client_MB_s=%.2f to_guest_MB_s=%.2f stalled=%t longest_still_s=%.2f primary_longest_still_s=%.2f throttled_s=%.1f log_mbit_s=%.2f backup_ips=%.0f",
		p.Pattern, p.Seconds, p.LagMS.P50, p.LagMS.P99, p.LagMS.Max, p.LagMS.N, p.ToClientBytes, p.ToGuestBytes, p.ToClientMBs, p.ToGuestMBs, p.Stalled, p.LongestStillS, p.PrimaryLongestStillS, p.ThrottledS, p.LogMbitS, p.BackupIPS)
	for _, kv := range []struct {
		k string
		v int
	}{{"gets", p.Gets}, {"puts", p.Puts}, {"md5s", p.MD5s}, {"connections", p.Connections}, {"pings_sent", p.PingsSent}, {"pings_received", p.PingsReceived}} {
		if kv.v != 0 {
			s += fmt.Sprintf(" %s=%d", kv.k, kv.v)
		}
	}
	if p.Error != "" {
		s += fmt.Sprintf(" error=%q", p.Error)
	}
	return s
}

// JSON is the phase as one JSON line.
func (p LoadPhase) JSON() string {
	b, err := json.Marshal(p)
	if err != nil {
		// A struct of numbers and strings always marshals.
		panic(fmt.Sprintf("marshal load phase: %v", err))
	}
	return string(b)
}

// Copies names one protected VM on the lab: its primary on host A and its
// backup on host B, and their console logs.
type Copies struct {
	VM             string
	PrimaryConsole string
	BackupConsole  string
}

// LabCopies is vm's copies on the lab.
func LabCopies(vm string) Copies {
	return Copies{VM: vm, PrimaryConsole: lab.Console(lab.HostA, vm, "primary"), BackupConsole: lab.Console(lab.HostB, vm, "backup")}
}

// statusFunc reads the status of one copy (lab.Status; a fake in unit tests).
type statusFunc func(ctx context.Context, h lab.Host, vm string) (control.VMStatus, error)

// watch checks lockstep between samples and keeps the phase's lag samples.
type watch struct {
	status statusFunc
	copies Copies
	grace  time.Duration

	first, last control.VMStatus // primary
	firstB      control.VMStatus // backup, at the start
	lastB       control.VMStatus
	started     time.Time
	lastAdvance time.Time
	pAtAdvance  uint64 // the primary's icount when the backup last advanced
	pAdvance    time.Time
	pLongest    time.Duration
	lastCheck   time.Time
	longest     time.Duration
	lags        []float64
}

func newWatch(ctx context.Context, status statusFunc, c Copies, grace time.Duration, now time.Time) (*watch, error) {
	w := &watch{status: status, copies: c, grace: grace, started: now, lastAdvance: now, pAdvance: now}
	p, b, err := w.read(ctx)
	if err != nil {
		return nil, err
	}
	w.pAtAdvance = p.Icount
	w.first, w.last, w.firstB, w.lastB = p, p, b, b
	if err := w.checkStates(p, b); err != nil {
		return nil, err
	}
	return w, nil
}

// read reads the backup first: it can only replay what the primary has logged, so
// a primary read after it has logged at least as much.
func (w *watch) read(ctx context.Context) (p, b control.VMStatus, err error) {
	if b, err = w.status(ctx, lab.HostB, w.copies.VM); err != nil {
		return p, b, fmt.Errorf("backup status: %w", err)
	}
	if p, err = w.status(ctx, lab.HostA, w.copies.VM); err != nil {
		return p, b, fmt.Errorf("primary status: %w", err)
	}
	return p, b, nil
}

// sample reads both copies, records the lag and checks lockstep; the consoles
// are compared once per watchCheck (and when full is set).
func (w *watch) sample(ctx context.Context, now time.Time, full bool) error {
	p, b, err := w.read(ctx)
	if err != nil {
		return err
	}
	w.lags = append(w.lags, p.LagMS)
	prevB, prevP := w.lastB, w.last
	w.last, w.lastB = p, b
	if err := w.checkStates(p, b); err != nil {
		return err
	}
	if b.Icount < prevB.Icount {
		return fmt.Errorf("the backup's icount went back: %d -> %d", prevB.Icount, b.Icount)
	}
	if b.Icount > p.Icount {
		return fmt.Errorf("the backup replayed %d instructions, more than the primary logged (%d)", b.Icount, p.Icount)
	}
	if p.Icount > prevP.Icount {
		w.pAdvance = now
	}
	w.pLongest = max(w.pLongest, now.Sub(w.pAdvance))
	if b.Icount > prevB.Icount {
		w.lastAdvance, w.pAtAdvance = now, p.Icount
	}
	still := now.Sub(w.lastAdvance)
	w.longest = max(w.longest, still)
	if still >= w.grace {
		return fmt.Errorf("%w: its icount stood at %d for %.1f s while the primary logged %d more instructions; %s", ErrStalled, b.Icount, still.Seconds(), p.Icount-w.pAtAdvance, describe(p, b))
	}
	if full || now.Sub(w.lastCheck) >= watchCheck {
		w.lastCheck = now
		if err := ConsolesAgree(w.copies.PrimaryConsole, w.copies.BackupConsole); err != nil {
			return err
		}
	}
	return nil
}

func (w *watch) checkStates(p, b control.VMStatus) error {
	if p.State != "protected" || b.State != "replaying" {
		return fmt.Errorf("a copy left its state: primary %s (%s), backup %s (%s); %s", p.State, p.Detail, b.State, b.Detail, describe(p, b))
	}
	if b.EmittedFrames != 0 {
		return fmt.Errorf("the replaying QEMU emitted %d frames", b.EmittedFrames)
	}
	if p.InvariantFails != 0 || b.InvariantFails != 0 {
		return fmt.Errorf("output rule invariant failed: %d on the primary, %d on the backup", p.InvariantFails, b.InvariantFails)
	}
	return nil
}

// follow watches a stalled replay for up to d more and says whether it moved.
func (w *watch) follow(ctx context.Context, d time.Duration) string {
	stood := w.lastB.Icount
	t0 := time.Now()
	for time.Since(t0) < d {
		select {
		case <-ctx.Done():
			return "not followed: " + ctx.Err().Error()
		case <-time.After(500 * time.Millisecond):
		}
		p, b, err := w.read(ctx)
		if err != nil {
			return fmt.Sprintf("after %.1f s more: %v", time.Since(t0).Seconds(), err)
		}
		if b.Icount != stood || b.State != "replaying" {
			return fmt.Sprintf("it moved again %.1f s later (traffic stopped): backup %s, icount %d; %s", time.Since(t0).Seconds(), b.State, b.Icount, describe(p, b))
		}
		w.last, w.lastB = p, b
	}
	return fmt.Sprintf("%.0f s later (traffic stopped) it still stood: %s", d.Seconds(), describe(w.last, w.lastB))
}

// threads describes both QEMUs' threads (ThreadStates) for a stall's diagnosis.
func (w *watch) threads() string {
	var sb strings.Builder
	for _, c := range []struct {
		role string
		pid  int
	}{{"primary", w.last.PID}, {"backup", w.lastB.PID}} {
		fmt.Fprintf(&sb, "%s qemu (pid %d):\n%s", c.role, c.pid, ThreadStates(c.pid))
	}
	return sb.String()
}

// ThreadStates lists a process's threads from /proc: name, scheduler state, the
// kernel function it waits in, its syscall and the top of its kernel stack. It
// shows whether a stuck replay waits for log (a read on its FIFO), for a lock, or
// spins.
func ThreadStates(pid int) string {
	if pid <= 0 {
		return "  (no pid)\n"
	}
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tids, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Sprintf("  %v\n", err)
	}
	var sb strings.Builder
	for _, t := range tids {
		read := func(f string) string {
			b, err := os.ReadFile(filepath.Join(dir, t.Name(), f))
			if err != nil {
				return "?"
			}
			return strings.TrimSpace(string(b))
		}
		state := "?"
		// stat: "tid (comm) S ...": the state follows the last ')'.
		if st := read("stat"); strings.LastIndex(st, ")") > 0 {
			if f := strings.Fields(st[strings.LastIndex(st, ")")+1:]); len(f) > 0 {
				state = f[0]
			}
		}
		sys := strings.Fields(read("syscall"))
		if len(sys) > 2 {
			sys = sys[:2] // number and first argument (the fd of a read)
		}
		stack := strings.Fields(strings.ReplaceAll(read("stack"), "[<0>]", ""))
		if len(stack) > 4 {
			stack = stack[:4]
		}
		fmt.Fprintf(&sb, "  %s %-16s %s wchan=%s syscall=%s stack=%s\n", t.Name(), read("comm"), state, read("wchan"), strings.Join(sys, ","), strings.Join(stack, "<"))
	}
	return sb.String()
}

// describe is what a failure message says about where the two copies stand.
func describe(p, b control.VMStatus) string {
	return fmt.Sprintf("primary icount %d, backup icount %d, lag %.0f ms (%d bytes), work lag %.0f ms, log written %d / sent %d / acked %d / replayed %d (backup: written %d, replayed %d), held frames %d, throttle quota %.2f",
		p.Icount, b.Icount, p.LagMS, p.LagBytes, p.WorkLagMS, p.LogWritten, p.LogSent, p.LogAcked, p.LogReplayed, b.LogWritten, b.LogReplayed, p.HeldFrames, p.ThrottleQuota)
}

// result fills a phase's figures from the watch's samples.
func (w *watch) result(p *LoadPhase, now time.Time) {
	el := now.Sub(w.started).Seconds()
	p.Seconds = el
	p.lags = w.lags
	p.LagMS = NewDist(w.lags)
	p.LongestStillS = w.longest.Seconds()
	p.PrimaryLongestStillS = w.pLongest.Seconds()
	p.ThrottledS = w.last.ThrottledSec - w.first.ThrottledSec
	if el > 0 {
		p.LogMbitS = mbit(w.last.LogWritten-w.first.LogWritten, now.Sub(w.started))
		p.BackupIPS = float64(w.lastB.Icount-w.firstB.Icount) / el
		p.ToClientMBs = float64(p.ToClientBytes) / (1 << 20) / el
		p.ToGuestMBs = float64(p.ToGuestBytes) / (1 << 20) / el
	}
}

// RunLoadPhase drives pattern against the protected VM for at least d while
// watching lockstep. The phase fails (error; Stalled set when it is a stall) at
// the first broken check, or when the driver fails; its figures are filled in
// either way.
func RunLoadPhase(ctx context.Context, c Copies, pat LoadPattern, t LoadTarget, d time.Duration) (LoadPhase, error) {
	return runLoadPhase(ctx, lab.Status, c, pat, t, d, StallGrace, StallFollow)
}

func runLoadPhase(ctx context.Context, status statusFunc, c Copies, pat LoadPattern, t LoadTarget, d, grace, follow time.Duration) (LoadPhase, error) {
	ph := LoadPhase{Pattern: pat.Name}
	w, err := newWatch(ctx, status, c, grace, time.Now())
	if err != nil {
		return ph, fail(&ph, fmt.Errorf("before %s: %w", pat.Name, err))
	}
	dctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	type result struct {
		tr  Traffic
		err error
	}
	done := make(chan result, 1)
	go func() {
		tr, err := pat.Run(dctx, t, d)
		done <- result{tr, err}
	}()
	tick := time.NewTicker(watchTick)
	defer tick.Stop()
	// A driver finishes its last request after d; one that is still busy long
	// after has hung.
	hung := time.NewTimer(d + opTimeout)
	defer hung.Stop()
	for {
		select {
		case r := <-done:
			ph.Traffic = r.tr
			// One last full check: the phase ends in lockstep or not at all.
			werr := w.sample(ctx, time.Now(), true)
			w.result(&ph, time.Now())
			if werr != nil {
				return ph, fail(&ph, werr)
			}
			if r.err != nil {
				return ph, fail(&ph, fmt.Errorf("%s traffic: %w", pat.Name, r.err))
			}
			return ph, nil
		case now := <-tick.C:
			if werr := w.sample(ctx, now, false); werr != nil {
				if errors.Is(werr, ErrStalled) {
					// Look at the threads while the replay still stands.
					ph.Diagnosis = w.threads()
				}
				stop(werr)
				r := <-done
				ph.Traffic = r.tr
				w.result(&ph, time.Now())
				if errors.Is(werr, ErrStalled) {
					werr = fmt.Errorf("%w; %s", werr, w.follow(ctx, follow))
				}
				return ph, fail(&ph, werr)
			}
		case <-hung.C:
			err := fmt.Errorf("%s traffic still running %s after the phase's %s; %s", pat.Name, opTimeout, d, describe(w.last, w.lastB))
			stop(err)
			r := <-done
			ph.Traffic = r.tr
			w.result(&ph, time.Now())
			return ph, fail(&ph, err)
		case <-ctx.Done():
			stop(context.Cause(ctx))
			<-done
			w.result(&ph, time.Now())
			return ph, fail(&ph, fmt.Errorf("%s: %w", pat.Name, context.Cause(ctx)))
		}
	}
}

func fail(p *LoadPhase, err error) error {
	p.Error = err.Error()
	p.Stalled = p.Stalled || errors.Is(err, ErrStalled)
	return err
}

// ConsolesAgree checks that the backup's console is a prefix of the primary's.
// The backup's is read first: it is behind, so whatever it holds the primary
// printed before.
func ConsolesAgree(pcon, bcon string) error {
	bb, err := os.ReadFile(bcon)
	if err != nil {
		return fmt.Errorf("backup console: %w", err)
	}
	pb, err := os.ReadFile(pcon)
	if err != nil {
		return fmt.Errorf("primary console: %w", err)
	}
	if !bytes.HasPrefix(pb, bb) {
		i := 0
		for i < len(pb) && i < len(bb) && pb[i] == bb[i] {
			i++
		}
		return fmt.Errorf("consoles diverge at byte %d: primary %q, backup %q", i, excerptAt(pb, i), excerptAt(bb, i))
	}
	return nil
}

func excerptAt(b []byte, i int) string {
	return string(b[i:min(len(b), i+60)])
}

// BackupCaughtUp checks that the backup has replayed what the primary had printed
// wait earlier: the primary's console is read, then after wait the backup's must
// begin with it.
func BackupCaughtUp(ctx context.Context, pcon, bcon string, wait time.Duration) error {
	pb, err := os.ReadFile(pcon)
	if err != nil {
		return fmt.Errorf("primary console: %w", err)
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(wait):
	}
	bb, err := os.ReadFile(bcon)
	if err != nil {
		return fmt.Errorf("backup console: %w", err)
	}
	if !bytes.HasPrefix(bb, pb) {
		last := strings.TrimSpace(string(bb[max(0, len(bb)-80):]))
		return fmt.Errorf("the backup's console (%d bytes, ends %q) does not hold the primary's console of %s earlier (%d bytes)", len(bb), last, wait, len(pb))
	}
	return nil
}
