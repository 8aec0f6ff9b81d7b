package netbuf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvmd/ftvmd/netbuf/nfq"
	"github.com/ftvmd/ftvmd/outputrule"
)

// HoldQueue is the kernel side of a Hold: nfq.Conn, or a fake in tests.
type HoldQueue interface {
	Read(dst []nfq.Message) ([]nfq.Message, error)
	SetReadDeadline(time.Time) error
	Release(id uint32) error
	Drop(id uint32) error
	DropOne(id uint32) error
}

// HoldConfig configures a Hold.
type HoldConfig struct {
	// Queue holds the guest's frames; the Hold reads their ids from it and
	// gives verdicts. The caller owns it (closes it after Run returns).
	Queue HoldQueue
	// Stamp returns the current rr log size. It is called once per read
	// batch, after the batch was read: QEMU flushed the log before it wrote
	// each of those frames to its tap, so the size covers them all.
	Stamp func() (int64, error)
	// Rule is the output rule; the Hold takes it over. Each held frame is one
	// of the rule's frames, with no data and the queue id as its Tag. Nil
	// means a protected rule sized for the queue.
	Rule *outputrule.Rule
	// Bypass, if set, is called once when the rule turns unprotected: it
	// stops frames from being queued at all (removes the queue rules), so an
	// unprotected VM's frames no longer cross into the agent.
	Bypass func() error
	// Engage, if set, undoes Bypass: it makes frames enter the queue again
	// (installs the queue rules). Protect calls it when frames bypass the
	// queue, so that a VM that runs unprotected can be protected again.
	Engage func() error
	// Bypassed says frames bypass the queue from the start (the rules are not
	// installed: the VM runs unprotected); Rule must then be Unprotected.
	Bypassed bool
	// CheckInvariant runs outputrule.CheckRelease on every frame before its
	// release; a violating frame is dropped, counted and logged.
	CheckInvariant bool
	Logger         *slog.Logger
	Now            func() time.Time
}

// HoldRuleConfig sizes an output rule for a queue of maxLen frames: the kernel
// bounds the frames, and a GSO frame may be 64 KiB.
func HoldRuleConfig(maxLen int) outputrule.Config {
	return outputrule.Config{MaxHeldFrames: maxLen, MaxHeldBytes: int64(maxLen) * (64 << 10)}
}

