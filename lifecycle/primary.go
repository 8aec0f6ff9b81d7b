package lifecycle

import (
	"fmt"

	"github.com/ftvmd/ftvmd/arbiter"
)

// stepPrimary handles the events a primary decides on itself.
func (m *Machine) stepPrimary(ev Event) error {
	if m.state == Starting && ev.Type == EventStarted {
		return m.primaryStarted(ev)
	}
	switch ev.Type {
	case EventStarted:
		return fmt.Errorf("lifecycle: %v in state %v: %w", ev.Type, m.state, ErrUnexpected)
	case EventQEMUExited, EventLogWriteFailed, EventFault:
		// Whatever it was doing: a primary that cannot record must not release
		// output, and is not protected any more.
		m.fail(m.faultText(ev))
		return nil
	case EventUnprotect:
		return m.unprotect(ev.Reason)
	case EventProtect:
		return m.protect(ev.Peer, "operator request")
	case EventProbed:
		if m.state != Unprotected || !m.probing {
			return fmt.Errorf("lifecycle: %v in state %v: %w", ev.Type, m.state, ErrUnexpected)
		}
		return m.probedPeer(ev.Err)
	case EventSynced:
		if m.state != Syncing {
			return fmt.Errorf("lifecycle: %v in state %v: %w", ev.Type, m.state, ErrUnexpected)
		}
		m.epoch = ev.Epoch
		if ev.Peer != "" {
			// The backup by its host name: a planned failover claims the epoch
			// for it, and a claim owned by its agent's address ("10.77.0.2:7800")
			// is no backup's (it stops instead of going live).
			m.peer = ev.Peer
		}
		if ev.Shared && ev.Epoch > 0 {
			if err := m.newArbiter(); err != nil {
				m.goUnprotected(fmt.Sprintf("protection failed: failover arbiter: %v", err))
				return err
			}
		}
		m.probeWait, m.peerDown, m.lostSentinel, m.protTicks = m.cfg.ProbeTicks, false, false, 0
		m.become(Protected, "")
		return nil
	case EventSyncFailed:
		if m.state != Syncing {
			return fmt.Errorf("lifecycle: %v in state %v: %w", ev.Type, m.state, ErrUnexpected)
		}
		m.syncFailed(fmt.Sprintf("protection failed: %v", ev.Err))
		return nil
	case EventHandover:
		return m.handover()
	case EventPeerLost:
		return m.backupLost(ev)
	case EventEpochSuperseded:
		return m.superseded(ev.Reason)
	case EventPeerBack:
		if m.state == Claiming {
			return m.arbStep(arbiter.PeerBack())
		}
		return nil
	case EventTick:
		return m.primaryTick()
	case EventPauseFailed:
		if m.state != HandingOver || m.stage != handPausing {
			return fmt.Errorf("lifecycle: %v in state %v: %w", ev.Type, m.state, ErrUnexpected)
		}
		if m.shuttingDown {
			m.shutdownHandoverFailed(fmt.Errorf("pause guest: %v", ev.Err))
			return nil
		}
		m.stage = 0
		m.become(Protected, "")
		m.answer(fmt.Errorf("pause guest: %v", ev.Err))
		return nil
	case EventGuestPaused: // in HandingOver, pausing (Step filtered the rest)
		m.stage, m.waited = handDraining, 0
		m.become(HandingOver, m.handoverDetail("waiting for the backup to acknowledge the log up to the pause"))
		m.emit(Action{Type: ActionAwaitDrain})
		return nil
	case EventDrained:
		if m.state != HandingOver || m.stage != handDraining {
			return fmt.Errorf("lifecycle: %v in state %v: %w", ev.Type, m.state, ErrUnexpected)
		}
		// Every frame the guest sent before the pause has left: from here on the
		// backup owns the VM, and this copy releases nothing more.
		m.stage = handClaiming
		m.become(HandingOver, m.handoverDetail(fmt.Sprintf("claiming epoch %d for it", m.epoch+1)))
		m.emit(Action{Type: ActionHaltOutput, Reason: "planned failover"})
		m.startClaim(claimHandover, m.epoch, m.peer, "planned failover from "+m.cfg.Host)
		return nil
	case EventAbort:
		if m.state == HandingOver && m.stage != handClaiming {
			m.callOffHandover(fmt.Errorf("planned failover called off: %v", ev.Err))
		}
		return nil
	case EventGoLiveDone, EventGoLiveFailed:
		return fmt.Errorf("lifecycle: %v on a primary: %w", ev.Type, ErrUnexpected)
	case EventSentinel:
		return fmt.Errorf("lifecycle: %v on a primary: %w", ev.Type, ErrWrongRole)
	}
	return nil
}

