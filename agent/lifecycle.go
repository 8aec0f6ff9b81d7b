package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ftvmd/ftvmd/arbiter"
	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/journal"
	"github.com/ftvmd/ftvmd/lifecycle"
)

// lifeTick is the lifecycle machine's unit of time: the arbiter retries a failed
// failover claim after 10 ticks, a planned failover waits 300 for the backup
// (lifecycle.DefaultHandoverTicks: 30 s).
const lifeTick = 100 * time.Millisecond

// Claim deadlines: a failover's claim is retried by the arbiter, an operator's is
// answered once.
const (
	failoverClaimTimeout = 5 * time.Second
	operatorClaimTimeout = 10 * time.Second
	readClaimTimeout     = 10 * time.Second
)

// driver runs one copy's lifecycle machine (package lifecycle, pure): it steps
// events under one lock and carries out the actions the machine asks for, in order,
// under the same lock, so that two goroutines stepping at once cannot carry out
// their actions out of order (a HaltOutput overtaken by a ReleaseOutput). exec must
// therefore neither block nor step: an action that takes time (a claim, a pause,
// go-live) runs in a goroutine the driver owns (spawn) and steps its result back.
type driver struct {
	vm    string
	host  string
	store disk.EpochStore // nil without shared storage
	log   *slog.Logger
	exec  func(lifecycle.Action) // carries out every action but claims, claim reads and replies
	// role is the copy's role for the journal; record journals an event (claims
	// here, state changes through notify); notify hears each change of state, after
	// its actions were carried out. nil record and notify do nothing.
	role   string
	record func(journal.Event)
	notify func(prev, cur lifecycle.Status)
	// tick is the machine's unit of time (lifeTick); claimTimeout and opTimeout bound
	// a failover's claim and an operator's (a test shortens them).
	tick, claimTimeout, opTimeout time.Duration

	ctx    context.Context // ends with close: the spawned goroutines' lifetime
	cancel context.CancelFunc
	wg     sync.WaitGroup
	spMu   sync.Mutex // guards closed, and orders spawns before close's wait
	closed bool

	mu      sync.Mutex // guards m, replies, ticking
	m       *lifecycle.Machine
	replies map[lifecycle.Op]chan error
	ticking bool

	stMu      sync.Mutex
	status    lifecycle.Status
	claimedAt time.Time // when the first failover claim started (its duration in status)
}

func newDriver(a *Agent, role arbiter.Role, vm string, liveEpoch uint64, log *slog.Logger, exec func(lifecycle.Action)) (*driver, error) {
	return newDriverWith(a, lifecycle.Config{Role: role, VM: vm, LiveEpoch: liveEpoch}, log, exec)
}

// newDriverWith is newDriver with the machine's config (its Host and Logger are
// the agent's).
func newDriverWith(a *Agent, cfg lifecycle.Config, log *slog.Logger, exec func(lifecycle.Action)) (*driver, error) {
	cfg.Host, cfg.Logger = a.cfg.Host, log
	role, vm := cfg.Role, cfg.VM
	m, err := lifecycle.New(cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	d := &driver{vm: vm, host: a.cfg.Host, store: a.store, log: log, exec: exec, ctx: ctx, cancel: cancel,
		role: role.String(), record: a.record,
		tick: lifeTick, claimTimeout: failoverClaimTimeout, opTimeout: operatorClaimTimeout,
		m: m, replies: map[lifecycle.Op]chan error{}, status: m.Status()}
	return d, nil
}

// step feeds one event and carries out what the machine decides. Its error says
// the event was ignored (see lifecycle.Machine.Step).
func (d *driver) step(ev lifecycle.Event) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stepLocked(ev)
}