func (c *HoldConfig) validate() error {
	switch {
	case c.Queue == nil:
		return fmt.Errorf("%w: Queue is nil", ErrConfig)
	case c.Stamp == nil:
		return fmt.Errorf("%w: Stamp is nil", ErrConfig)
	case c.Bypassed && (c.Rule == nil || c.Rule.Mode() != outputrule.Unprotected):
		// Frames that bypass the queue cannot be held: the rule would hold
		// nothing of what leaves.
		return fmt.Errorf("%w: Bypassed needs an Unprotected rule", ErrConfig)
	}
	if c.Rule == nil {
		c.Rule = outputrule.New(HoldRuleConfig(nfq.DefaultMaxLen), outputrule.Protected)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Hold enforces the output rule on frames the kernel holds in a queue: it
// stamps each frame's id with the log size, and releases the frames, in order
// and with one verdict per batch, once the backup's ack passes their stamp.
// The frames themselves never enter the agent. Ack, Sent, SetMode and Stats
// are safe for concurrent use; Run once.
type Hold struct {
	cfg HoldConfig
	log *slog.Logger

	// engMu orders the changes of whether frames are queued (Bypass, Engage)
	// with the mode changes they go with: a Protect and an Unprotected never
	// interleave. Taken before mu.
	engMu sync.Mutex
	// mu guards rule, and is held across every verdict that releases frames:
	// once SetMode(Halted) returns, no release verdict is sent.
	mu       sync.Mutex
	rule     *outputrule.Rule
	lastID   uint32 // highest id read
	anyID    bool
	bypassed bool

	kick    chan struct{}
	started atomic.Bool
	c       counters
	vErrs   atomic.Uint64 // verdicts that failed or the kernel refused
}

// NewHold validates cfg. Call Run.
func NewHold(cfg HoldConfig) (*Hold, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	return &Hold{cfg: cfg, log: cfg.Logger, rule: cfg.Rule, bypassed: cfg.Bypassed, kick: make(chan struct{}, 1)}, nil
}

// Ack records the backup's ack of the log up to off.
func (h *Hold) Ack(off int64) {
	h.mu.Lock()
	err := h.rule.Ack(off, h.cfg.Now())
	more := h.rule.HasReady()
	h.mu.Unlock()
	if err != nil {
		h.log.Warn("netbuf: ack ignored", "off", off, "err", err)
	}
	if more {
		notify(h.kick)
	}
}

// Sent records the highest log offset sent to the backup.
func (h *Hold) Sent(off int64) {
	h.mu.Lock()
	h.rule.Sent(off)
	h.mu.Unlock()
}

// SetMode switches the output rule's mode. Halted drops every frame the
// kernel holds and every later one; Unprotected releases them and calls
// Bypass so that later frames are not queued. Protected is Protect, whose
// error is logged: call Protect to hear it.
func (h *Hold) SetMode(m outputrule.Mode) {
	if m == outputrule.Protected {
		if err := h.Protect(); err != nil {
			h.log.Error("netbuf: output not held", "err", err)
		}
		return
	}
	if m == outputrule.Unprotected {
		h.engMu.Lock()
		defer h.engMu.Unlock()
	}
	h.mu.Lock()
	h.rule.SetMode(m, h.cfg.Now())
	mode := h.rule.Mode()
	if mode == outputrule.Halted && h.anyID {
		// The rule forgot its frames; the kernel must forget them too.
		h.verdictLocked(h.cfg.Queue.Drop, h.lastID)
	}
	bypass := mode == outputrule.Unprotected && !h.bypassed && h.cfg.Bypass != nil
	if bypass {
		h.bypassed = true
	}
	h.mu.Unlock()
	h.log.Info("netbuf: output mode", "mode", mode)
	notify(h.kick)
	if bypass {
		if err := h.cfg.Bypass(); err != nil {
			// Frames keep coming through the queue and are released at once.
			h.log.Warn("netbuf: frames still queued while unprotected", "err", err)
		}
	}
}

// ErrNotHeld: Protect could not make the guest's frames wait in the queue.
var ErrNotHeld = errors.New("netbuf: cannot hold the guest's frames")

// Protect makes the Hold hold output from now on: the rule turns Protected
// and, if frames bypass the queue (the Hold started Bypassed, or Bypass ran
// when it turned Unprotected), Engage makes them enter it again. Once Protect
// returns nil, every frame that reaches the queue's hook is held until the ack
// passes its stamp, and every frame that passed the hook unheld did so before
// Protect returned: a log size read after it covers all of those (QEMU
// flushes the log before it writes a frame). On an error nothing changed:
// frames bypass the queue and the rule stays Unprotected. A Halted Hold is
// never protected again.
func (h *Hold) Protect() error {
	h.engMu.Lock()
	defer h.engMu.Unlock()
	h.mu.Lock()
	prev, bypassed := h.rule.Mode(), h.bypassed
	if prev == outputrule.Halted {
		h.mu.Unlock()
		return fmt.Errorf("%w: output is halted", ErrNotHeld)
	}
	if bypassed && h.cfg.Engage == nil {
		h.mu.Unlock()
		return fmt.Errorf("%w: frames bypass the queue and nothing can engage it", ErrNotHeld)
	}
	// Protected before the frames can enter the queue: none that enters it is
	// released unacknowledged.
	h.rule.SetMode(outputrule.Protected, h.cfg.Now())
	h.mu.Unlock()
	if bypassed {
		if err := h.cfg.Engage(); err != nil {
			h.mu.Lock()
			h.rule.SetMode(prev, h.cfg.Now())
			h.mu.Unlock()
			notify(h.kick)
			return fmt.Errorf("%w: %w", ErrNotHeld, err)
		}
		h.mu.Lock()
		h.bypassed = false
		h.mu.Unlock()
	}
	h.mu.Lock()
	mode := h.rule.Mode()
	h.mu.Unlock()
	if mode != outputrule.Protected {
		// Halted meanwhile: what enters the queue is dropped, never released.
		return fmt.Errorf("%w: output was halted", ErrNotHeld)
	}
	h.log.Info("netbuf: output mode", "mode", mode, "engaged", bypassed)
	return nil
}

// verdictLocked sends one verdict (with h.mu held) and counts a failure.
func (h *Hold) verdictLocked(fn func(uint32) error, id uint32) bool {
	if err := fn(id); err != nil {
		h.vErrs.Add(1)
		h.log.Warn("netbuf: verdict failed", "id", id, "err", err)
		return false
	}
	return true
}

// Stats are the relay's counters with the Hold's meaning: GuestFrames and
// GuestBytes count frames queued, TapFrames and TapBytes frames released;
// the network->guest fields stay 0 (those frames bypass the agent).
// StampErrors and Truncated count frames dropped unstamped or untracked;
// TapWriteErrors counts refused verdicts.
func (h *Hold) Stats() RelayStats {
	h.mu.Lock()
	rs := h.rule.Stats()
	h.mu.Unlock()
	c := &h.c
	return RelayStats{
		Rule:           rs,
		GuestFrames:    c.guestFrames.Load(),
		GuestBytes:     c.guestBytes.Load(),
		TapFrames:      c.tapFrames.Load(),
		TapBytes:       c.tapBytes.Load(),
		StampErrors:    c.stampErrs.Load(),
		Truncated:      c.truncated.Load(),
		TapWriteErrors: h.vErrs.Load(),
		Invariant:      c.invariant.Load(),
	}
}

// Run reads the queue and releases frames until ctx is done or the queue
// fails; it returns nil when stopped by ctx. It owns two goroutines: the
// reader and the releaser.
func (h *Hold) Run(ctx context.Context) error {
	if !h.started.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() {
		if err := h.readLoop(ctx); err != nil && ctx.Err() == nil {
			errs <- fmt.Errorf("netbuf: queue reader: %w", err)
		}
		cancel()
	})
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-h.kick:
			}
			h.release()
		}
	})
	wg.Go(func() {
		<-ctx.Done()
		_ = h.cfg.Queue.SetReadDeadline(time.Unix(1, 0))
	})
	wg.Wait()
	close(errs)
	err := <-errs
	if err != nil {
		h.log.Error("netbuf: hold stopped", "err", err)
	}
	return err
}