func (m *Machine) primaryStarted(ev Event) error {
	if m.cfg.LiveEpoch == 0 || ev.Epoch != 0 {
		m.epoch = ev.Epoch
	}
	m.peer, m.peerAddr = ev.Peer, ev.Addr
	if ev.Peer == "" {
		detail := ""
		if m.cfg.LiveEpoch > 0 {
			detail = fmt.Sprintf("live after failover, epoch %d", m.epoch)
		}
		// Output was never held: the output path starts unprotected.
		m.become(Unprotected, detail)
		return nil
	}
	if ev.Shared && ev.Epoch > 0 {
		if err := m.newArbiter(); err != nil {
			m.fail(fmt.Sprintf("failover arbiter: %v", err))
			return err
		}
	}
	m.become(Protected, "")
	return nil
}

// backupLost: the log channel to the backup ended. Output stays held (no acks
// come) while the arbiter claims the next epoch; without shared storage it stays
// held until the operator unprotects, because the backup may still be alive,
// unless the backup said it quit: then nothing can take the VM over, and holding
// output protects nothing.
func (m *Machine) backupLost(ev Event) error {
	what := "backup lost"
	if ev.Quit {
		what = "backup stepped down"
	}
	switch m.state {
	case Protected, Unprotecting, HandingOver:
		m.lostWhy = fmt.Sprintf("%s (%v)", what, ev.Err)
		m.lostSentinel = ev.Sentinel
		if ev.Sentinel {
			m.stepDowns++
		}
	}
	switch m.state {
	case Syncing:
		// Not protected yet: the backup never claims before Synced, so the VM
		// runs on alone.
		m.syncFailed(fmt.Sprintf("protection failed: %s (%v)", what, ev.Err))
		return nil
	case Protected:
		switch {
		case m.arb != nil:
			return m.claiming(fmt.Sprintf("%s; claiming epoch %d", m.lostWhy, m.epoch+1))
		case ev.Quit:
			m.goUnprotected(m.lostWhy)
			if ev.Sentinel {
				m.reprotectAfterStepDown()
			}
		default:
			m.become(Degraded, fmt.Sprintf("log channel to backup lost: %v; output held until 'ftvmd unprotect'", ev.Err))
		}
		return nil
	case Unprotecting:
		// The unprotect claim is the same claim the arbiter would make (epoch+1
		// for this host): its result decides.
		m.lostPeer = true
		return nil
	case HandingOver:
		if m.stage == handClaiming {
			return nil // expected: the claim decides
		}
		if m.shuttingDown {
			// Nothing can carry the VM on from here: stop, output held. A backup
			// that is alive behind a cut link claims the next epoch and goes live
			// from what it acknowledged.
			m.answer(fmt.Errorf("vm %s: %w during the planned failover: %v", m.cfg.VM, ErrPeerLost, ev.Err))
			m.stage, m.waited = 0, 0
			m.stop(fmt.Sprintf("%s: %s during the handover; the VM stops", m.shutdownReason, m.lostWhy))
			return nil
		}
		m.callOffHandover(fmt.Errorf("vm %s: %w during the planned failover: %v", m.cfg.VM, ErrPeerLost, ev.Err))
		return m.claiming(fmt.Sprintf("%s during a planned failover; claiming epoch %d", m.lostWhy, m.epoch+1))
	}
	return nil // Degraded, Claiming, Unprotected: nothing new
}

// superseded: another host owns a later epoch; it may run the VM, so this copy
// halts. A planned failover's own claim for the backup is no reason: the epoch is
// the backup's by this copy's doing.
func (m *Machine) superseded(reason string) error {
	if m.state == Starting || (m.state == HandingOver && m.stage == handClaiming) {
		return nil
	}
	m.halt(reason)
	m.answer(fmt.Errorf("vm %s halted: %s", m.cfg.VM, reason))
	return nil
}

