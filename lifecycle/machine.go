package lifecycle

import (
	"errors"
	"fmt"
	"log/slog"

	"github.com/ftvmd/ftvmd/arbiter"
)

// claimPurpose is what a claim in flight is for.
type claimPurpose int

const (
	claimFailover  claimPurpose = iota + 1 // the arbiter's, after a lost peer
	claimUnprotect                         // the operator's unprotect
	claimHandover                          // a planned failover, for the backup
)

// handStage is where a planned failover stands.
type handStage int

const (
	handPausing  handStage = iota + 1 // PauseGuest sent
	handDraining                      // paused; AwaitDrain sent, ticks counted
	handClaiming                      // output halted; the claim for the backup sent
)

// Machine is the lifecycle of one copy. Create it with New.
type Machine struct {
	cfg    Config
	log    *slog.Logger
	state  State
	detail string
	epoch  uint64
	peer   string // the other copy's host name
	arb    *arbiter.Arbiter

	claimID  uint64 // the claim in flight; 0 when none
	claimFor claimPurpose
	nextID   uint64

	shutdownReason  string
	reading         bool  // backup: ReadClaim in flight after a Bye
	byeErr          error // backup: how the channel ended, for the detail
	lostPeer        bool  // primary: the backup was lost while an unprotect claimed
	unprotectReason string
	lostWhy         string // how the peer was lost ("backup stepped down (...)"), for the details after

	// syncing: (backup) set up from a snapshot of a running VM and not yet
	// told it protects it (Synced): a lost primary is not claimed.
	syncing bool
	// Automatic re-protection (primary): auto is on once the copy runs alone
	// after a failover or a lost backup (until the operator unprotects);
	// autoPeer is the lost peer's agent address ("" when unknown), spares the
	// other hosts named for the VM. Each round of probes asks the spares in
	// order, then autoPeer (candidates), one per tick, and protects with the
	// first usable one; rounds start probeWait ticks apart, the first at the
	// tick after the copy began to run alone. probeIdx is the next candidate,
	// probed the one the probe in flight asks, inRound whether the round goes on
	// at the next tick.
	auto     bool
	autoPeer string
	spares   []string
	probeIdx int
	probed   string
	inRound  bool
	peerAddr string // the backup's agent address while protected
	// peerDown: a probe found autoPeer's agent down since the failover, or the
	// divergence sentinel stepped that backup down (reprotectAfterStepDown).
	// Re-protection waits for it: an agent that stayed up saw its own copy fail
	// (a QEMU crash, a full disk) or handed the VM over, and protecting with it
	// again is the operator's call; one whose replay the sentinel found diverged
	// or stalled discarded a copy that was no protection, and a fresh one is.
	peerDown  bool
	probing   bool
	sinceProb int
	probeWait int
	// lostSentinel: the backup just lost was stepped down by the sentinel;
	// stepDowns counts such step-downs in a row (the re-protection backoff),
	// protTicks the ticks protected since, which reset it at MaxProbeTicks.
	lostSentinel bool
	stepDowns    int
	protTicks    int

	stage  handStage
	waited int // ticks spent waiting for the pause, then for the drain
	// shuttingDown: the agent is going away; a handover under way ends in a
	// teardown whatever its outcome (see EventShutdown).
	shuttingDown bool

	req     Op // the operator request waiting for its Reply; 0 when none
	stalled bool
	// qemuStuck: why the copy's QEMU does not answer ("" while it does); see
	// EventQEMUUnresponsive.
	qemuStuck string
	tornDown  bool // Teardown emitted

	actions []Action
	changed bool
}

// New returns a Machine in Starting, or an error wrapping ErrInvalidConfig.
func New(cfg Config) (*Machine, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	m := &Machine{
		cfg:       cfg,
		log:       cfg.Logger.With("role", cfg.Role.String(), "host", cfg.Host),
		state:     Starting,
		epoch:     cfg.LiveEpoch,
		spares:    uniqueSpares(cfg),
		probeWait: cfg.ProbeTicks,
	}
	if cfg.LiveEpoch > 0 {
		// Re-protection is for a copy that went live after a failover; a
		// primary that outlives its backup gets it when it wins its claim.
		m.startReprotect(cfg.Reprotect)
	}
	return m, nil
}