func (d *driver) stepLocked(ev lifecycle.Event) error {
	err := d.m.Step(ev)
	if err != nil && ev.Type != lifecycle.EventUnprotect && ev.Type != lifecycle.EventHandover {
		// (A refused operator request is the requester's answer, not news.)
		lvl := slog.LevelWarn
		if errors.Is(err, lifecycle.ErrStaleClaim) || errors.Is(err, lifecycle.ErrUnexpected) {
			lvl = slog.LevelDebug // late results of what was called off
		}
		d.log.Log(d.ctx, lvl, "lifecycle event ignored", "event", ev.Type.String(), "err", err)
	}
	rd := d.m.Ready()
	d.m.Advance()
	var replies []lifecycle.Action
	for _, a := range rd.Actions {
		switch a.Type {
		case lifecycle.ActionClaimEpoch:
			d.claim(a)
		case lifecycle.ActionReadClaim:
			d.readClaim()
		case lifecycle.ActionReply:
			replies = append(replies, a)
		default:
			d.exec(a)
		}
	}
	// Status shows the new state once its actions are carried out (a copy shown
	// unprotected has released its output, one shown halted has halted it), and the
	// operator hears back after that.
	d.stMu.Lock()
	prev := d.status
	d.status = rd.Status
	d.stMu.Unlock()
	if prev.State != rd.Status.State && d.notify != nil {
		d.notify(prev, rd.Status)
	}
	for _, a := range replies {
		if ch, ok := d.replies[a.Op]; ok {
			ch <- a.Err // buffered: the waiter may have gone
			delete(d.replies, a.Op)
		}
	}
	return err
}

// start steps Started and begins the ticks.
func (d *driver) start(epoch uint64, peer string, shared bool) error {
	return d.startWith(lifecycle.Started(epoch, peer, shared))
}

// startPrimary starts a primary protected by the backup peer (its host name)
// whose agent is at addr, or alone (peer "").
func (d *driver) startPrimary(epoch uint64, peer, addr string, shared bool) error {
	if peer == "" {
		addr = ""
	}
	return d.startWith(lifecycle.StartedWith(epoch, peer, addr, shared))
}

// startSyncing starts a backup from a running VM's snapshot: it protects
// nothing until its primary says it is synced.
func (d *driver) startSyncing(peer string) error {
	return d.startWith(lifecycle.StartedSyncing(peer))
}

func (d *driver) startWith(ev lifecycle.Event) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.stepLocked(ev); err != nil {
		return err
	}
	if !d.ticking {
		d.ticking = true
		d.spawn(func(ctx context.Context) {
			t := time.NewTicker(d.tick)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
					_ = d.step(lifecycle.Tick())
				}
			}
		})
	}
	return nil
}

// request steps an operator's request and waits for the machine's answer. If ctx
// ends first the request is called off where it still can be (Abort) and its
// answer awaited a little longer: every step it waits for has its own deadline.
func (d *driver) request(ctx context.Context, op lifecycle.Op, ev lifecycle.Event) error {
	ch := make(chan error, 1)
	d.mu.Lock()
	if _, busy := d.replies[op]; busy {
		d.mu.Unlock()
		return fmt.Errorf("vm %s: %w", d.vm, lifecycle.ErrBusy)
	}
	d.replies[op] = ch
	if err := d.stepLocked(ev); err != nil {
		delete(d.replies, op)
		d.mu.Unlock()
		return err
	}
	d.mu.Unlock()
	select {
	case err := <-ch:
		return err
	case <-ctx.Done():
	}
	_ = d.step(lifecycle.Abort(ctx.Err()))
	select {
	case err := <-ch:
		return err
	case <-time.After(d.opTimeout + time.Second):
		return fmt.Errorf("vm %s: %w; the request goes on", d.vm, ctx.Err())
	}
}

// spawn runs fn in a goroutine the driver owns; close cancels its ctx and waits.
// After close nothing is spawned: the copy is torn down, and what fn would do (a
// claim, a resume) has nothing left to act on.
func (d *driver) spawn(fn func(ctx context.Context)) {
	d.spMu.Lock()
	defer d.spMu.Unlock()
	if d.closed {
		d.log.Debug("lifecycle: nothing started after teardown")
		return
	}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		fn(d.ctx)
	}()
}

// close ends the driver's goroutines and waits for them. Claims they abandon decide
// nothing (the machine is stopping by then).
func (d *driver) close() {
	d.spMu.Lock()
	d.closed = true
	d.spMu.Unlock()
	d.cancel()
	d.wg.Wait()
}