// reprotectAfterStepDown: the backup was stepped down by the divergence
// sentinel and this copy runs on alone. That backup's agent is up and discarded
// its copy on purpose, so the VM is protected again with it from a fresh start
// (a snapshot of the running VM) once a probe finds it answering, not only after
// it went away (see peerDown). Each step-down in a row doubles the wait first:
// a replay that keeps diverging or stalling costs a guest pause per attempt.
func (m *Machine) reprotectAfterStepDown() {
	if m.peerAddr == "" && len(m.spares) == 0 {
		return // a backup whose agent address is unknown: the operator protects again
	}
	m.startReprotect(m.peerAddr)
	m.peerDown, m.inRound = true, false // the backoff below comes first
	for i := 0; i < m.stepDowns && m.probeWait < MaxProbeTicks; i++ {
		m.probeWait *= 2
	}
	m.probeWait = min(m.probeWait, MaxProbeTicks)
	m.lostSentinel = false
}

func (m *Machine) primaryTick() error {
	switch {
	case m.state == Protected && m.stepDowns > 0:
		// Protected long enough since the last step-down: the next one starts
		// the backoff afresh.
		m.protTicks++
		if m.protTicks >= MaxProbeTicks {
			m.stepDowns, m.protTicks = 0, 0
		}
	case m.state == Unprotected && m.auto && !m.probing && m.req == 0 && m.qemuStuck == "":
		// (A QEMU that does not answer holds re-protection: the attempt would
		// pause a guest that cannot pause and wait out its timeout. The round
		// goes on where it was once it answers.)
		cands := m.candidates()
		if len(cands) == 0 {
			return nil
		}
		m.sinceProb++
		if m.sinceProb >= m.probeWait || m.inRound {
			m.probeIdx %= len(cands)
			m.probed = cands[m.probeIdx]
			m.probing, m.sinceProb, m.inRound = true, 0, false
			m.emit(Action{Type: ActionProbePeer, Peer: m.probed})
		}
	case m.state == Claiming:
		return m.arbStep(arbiter.Tick())
	case m.state == HandingOver && m.stage == handPausing:
		// A QEMU that does not answer the pause: a pause that completes after
		// this is undone (EventGuestPaused in another stage resumes the guest).
		m.waited++
		if m.waited >= m.cfg.PauseTicks {
			m.callOffHandover(fmt.Errorf("vm %s: the guest did not pause in time (%d ticks)", m.cfg.VM, m.waited))
		}
	case m.state == HandingOver && m.stage == handDraining:
		m.waited++
		if m.waited >= m.cfg.HandoverTicks {
			m.callOffHandover(fmt.Errorf("vm %s: %w (%d ticks)", m.cfg.VM, ErrHandoverTimeout, m.waited))
		}
	}
	return nil
}

// goUnprotected: run alone from now on; release what is held and end the
// channel, so that a backup still alive stops instead of claiming.
func (m *Machine) goUnprotected(detail string) {
	m.become(Unprotected, detail)
	m.emit(Action{Type: ActionReleaseOutput, Reason: detail})
	if m.peer != "" {
		m.emit(Action{Type: ActionEndChannel, Reason: "unprotected: " + detail})
	}
}

// halt: another copy owns the VM; release nothing ever again and kill QEMU. A
// log channel still open ends with a Bye: the backup stops quietly, or goes live
// on a claim made for it.
func (m *Machine) halt(detail string) {
	m.become(Halted, detail)
	m.emit(Action{Type: ActionHaltOutput, Reason: detail})
	if m.peer != "" {
		m.emit(Action{Type: ActionEndChannel, Reason: "halted: " + detail})
	}
	m.emit(Action{Type: ActionKillQEMU, Reason: detail})
}

// protect: bring up a backup on peer (its agent's address) for the running VM.
// Output flows while it syncs; the agent holds it from an exact offset once the
// backup caught up and steps Synced when the backup acknowledged that offset.
func (m *Machine) protect(peer, why string) error {
	if m.req != 0 || m.state != Unprotected {
		return fmt.Errorf("vm %s is %v: %w", m.cfg.VM, m.state, ErrNotUnprotected)
	}
	if peer == "" {
		return fmt.Errorf("%w: protect needs the backup's host", ErrInvalidConfig)
	}
	m.peer, m.peerAddr = peer, peer
	m.arb = nil
	m.probing, m.sinceProb = false, 0
	m.become(Syncing, fmt.Sprintf("syncing a new backup on %s (%s)", peer, why))
	m.emit(Action{Type: ActionStartSync, Peer: peer, Reason: why})
	return nil
}