func (h *Hold) readLoop(ctx context.Context) error {
	var msgs []nfq.Message
	for {
		var err error
		msgs, err = h.cfg.Queue.Read(msgs[:0])
		h.take(msgs)
		if err != nil {
			if ctx.Err() != nil {
				return nil // the deadline Run set to stop the read
			}
			return err
		}
	}
}

// take stamps one batch of queued frames and hands them to the rule.
func (h *Hold) take(msgs []nfq.Message) {
	n := 0
	for _, m := range msgs {
		switch {
		case m.Kind == nfq.KindPacket:
			n++
		case m.Kind == nfq.KindAck && m.Errno != 0:
			h.vErrs.Add(1)
			h.log.Warn("netbuf: the kernel refused a verdict", "seq", m.Seq, "err", m.Errno)
		}
	}
	if n == 0 {
		return
	}
	// One stamp for the batch, read after the whole batch was: see Stamp.
	stamp, serr := h.cfg.Stamp()
	if serr == nil && stamp < 0 {
		serr = fmt.Errorf("negative log size %d", stamp)
	}
	now := h.cfg.Now()
	h.mu.Lock()
	for _, m := range msgs {
		if m.Kind != nfq.KindPacket {
			continue
		}
		p := m.Packet
		h.lastID, h.anyID = p.ID, true
		h.c.guestFrames.Add(1)
		h.c.guestBytes.Add(uint64(p.Len))
		if serr != nil {
			// Without a stamp the frame can never be proven safe: drop it.
			h.c.stampErrs.Add(1)
			h.verdictLocked(h.cfg.Queue.DropOne, p.ID)
			continue
		}
		err := h.rule.Frame(outputrule.Frame{Stamp: stamp, Size: max(p.Len, 1), ArrivedAt: now, Tag: uint64(p.ID)}, now)
		switch {
		case err == nil:
		case errors.Is(err, outputrule.ErrHalted):
			// The rule counted it (DroppedFrames); the kernel forgets it.
			h.verdictLocked(h.cfg.Queue.DropOne, p.ID)
		default:
			// Full (the kernel's bound is the rule's, so only a queue
			// configured longer than the rule gets here): a frame the rule
			// does not track must never be released.
			h.c.truncated.Add(1)
			h.verdictLocked(h.cfg.Queue.DropOne, p.ID)
			h.log.Warn("netbuf: queued frame dropped", "id", p.ID, "err", err)
		}
	}
	more := h.rule.HasReady()
	h.mu.Unlock()
	if serr != nil {
		h.log.Error("netbuf: queued frames dropped", "err", fmt.Errorf("%w: %w", ErrStamp, serr))
	}
	if more {
		notify(h.kick)
	}
}

// release gives the kernel one batch verdict for the frames the rule
// releases. Only the release goroutine calls it.
func (h *Hold) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	rd := h.rule.Ready()
	if len(rd.Release) == 0 || h.rule.Mode() == outputrule.Halted {
		return
	}
	// The frames are in id order; accept the longest prefix that passes the
	// check in one verdict, drop a frame that fails it on its own.
	var okID uint32
	var okFrames, okBytes uint64
	have := false
	flush := func() {
		if have && h.verdictLocked(h.cfg.Queue.Release, okID) {
			h.c.tapFrames.Add(okFrames)
			h.c.tapBytes.Add(okBytes)
		}
		have, okFrames, okBytes = false, 0, 0
	}
	for i := range rd.Release {
		f := &rd.Release[i]
		if h.cfg.CheckInvariant {
			if err := h.rule.CheckRelease(*f); err != nil {
				flush()
				h.c.invariant.Add(1)
				h.log.Error("netbuf: frame dropped", "err", fmt.Errorf("%w: %w", ErrInvariant, err))
				h.verdictLocked(h.cfg.Queue.DropOne, uint32(f.Tag))
				continue
			}
		}
		okID, have = uint32(f.Tag), true
		okFrames++
		okBytes += uint64(f.Size)
	}
	flush()
	h.rule.Advance()
}