// state is the machine's latest status.
func (d *driver) state() lifecycle.Status {
	d.stMu.Lock()
	defer d.stMu.Unlock()
	return d.status
}

// sinceClaim is how long ago the first failover claim started (0 if none did).
func (d *driver) sinceClaim() time.Duration {
	d.stMu.Lock()
	defer d.stMu.Unlock()
	if d.claimedAt.IsZero() {
		return 0
	}
	return time.Since(d.claimedAt)
}

// claim carries out a ClaimEpoch on shared storage and steps its result.
func (d *driver) claim(a lifecycle.Action) {
	if d.store == nil {
		d.log.Error("lifecycle asked for an epoch claim without shared storage", "claim", a.String())
		return
	}
	timeout := d.claimTimeout
	if a.Op != 0 {
		timeout = d.opTimeout
	}
	if a.Op == 0 {
		d.log.Warn("peer lost: claiming epoch", "epoch", a.Seen+1)
		d.stMu.Lock()
		if d.claimedAt.IsZero() {
			d.claimedAt = time.Now()
		}
		d.stMu.Unlock()
	}
	d.spawn(func(ctx context.Context) {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		t0 := time.Now()
		c, err := d.store.ClaimNext(cctx, d.vm, a.Seen, a.Owner, a.Reason)
		took := time.Since(t0)
		cancel()
		ev := claimEvent(a.Claim, c, err)
		if ev.Type == lifecycle.EventClaimFailed && ctx.Err() == nil {
			d.log.Error("epoch claim failed; output stays held", "epoch", a.Seen+1, "for", a.Owner, "err", err)
		}
		d.journalClaim(a, c, err, took)
		_ = d.step(ev)
	})
}

// journalClaim records a claim's outcome in the agent's journal.
func (d *driver) journalClaim(a lifecycle.Action, c disk.Claim, err error, took time.Duration) {
	if d.record == nil {
		return
	}
	why := a.Reason
	switch a.Op {
	case lifecycle.OpUnprotect:
		why = "unprotect"
	case lifecycle.OpHandover:
		why = "planned failover: for " + a.Owner
	}
	e := journal.Event{Kind: journal.KindClaim, VM: d.vm, Role: d.role, Epoch: c.Epoch, Result: journal.ClaimWon,
		DurationMS: ms(took), Detail: why}
	switch {
	case errors.Is(err, disk.ErrLost):
		e.Result, e.Peer = journal.ClaimLost, c.Owner
		e.Detail = fmt.Sprintf("%s: epoch %d is %s's", why, c.Epoch, winnerOrUnknown(c))
	case err != nil:
		e.Result, e.Epoch = journal.ClaimFailed, a.Seen+1
		e.Detail = fmt.Sprintf("%s: %v", why, err)
	}
	d.record(e)
}

func winnerOrUnknown(c disk.Claim) string {
	if c.Corrupt || c.Owner == "" {
		return "an unknown owner"
	}
	return c.Owner
}

// readClaim carries out a ReadClaim and steps its result.
func (d *driver) readClaim() {
	d.spawn(func(ctx context.Context) {
		if d.store == nil {
			_ = d.step(lifecycle.ClaimRead(0, "", false, errors.New("no shared storage")))
			return
		}
		cctx, cancel := context.WithTimeout(ctx, readClaimTimeout)
		c, err := d.store.Current(cctx, d.vm)
		cancel()
		_ = d.step(lifecycle.ClaimRead(c.Epoch, c.Owner, c.Corrupt, err))
	})
}

// claimEvent turns ClaimNext's answer into the machine's event.
func claimEvent(id uint64, c disk.Claim, err error) lifecycle.Event {
	switch {
	case err == nil:
		return lifecycle.ClaimWon(id, c.Epoch)
	case errors.Is(err, disk.ErrLost):
		owner := c.Owner
		if c.Corrupt {
			owner = ""
		}
		return lifecycle.ClaimLost(id, c.Epoch, owner)
	default:
		return lifecycle.ClaimFailed(id, err)
	}
}