// syncFailed: the protection of the running VM failed; it runs on alone. A copy
// that re-protects itself tries again later, waiting twice as long each time:
// every attempt pauses the guest for a snapshot.
func (m *Machine) syncFailed(detail string) {
	m.goUnprotected(detail)
	if m.auto {
		m.probeWait = min(2*m.probeWait, MaxProbeTicks)
	}
}

func (m *Machine) unprotect(reason string) error {
	if reason == "" {
		reason = "operator request"
	}
	if m.req == 0 && (m.state == Syncing || m.state == Unprotected) && m.auto {
		// The operator wants the VM alone: no more re-protection (the answer
		// to a probe still out starts nothing).
		m.auto = false
		if m.state == Unprotected {
			m.req = OpUnprotect
			m.answer(nil)
			return nil
		}
	}
	if m.req == 0 && m.state == Syncing {
		m.goUnprotected(reason)
		m.req = OpUnprotect
		m.answer(nil)
		return nil
	}
	if m.req != 0 || (m.state != Protected && m.state != Degraded) {
		return m.refuse()
	}
	if m.arb == nil {
		m.goUnprotected(reason)
		m.req = OpUnprotect
		m.answer(nil)
		return nil
	}
	// Claim the next epoch first, so that a backup which already lost the
	// channel and is claiming cannot also go live.
	m.req, m.unprotectReason, m.lostPeer = OpUnprotect, reason, false
	m.become(Unprotecting, fmt.Sprintf("%s; claiming epoch %d", reason, m.epoch+1))
	m.startClaim(claimUnprotect, m.epoch, m.cfg.Host, "unprotect")
	return nil
}

func (m *Machine) unprotectResult(ev Event) error {
	if m.state != Unprotecting {
		return fmt.Errorf("lifecycle: unprotect claim result in state %v: %w", m.state, ErrUnexpected)
	}
	switch {
	case ev.Type == EventClaimWon && ev.Epoch == m.epoch+1:
		m.epoch = ev.Epoch
		m.goUnprotected(m.unprotectReason)
		m.answer(nil)
		return nil
	case ev.Type == EventClaimLost && ev.Epoch > m.epoch:
		m.halt(fmt.Sprintf("the backup (%s) owns epoch %d", winnerName(ev.Owner), ev.Epoch))
		m.answer(fmt.Errorf("vm %s: %w (epoch %d); this copy halted", m.cfg.VM, ErrTakenOver, ev.Epoch))
		return nil
	}
	why := fmt.Sprint(ev.Err)
	if ev.Type != EventClaimFailed {
		why = fmt.Sprintf("%v of epoch %d while claiming %d", ev.Type, ev.Epoch, m.epoch+1)
	}
	m.answer(fmt.Errorf("unprotect %s: %w: %s (protection unchanged)", m.cfg.VM, ErrStorage, why))
	if m.lostPeer {
		m.lostPeer = false
		return m.claiming(fmt.Sprintf("backup lost while unprotecting; claiming epoch %d", m.epoch+1))
	}
	m.become(Protected, "")
	return nil
}

func (m *Machine) handover() error {
	if m.req != 0 || m.state != Protected {
		return m.refuse()
	}
	if m.arb == nil || m.peer == "" {
		return fmt.Errorf("vm %s: %w", m.cfg.VM, ErrNoSharedStorage)
	}
	m.req, m.stage, m.waited = OpHandover, handPausing, 0
	m.become(HandingOver, m.handoverDetail("pausing the guest"))
	m.emit(Action{Type: ActionPauseGuest})
	return nil
}

// callOffHandover ends a planned failover that has not claimed: the guest runs
// on, protected as before.
func (m *Machine) callOffHandover(err error) {
	if m.shuttingDown {
		m.shutdownHandoverFailed(err)
		return
	}
	m.stage, m.waited = 0, 0
	m.emit(Action{Type: ActionResumeGuest, Reason: err.Error()})
	m.become(Protected, "")
	m.answer(err)
}