// uniqueSpares returns cfg.Spares without blanks and repeats.
func uniqueSpares(cfg Config) []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range cfg.Spares {
		if s != "" && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

// State returns the current state.
func (m *Machine) State() State { return m.state }

// Status returns what ftvmd status shows.
func (m *Machine) Status() Status {
	detail := m.detail
	if m.reprotectHeld() {
		detail = joinDetail(detail, "re-protection waits: "+m.qemuStuck)
	}
	return Status{State: m.state, Detail: detail, Epoch: m.epoch, Stalled: m.stalled, QEMUStuck: m.qemuStuck}
}

// reprotectHeld: an unprotected primary that re-protects itself starts no attempt
// while its QEMU does not answer.
func (m *Machine) reprotectHeld() bool {
	return m.qemuStuck != "" && m.primary() && m.state == Unprotected && m.auto
}

func joinDetail(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// HasReady reports whether Ready has actions or a changed status.
func (m *Machine) HasReady() bool { return len(m.actions) > 0 || m.changed }

// Ready returns the status and the actions produced since the last Advance.
// Calling it again without Advance returns the same.
func (m *Machine) Ready() Ready {
	return Ready{Status: m.Status(), Changed: m.changed, Actions: append([]Action(nil), m.actions...)}
}

// Advance acknowledges what Ready returned.
func (m *Machine) Advance() {
	m.actions = nil
	m.changed = false
}

func (m *Machine) primary() bool { return m.cfg.Role == arbiter.RolePrimary }

// ended: no decision is left but a teardown.
func (m *Machine) ended() bool { return m.state.Terminal() || m.state == Stopping }

func (m *Machine) emit(a Action) { m.actions = append(m.actions, a) }

func (m *Machine) become(s State, detail string) {
	if s == m.state && detail == m.detail {
		return
	}
	from := m.state
	m.state, m.detail, m.changed = s, detail, true
	if from == s {
		return
	}
	args := []any{"from", from.String(), "to", s.String(), "detail", detail, "epoch", m.epoch}
	switch s {
	case Failed, Halted:
		m.log.Error("lifecycle", args...)
	case Degraded, Claiming, Unprotecting, HandingOver, GoingLive, Live, HandedOver:
		m.log.Warn("lifecycle", args...)
	default:
		m.log.Info("lifecycle", args...)
	}
}

// Step feeds one event. An error means the event was ignored and the copy is
// as it was; it never means the copy may run or release output.
func (m *Machine) Step(ev Event) error {
	err := m.step(ev)
	if m.shuttingDown && m.state.Terminal() {
		// The agent is going away: a handover that ended (handed over, halted)
		// is followed by the teardown at once.
		m.teardown()
	}
	return err
}

func (m *Machine) step(ev Event) error {
	if _, ok := eventNames[ev.Type]; !ok {
		return fmt.Errorf("%w: %d", ErrUnknownEvent, int(ev.Type))
	}
	// Rules shared by every state and role.
	switch {
	case ev.Type.isClaimResult():
		if m.claimID == 0 || ev.Claim != m.claimID {
			return fmt.Errorf("lifecycle: %v #%d in state %v (in flight: #%d): %w", ev.Type, ev.Claim, m.state, m.claimID, ErrStaleClaim)
		}
		purpose := m.claimFor
		m.claimID, m.claimFor = 0, 0
		if m.ended() {
			return nil // a claim abandoned by a stop or a failure decides nothing
		}
		return m.claimResult(purpose, ev)
	case ev.Type == EventClaimRead:
		if !m.reading {
			return fmt.Errorf("lifecycle: %v in state %v: %w", ev.Type, m.state, ErrUnexpected)
		}
		m.reading = false
		if m.ended() {
			return nil
		}
		return m.claimRead(ev)
	}
	switch ev.Type {
	case EventStallEntered, EventStallCleared:
		if s := ev.Type == EventStallEntered; s != m.stalled {
			m.stalled, m.changed = s, true
		}
		return nil
	case EventQEMUUnresponsive, EventQEMUAnswers:
		stuck := ""
		if ev.Type == EventQEMUUnresponsive {
			stuck = ev.Reason
			if stuck == "" {
				stuck = "qemu not answering"
			}
		}
		if stuck != m.qemuStuck {
			m.qemuStuck, m.changed = stuck, true
		}
		return nil
	case EventStop:
		m.stop(ev.Reason)
		return nil
	case EventShutdown:
		return m.shutdown(ev.Reason)
	case EventTeardownDone:
		if !m.state.Terminal() {
			m.become(Stopped, m.detail)
		}
		return nil
	case EventGuestPaused:
		if !m.primary() {
			return fmt.Errorf("lifecycle: %v on a backup: %w", ev.Type, ErrUnexpected)
		}
		if m.state != HandingOver || m.stage != handPausing {
			// A pause that completed after its planned failover was called off:
			// the guest must not stay paused.
			m.emit(Action{Type: ActionResumeGuest, Reason: "the planned failover was called off"})
			return nil
		}
	}
	if m.ended() {
		switch ev.Type {
		case EventUnprotect, EventHandover:
			return m.refuse()
		case EventProtect:
			return fmt.Errorf("vm %s is %v: %w", m.cfg.VM, m.state, ErrNotUnprotected)
		case EventDrained, EventPauseFailed, EventGoLiveDone, EventGoLiveFailed:
			return fmt.Errorf("lifecycle: %v in state %v: %w", ev.Type, m.state, ErrUnexpected)
		}
		return nil // faults, ticks, a lost peer: nothing left to decide
	}
	if m.primary() {
		return m.stepPrimary(ev)
	}
	return m.stepBackup(ev)
}

// stop ends the copy on request (reason: shown while it stops).
func (m *Machine) stop(reason string) {
	if !m.ended() {
		m.answer(fmt.Errorf("vm %s %w", m.cfg.VM, ErrStopped))
		if reason == "" {
			reason = m.detail
		}
		m.become(Stopping, reason)
	}
	m.teardown()
}

// shutdown: the agent is going away. A protected primary that has shared
// storage hands the VM over to its backup instead of stopping: a stop ends the
// log channel with a Bye, the backup stops too, and the VM would be down on both
// hosts for a mere agent restart. The handover is the planned failover's (pause,
// the backup acknowledges the log up to the pause, output halted, the next epoch
// claimed for the backup, Bye: the backup finds its claim and goes live from the
// paused state, no reboot), each step with its deadline; then the copy tears
// down. A handover that cannot finish before its claim fails the copy as a
// primary whose QEMU died: its output halted, it tells the backup why, and the
// backup claims the next epoch and goes live from the log it holds. A primary
// that runs alone (unprotected, degraded, claiming, halted) has no copy that can
// carry the VM on: it stops, and the VM with it. A backup stops: its primary
// carries on unprotected.
func (m *Machine) shutdown(reason string) error {
	if reason == "" {
		reason = "agent shutting down"
	}
	if m.primary() && !m.ended() {
		switch {
		case m.shuttingDown:
			return nil // a second SIGTERM: the handover goes on
		case m.state == HandingOver:
			// The operator's planned failover is under way: it finishes (or fails
			// over), then the copy tears down.
			m.shuttingDown, m.shutdownReason = true, reason
			return nil
		case m.state == Protected && m.arb != nil && m.peer != "" && m.req == 0:
			m.shuttingDown = true
			m.shutdownReason = reason
			m.stage, m.waited = handPausing, 0
			m.become(HandingOver, m.handoverDetail("pausing the guest"))
			m.emit(Action{Type: ActionPauseGuest, Reason: reason})
			return nil
		}
	}
	m.stop(reason)
	return nil
}

// handoverDetail is the status detail of a handover at step what.
func (m *Machine) handoverDetail(what string) string {
	if m.shuttingDown && m.req != OpHandover {
		return fmt.Sprintf("%s: handing the VM over to %s: %s", m.shutdownReason, m.peer, what)
	}
	return fmt.Sprintf("planned failover to %s: %s", m.peer, what)
}

// refuse answers an operator request the state cannot serve.
func (m *Machine) refuse() error {
	if m.req != 0 || m.state == Unprotecting || m.state == HandingOver {
		return fmt.Errorf("vm %s is %s: %w", m.cfg.VM, m.state, ErrBusy)
	}
	return fmt.Errorf("vm %s is %s, %w", m.cfg.VM, m.state, ErrNotProtected)
}

// answer finishes the pending operator request, if any.
func (m *Machine) answer(err error) {
	if m.req == 0 {
		return
	}
	m.emit(Action{Type: ActionReply, Op: m.req, Err: err})
	m.req = 0
}

func (m *Machine) teardown() {
	if !m.tornDown {
		m.tornDown = true
		m.emit(Action{Type: ActionTeardown, Reason: m.detail})
	}
}

func (m *Machine) stopping(detail string) {
	m.become(Stopping, detail)
	m.teardown()
}

// channelUp reports whether the log channel to the peer is still up as far as the
// lifecycle knows.
func (m *Machine) channelUp() bool {
	if m.primary() {
		return m.peer != "" && (m.state == Protected || m.state == Unprotecting || m.state == HandingOver || m.state == Syncing)
	}
	return m.state == Replaying && !m.reading
}

// fail ends the copy after a local failure (what: its cause): it claims
// nothing, releases nothing and is torn down. While the channel is up it first
// tells the peer why: a backup told that its primary failed takes over (with
// shared storage), a primary told that its backup stepped down carries on.
func (m *Machine) fail(what string) {
	abort := m.channelUp()
	detail := what
	switch {
	case m.primary() && abort && m.arb != nil:
		detail += "; the backup takes over"
	case !m.primary() && m.state != GoingLive:
		detail = "stepped down: " + what
	}
	m.become(Failed, detail)
	if m.primary() {
		m.emit(Action{Type: ActionHaltOutput, Reason: what})
	}
	if abort {
		m.emit(Action{Type: ActionAbortChannel, Reason: what})
	}
	m.answer(fmt.Errorf("vm %s %w: it failed: %s", m.cfg.VM, ErrStopped, what))
	m.teardown()
}

// faultText says what a fault event means for this copy.
func (m *Machine) faultText(ev Event) string {
	switch ev.Type {
	case EventQEMUExited:
		if m.primary() {
			return fmt.Sprintf("qemu exited: %v", ev.Err)
		}
		return fmt.Sprintf("replaying qemu exited: %v", ev.Err)
	case EventLogWriteFailed:
		return fmt.Sprintf("rr log write failed: %s; output stopped", ev.Reason)
	}
	if ev.Err == nil {
		return "unknown fault"
	}
	return ev.Err.Error()
}

func (m *Machine) startClaim(p claimPurpose, seen uint64, owner, reason string) {
	m.nextID++
	m.claimID, m.claimFor = m.nextID, p
	var op Op // the operator request the claim serves; 0: a failover's
	switch p {
	case claimUnprotect:
		op = OpUnprotect
	case claimHandover:
		op = OpHandover
	}
	m.emit(Action{Type: ActionClaimEpoch, Claim: m.claimID, Seen: seen, Owner: owner, Reason: reason, Op: op})
}

func (m *Machine) newArbiter() error {
	a, err := arbiter.New(arbiter.Config{Role: m.cfg.Role, Host: m.cfg.Host, Epoch: m.epoch,
		ClaimRetryTicks: m.cfg.ClaimRetryTicks, Logger: m.cfg.Logger})
	if err != nil {
		return err
	}
	m.arb = a
	return nil
}

// claiming hands a lost peer to the arbiter: output stays held (primary) and the
// copy stays a backup until a claim result decides.
func (m *Machine) claiming(detail string) error {
	m.become(Claiming, detail)
	return m.arbStep(arbiter.PeerSilent())
}

// arbStep steps the arbiter and carries its actions over into this machine's.
func (m *Machine) arbStep(ev arbiter.Event) error {
	err := m.arb.Step(ev)
	if errors.Is(err, arbiter.ErrWrongEpoch) {
		// Storage answered with an epoch that was not claimed: the outcome is
		// unknown, so hold and let the arbiter retry.
		_ = m.arb.Step(arbiter.ClaimFailed(err))
	}
	rd := m.arb.Ready()
	m.arb.Advance()
	for _, a := range rd.Actions {
		switch a.Type {
		case arbiter.ActionClaimEpoch:
			m.startClaim(claimFailover, a.Seen, m.cfg.Host, a.Reason)
		case arbiter.ActionContinueUnprotected:
			m.epoch = a.Epoch
			m.goUnprotected(fmt.Sprintf("%s; won epoch %d", m.lostWhyOr("backup lost"), a.Epoch))
			// The VM outlived its backup: protect it again with the same host once
			// its agent answers (after it went away, or at once if the sentinel
			// stepped that backup down).
			m.startReprotect(m.peerAddr)
			if m.lostSentinel {
				m.reprotectAfterStepDown()
			}
		case arbiter.ActionGoLive:
			m.epoch = a.Epoch
			m.goLive(fmt.Sprintf("%s; won epoch %d, going live", m.lostWhyOr("primary lost"), a.Epoch), a.Reason)
		case arbiter.ActionHalt:
			if m.primary() {
				m.halt(a.Reason)
			} else {
				m.become(Halted, a.Reason)
				m.teardown()
			}
		}
	}
	return err
}

// claimResult routes a claim's result to what the claim was for.
func (m *Machine) claimResult(p claimPurpose, ev Event) error {
	switch p {
	case claimFailover:
		if m.arb == nil || m.state != Claiming {
			return fmt.Errorf("lifecycle: failover claim result in state %v: %w", m.state, ErrUnexpected)
		}
		switch ev.Type {
		case EventClaimWon:
			return m.arbStep(arbiter.ClaimWon(ev.Epoch))
		case EventClaimLost:
			return m.arbStep(arbiter.ClaimLost(ev.Epoch, ev.Owner))
		default:
			return m.arbStep(arbiter.ClaimFailed(ev.Err))
		}
	case claimUnprotect:
		return m.unprotectResult(ev)
	case claimHandover:
		return m.handoverResult(ev)
	}
	return fmt.Errorf("lifecycle: claim for purpose %d: %w", int(p), ErrUnexpected)
}

func (m *Machine) lostWhyOr(def string) string {
	if m.lostWhy == "" {
		return def
	}
	return m.lostWhy
}

func winnerName(owner string) string {
	if owner == "" {
		return "an unknown owner"
	}
	return owner
}
