package lifecycle

import (
	"fmt"

	"github.com/ftvmd/ftvmd/arbiter"
)

// stepBackup handles the events a backup decides on itself.
func (m *Machine) stepBackup(ev Event) error {
	switch ev.Type {
	case EventStarted:
		if m.state != Starting {
			return fmt.Errorf("lifecycle: %v in state %v: %w", ev.Type, m.state, ErrUnexpected)
		}
		m.epoch, m.peer = ev.Epoch, ev.Peer
		if ev.Sync {
			m.syncing = true
			m.become(Replaying, "syncing: replaying from the primary's snapshot; not protecting it yet")
			return nil
		}
		if ev.Shared && ev.Epoch > 0 {
			if err := m.newArbiter(); err != nil {
				m.fail(fmt.Sprintf("failover arbiter: %v", err))
				return err
			}
		}
		m.become(Replaying, "")
		return nil
	case EventQEMUExited, EventLogWriteFailed, EventFault:
		if m.state == GoingLive {
			return nil // go-live stops the replay itself and reports its own outcome
		}
		// A backup that cannot replay steps down without claiming: claiming
		// would halt a primary that is healthy, and this copy could not go live.
		m.fail(m.faultText(ev))
		return nil
	case EventSentinel:
		if m.state != Replaying || m.reading {
			// The primary is lost or gone (claiming, going live, looking for a
			// planned-failover claim): nothing healthy to step down for.
			return nil
		}
		// The replay is no protection: step down as after a local fault, and say
		// it was the sentinel, so that the healthy primary carries on and protects
		// the VM again from a fresh start.
		m.fail(SentinelMark + ev.Reason)
		return nil
	case EventUnprotect, EventHandover, EventProtect:
		return fmt.Errorf("vm %s is a backup on this host: %w", m.cfg.VM, ErrWrongRole)
	case EventSynced:
		if m.state != Replaying || !m.syncing {
			return fmt.Errorf("lifecycle: %v in state %v: %w", ev.Type, m.state, ErrUnexpected)
		}
		m.syncing, m.epoch = false, ev.Epoch
		if ev.Shared && ev.Epoch > 0 {
			if err := m.newArbiter(); err != nil {
				m.fail(fmt.Sprintf("failover arbiter: %v", err))
				return err
			}
		}
		m.become(Replaying, "")
		return nil
	case EventSyncFailed:
		return fmt.Errorf("lifecycle: %v on a backup: %w", ev.Type, ErrUnexpected)
	case EventEpochSuperseded:
		return nil // a backup runs nothing to fence; its claim decides
	case EventPeerLost:
		return m.primaryLost(ev)
	case EventPeerBack:
		if m.state == Claiming {
			return m.arbStep(arbiter.PeerBack())
		}
		return nil
	case EventTick:
		if m.state == Claiming {
			return m.arbStep(arbiter.Tick())
		}
		return nil
	case EventGoLiveDone:
		if m.state != GoingLive {
			return fmt.Errorf("lifecycle: %v in state %v: %w", ev.Type, m.state, ErrUnexpected)
		}
		m.become(Live, fmt.Sprintf("went live under epoch %d", m.epoch))
		m.teardown() // the VM runs on as a new primary; this backup is done
		return nil
	case EventGoLiveFailed:
		if m.state != GoingLive {
			return fmt.Errorf("lifecycle: %v in state %v: %w", ev.Type, m.state, ErrUnexpected)
		}
		m.fail(fmt.Sprintf("go live under epoch %d: %v", m.epoch, ev.Err))
		return nil
	case EventDrained, EventPauseFailed:
		return fmt.Errorf("lifecycle: %v on a backup: %w", ev.Type, ErrUnexpected)
	}
	return nil // Abort
}

// primaryLost: the log channel ended. A Bye is the primary's choice: it stopped,
// went unprotected, or handed the VM over to this copy, which only the store
// tells apart. Anything else is a lost primary, or one that failed and said so:
// the arbiter claims.
func (m *Machine) primaryLost(ev Event) error {
	if m.reading || m.state == Claiming || m.state == GoingLive {
		return nil
	}
	if m.state != Replaying || m.arb == nil {
		m.stopping(fmt.Sprintf("log channel ended: %v", ev.Err))
		return nil
	}
	if ev.Bye {
		m.reading, m.byeErr = true, ev.Err
		m.become(Replaying, "log channel closed by primary; looking for a planned-failover claim")
		m.emit(Action{Type: ActionReadClaim})
		return nil
	}
	what := "primary lost"
	if ev.Quit {
		what = "primary failed"
	}
	m.lostWhy = fmt.Sprintf("%s (%v)", what, ev.Err)
	return m.claiming(fmt.Sprintf("%s; claiming epoch %d", m.lostWhy, m.epoch+1))
}

// claimRead: after a Bye, this copy goes live only if the primary claimed the
// next epoch for it.
func (m *Machine) claimRead(ev Event) error {
	if ev.Err == nil && !ev.Corrupt && ev.Epoch == m.epoch+1 && ev.Owner == m.cfg.Host {
		m.epoch = ev.Epoch
		m.goLive(fmt.Sprintf("planned failover: going live under epoch %d", ev.Epoch), "planned failover")
		return nil
	}
	m.stopping(fmt.Sprintf("log channel ended: %v", m.byeErr))
	return nil
}

// goLive: this copy owns m.epoch; turn the replay into the live VM.
func (m *Machine) goLive(detail, reason string) {
	m.become(GoingLive, detail)
	m.emit(Action{Type: ActionGoLive, Epoch: m.epoch, Reason: reason})
}