// shutdownHandoverFailed: the agent is going away and the handover ended before
// its claim (the guest did not pause, the backup did not acknowledge in time).
// The copy fails as a primary whose QEMU died: output halted, the backup told why
// (it claims the next epoch and goes live from the log it acknowledged), torn
// down. Resuming the guest here would protect nothing: this agent is leaving.
func (m *Machine) shutdownHandoverFailed(err error) {
	m.stage, m.waited = 0, 0
	m.answer(err)
	m.fail(fmt.Sprintf("%s: the handover to %s failed: %v", m.shutdownReason, m.peer, err))
}

func (m *Machine) handoverResult(ev Event) error {
	if m.state != HandingOver || m.stage != handClaiming {
		return fmt.Errorf("lifecycle: planned-failover claim result in state %v: %w", m.state, ErrUnexpected)
	}
	m.stage = 0
	if ev.Type == EventClaimWon && ev.Epoch == m.epoch+1 {
		m.epoch = ev.Epoch
		m.become(HandedOver, fmt.Sprintf("planned failover to %s, epoch %d", m.peer, ev.Epoch))
		m.emit(Action{Type: ActionEndChannel, Reason: "handed over"}) // the backup finds its claim and goes live
		m.emit(Action{Type: ActionKillQEMU, Reason: "handed over"})
		m.answer(nil)
		return nil
	}
	// The claim's outcome is unknown, or someone else holds the epoch: output is
	// halted already and stays so.
	var why string
	switch ev.Type {
	case EventClaimLost:
		why = fmt.Sprintf("epoch %d is held by %s", ev.Epoch, winnerName(ev.Owner))
	case EventClaimWon:
		why = fmt.Sprintf("won epoch %d while claiming %d", ev.Epoch, m.epoch+1)
	default:
		why = fmt.Sprint(ev.Err)
	}
	m.halt("planned failover: epoch claim: " + why)
	m.answer(fmt.Errorf("planned failover: epoch claim: %s; this copy halted", why))
	return nil
}

// startReprotect turns automatic re-protection on for a copy that runs alone:
// lost is the lost peer's agent address ("" when unknown), used only once its
// agent went away and came back; the VM's spares come before it in each round,
// since a spare that answers is used at once. With neither there is no one to
// probe, and the operator protects. The first round starts at the next tick.
func (m *Machine) startReprotect(lost string) {
	m.autoPeer, m.peerDown = lost, false
	m.auto = lost != "" || len(m.spares) > 0
	m.probing, m.sinceProb, m.probeIdx, m.inRound = false, 0, 0, true
	m.probeWait = m.cfg.ProbeTicks
}

// candidates: the hosts a round of re-protection probes, in order: the spares,
// then the lost peer (once, if it is a spare too).
func (m *Machine) candidates() []string {
	var c []string
	for _, s := range m.spares {
		if s != m.autoPeer {
			c = append(c, s)
		}
	}
	if m.autoPeer != "" {
		c = append(c, m.autoPeer)
	}
	return c
}

// probedPeer: the probe of m.probed answered (err nil) or not. A spare that
// answers is protected with at once; the lost peer only if its agent went away
// since (see peerDown). Otherwise the round goes on with the next candidate at
// the next tick, or, after the last, starts again after probeWait ticks.
func (m *Machine) probedPeer(err error) error {
	m.probing, m.sinceProb = false, 0
	peer := m.probed
	cands := m.candidates()
	m.probeIdx++
	if m.probeIdx >= len(cands) {
		m.probeIdx = 0
	}
	m.inRound = m.probeIdx > 0
	if !m.auto || peer == "" {
		return nil // the operator unprotected while the probe was out
	}
	if err != nil {
		if peer == m.autoPeer {
			m.peerDown = true
		}
		return nil
	}
	if peer == m.autoPeer && !m.peerDown {
		return nil // its agent never went away: see peerDown
	}
	if m.qemuStuck != "" {
		// The QEMU stopped answering while the probe was out: this candidate
		// comes first once it answers again.
		m.probeIdx, m.inRound = (m.probeIdx+len(cands)-1)%len(cands), true
		return nil
	}
	// The next round (after a failed protection) starts after this candidate:
	// a spare that keeps failing does not hide the ones after it.
	m.inRound = false
	why := "re-protection"
	if peer != m.autoPeer {
		why = "re-protection on a spare host"
	}
	return m.protect(peer, why)
}
