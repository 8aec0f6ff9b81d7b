// Package arbiter decides failover for one copy of a fault-tolerant VM pair.
//
// It is a pure state machine in the style of etcd's raft: no I/O, no goroutines,
// no clock. The caller feeds it events with Step (the peer went silent or came
// back, the result of an epoch claim, a tick), collects the actions it must carry
// out with Ready, and acknowledges them with Advance. The caller performs the
// epoch claim itself (disk.EpochStore.ClaimNext) and reports the result.
//
// The safety rule: a copy goes live (backup) or carries on alone (primary) only
// after winning the next epoch on shared storage; a copy that loses halts and
// never produces another action. Nothing else — a peer coming back, flapping
// heartbeats, ticks — moves a copy out of Claiming. See docs/failover-guarantees.md.
//
// An Arbiter is not safe for concurrent use; drive it from one goroutine.
package arbiter

import (
	"errors"
	"fmt"
	"log/slog"
)

// Role is the copy's role in the pair.
type Role int

const (
	RolePrimary Role = iota + 1
	RoleBackup
)

func (r Role) String() string {
	switch r {
	case RolePrimary:
		return "primary"
	case RoleBackup:
		return "backup"
	}
	return fmt.Sprintf("Role(%d)", int(r))
}

// State is where the copy is in failover.
type State int

const (
	// StateProtected: the pair is healthy (primary runs, backup replays).
	StateProtected State = iota + 1
	// StateClaiming: the peer went silent; the copy is trying to claim the next
	// epoch. The primary holds all output; the backup stays a backup.
	StateClaiming
	// StateLive: the backup won the epoch and runs the VM.
	StateLive
	// StateUnprotected: the primary won the epoch and runs alone.
	StateUnprotected
	// StateHalted: the copy lost (terminal). It never releases output again.
	StateHalted
)

func (s State) String() string {
	switch s {
	case StateProtected:
		return "protected"
	case StateClaiming:
		return "claiming"
	case StateLive:
		return "live"
	case StateUnprotected:
		return "unprotected"
	case StateHalted:
		return "halted"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// EventType names an input.
type EventType int

const (
	// EventPeerSilent: the caller's heartbeat timeout expired.
	EventPeerSilent EventType = iota + 1
	// EventPeerBack: heartbeats or log traffic from the peer resumed.
	EventPeerBack
	// EventClaimWon: ClaimNext returned nil; Epoch is the claimed epoch.
	EventClaimWon
	// EventClaimLost: ClaimNext returned ErrLost; Epoch and Winner describe the
	// winning claim (Winner is empty if the winner's claim is unreadable).
	EventClaimLost
	// EventClaimFailed: ClaimNext failed for another reason (timeout, I/O
	// error): the outcome is unknown. The arbiter keeps holding and retries the
	// claim after Config.ClaimRetryTicks ticks.
	EventClaimFailed
	// EventTick: one unit of time passed.
	EventTick
)

func (t EventType) String() string {
	switch t {
	case EventPeerSilent:
		return "PeerSilent"
	case EventPeerBack:
		return "PeerBack"
	case EventClaimWon:
		return "ClaimWon"
	case EventClaimLost:
		return "ClaimLost"
	case EventClaimFailed:
		return "ClaimFailed"
	case EventTick:
		return "Tick"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one input to Step.
type Event struct {
	Type   EventType
	Epoch  uint64 // ClaimWon: the epoch won; ClaimLost: the winner's epoch
	Winner string // ClaimLost: the winner's host ("" if unknown)
	Err    error  // ClaimFailed: why
}

// Convenience constructors.
func PeerSilent() Event           { return Event{Type: EventPeerSilent} }
func PeerBack() Event             { return Event{Type: EventPeerBack} }
func Tick() Event                 { return Event{Type: EventTick} }
func ClaimWon(epoch uint64) Event { return Event{Type: EventClaimWon, Epoch: epoch} }
func ClaimLost(epoch uint64, winner string) Event {
	return Event{Type: EventClaimLost, Epoch: epoch, Winner: winner}
}
func ClaimFailed(err error) Event { return Event{Type: EventClaimFailed, Err: err} }

// ActionType names an output.
type ActionType int

const (
	// ActionClaimEpoch: call EpochStore.ClaimNext(vm, Seen, host, Reason) and
	// Step the result as ClaimWon, ClaimLost or ClaimFailed.
	ActionClaimEpoch ActionType = iota + 1
	// ActionGoLive: (backup) stop replaying and run the VM; it owns Epoch.
	ActionGoLive
	// ActionContinueUnprotected: (primary) run alone under Epoch and release
	// the output held while claiming.
	ActionContinueUnprotected
	// ActionHalt: stop the VM now; never release output again.
	ActionHalt
)

func (t ActionType) String() string {
	switch t {
	case ActionClaimEpoch:
		return "ClaimEpoch"
	case ActionGoLive:
		return "GoLive"
	case ActionContinueUnprotected:
		return "ContinueUnprotected"
	case ActionHalt:
		return "Halt"
	}
	return fmt.Sprintf("ActionType(%d)", int(t))
}

// Action is one output the caller must carry out, in order.
type Action struct {
	Type   ActionType
	Seen   uint64 // ClaimEpoch: the epoch to claim after (claims Seen+1)
	Epoch  uint64 // GoLive, ContinueUnprotected: the epoch won; Halt: the winner's epoch
	Reason string
}

func (a Action) String() string {
	switch a.Type {
	case ActionClaimEpoch:
		return fmt.Sprintf("%s seen=%d (%s)", a.Type, a.Seen, a.Reason)
	default:
		return fmt.Sprintf("%s epoch=%d (%s)", a.Type, a.Epoch, a.Reason)
	}
}

// Ready is what the caller must act on: the current state and the actions
// produced since the last Advance.
type Ready struct {
	State   State
	Actions []Action
}

// Sentinel errors returned by Step; the event is ignored.
var (
	ErrNoClaimPending = errors.New("no epoch claim pending")
	ErrWrongEpoch     = errors.New("claim result for an epoch that was not claimed")
	ErrUnknownEvent   = errors.New("unknown event type")
	ErrInvalidConfig  = errors.New("invalid arbiter config")
)

// Config configures an Arbiter.
type Config struct {
	Role Role
	Host string // this copy's host, the owner written into claims
	// Epoch is the epoch the pair is protected under (0 before any claim).
	// A failover claims Epoch+1.
	Epoch uint64
	// Start is the initial state: StateProtected (default when zero), or the
	// state Resume decided (StateLive for a backup, StateUnprotected for a
	// primary, StateHalted).
	Start State
	// ClaimRetryTicks is how many ticks to wait after a failed claim before
	// trying again (default 10).
	ClaimRetryTicks int
	Logger          *slog.Logger // default: discard
}

const defaultClaimRetryTicks = 10

// validate rejects bad values and fills in defaults.
func (c *Config) validate() error {
	if c.Role != RolePrimary && c.Role != RoleBackup {
		return fmt.Errorf("%w: role %v", ErrInvalidConfig, c.Role)
	}
	if c.Host == "" {
		return fmt.Errorf("%w: empty host", ErrInvalidConfig)
	}
	if c.ClaimRetryTicks < 0 {
		return fmt.Errorf("%w: ClaimRetryTicks %d is negative", ErrInvalidConfig, c.ClaimRetryTicks)
	}
	if c.ClaimRetryTicks == 0 {
		c.ClaimRetryTicks = defaultClaimRetryTicks
	}
	switch c.Start {
	case 0:
		c.Start = StateProtected
	case StateProtected, StateHalted:
	case StateLive:
		if c.Role != RoleBackup {
			return fmt.Errorf("%w: start state %v is for a backup, role is %v", ErrInvalidConfig, c.Start, c.Role)
		}
	case StateUnprotected:
		if c.Role != RolePrimary {
			return fmt.Errorf("%w: start state %v is for a primary, role is %v", ErrInvalidConfig, c.Start, c.Role)
		}
	default:
		return fmt.Errorf("%w: cannot start in state %v", ErrInvalidConfig, c.Start)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

type stepFunc func(a *Arbiter, ev Event) error

// Arbiter is the failover state machine of one copy.
type Arbiter struct {
	cfg   Config
	state State
	epoch uint64 // epoch protected under, or won
	step  stepFunc

	pending  bool // a ClaimEpoch action is outstanding
	retryIn  int  // ticks until the next claim attempt, when !pending
	attempts int
	peerBack bool // the peer came back while claiming (informational)
	actions  []Action
	log      *slog.Logger
}

// New returns an Arbiter, or an error wrapping ErrInvalidConfig.
func New(cfg Config) (*Arbiter, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	a := &Arbiter{cfg: cfg, epoch: cfg.Epoch, log: cfg.Logger.With("role", cfg.Role.String(), "host", cfg.Host)}
	a.become(cfg.Start)
	return a, nil
}

// State returns the current state.
func (a *Arbiter) State() State { return a.state }

// Epoch returns the epoch the copy is protected under or has won.
func (a *Arbiter) Epoch() uint64 { return a.epoch }

// Role returns the copy's role.
func (a *Arbiter) Role() Role { return a.cfg.Role }

// HasReady reports whether Ready has actions to carry out.
func (a *Arbiter) HasReady() bool { return len(a.actions) > 0 }

// Ready returns the state and the actions produced since the last Advance.
// Calling it again without Advance returns the same actions.
func (a *Arbiter) Ready() Ready {
	return Ready{State: a.state, Actions: append([]Action(nil), a.actions...)}
}

// Advance acknowledges the actions last returned by Ready.
func (a *Arbiter) Advance() { a.actions = nil }

func (a *Arbiter) emit(act Action) {
	a.log.Info("arbiter action", "action", act.Type.String(), "seen", act.Seen, "epoch", act.Epoch, "reason", act.Reason)
	a.actions = append(a.actions, act)
}

func (a *Arbiter) become(s State) {
	if a.state != 0 && a.state != s {
		a.log.Info("arbiter state change", "from", a.state.String(), "to", s.String(), "epoch", a.epoch)
	}
	a.state = s
	switch s {
	case StateProtected:
		a.step = stepProtected
	case StateClaiming:
		a.step = stepClaiming
	case StateLive, StateUnprotected:
		a.step = stepAlone
	case StateHalted:
		a.step = stepHalted
	}
}

// Step feeds one event. An error means the event was ignored (the state and
// pending actions are unchanged); it never means the copy may run.
func (a *Arbiter) Step(ev Event) error {
	switch ev.Type {
	case EventPeerSilent, EventPeerBack, EventTick:
	case EventClaimWon, EventClaimLost, EventClaimFailed:
		// Rules shared by every state: a claim result needs a claim in flight.
		if !a.pending {
			err := fmt.Errorf("arbiter: %v in state %v: %w", ev.Type, a.state, ErrNoClaimPending)
			a.log.Warn("ignoring claim result", "event", ev.Type.String(), "err", err)
			return err
		}
	default:
		return fmt.Errorf("arbiter: %w: %d", ErrUnknownEvent, int(ev.Type))
	}
	return a.step(a, ev)
}

func stepProtected(a *Arbiter, ev Event) error {
	if ev.Type == EventPeerSilent {
		a.become(StateClaiming)
		a.claim("peer silent")
	}
	// PeerBack and Tick change nothing while protected.
	return nil
}

func (a *Arbiter) claim(why string) {
	a.pending = true
	a.attempts++
	reason := fmt.Sprintf("%s: %s on %s claims epoch %d (attempt %d)", why, a.cfg.Role, a.cfg.Host, a.epoch+1, a.attempts)
	a.emit(Action{Type: ActionClaimEpoch, Seen: a.epoch, Reason: reason})
}

func stepClaiming(a *Arbiter, ev Event) error {
	switch ev.Type {
	case EventPeerSilent:
		// Already claiming.
	case EventPeerBack:
		// The peer may have claimed already: only the claim result decides.
		a.peerBack = true
	case EventTick:
		if !a.pending {
			a.retryIn--
			if a.retryIn <= 0 {
				a.claim("retry after failed claim")
			}
		}
	case EventClaimFailed:
		a.pending = false
		a.retryIn = a.cfg.ClaimRetryTicks
		a.log.Warn("epoch claim failed; holding, will retry", "err", ev.Err, "retry_ticks", a.retryIn)
	case EventClaimWon:
		if ev.Epoch != a.epoch+1 {
			err := fmt.Errorf("arbiter: won epoch %d, claimed %d: %w", ev.Epoch, a.epoch+1, ErrWrongEpoch)
			a.log.Error("ignoring claim result", "err", err)
			return err
		}
		a.pending = false
		a.epoch = ev.Epoch
		reason := fmt.Sprintf("won epoch %d", ev.Epoch)
		if a.peerBack {
			reason += " (the peer came back while claiming; it will lose)"
		}
		if a.cfg.Role == RoleBackup {
			a.become(StateLive)
			a.emit(Action{Type: ActionGoLive, Epoch: ev.Epoch, Reason: reason})
		} else {
			a.become(StateUnprotected)
			a.emit(Action{Type: ActionContinueUnprotected, Epoch: ev.Epoch, Reason: reason})
		}
	case EventClaimLost:
		if ev.Epoch <= a.epoch {
			err := fmt.Errorf("arbiter: lost to epoch %d, not beyond %d: %w", ev.Epoch, a.epoch, ErrWrongEpoch)
			a.log.Error("ignoring claim result", "err", err)
			return err
		}
		a.pending = false
		winner := ev.Winner
		if winner == "" {
			winner = "an unknown owner"
		}
		a.become(StateHalted)
		a.emit(Action{Type: ActionHalt, Epoch: ev.Epoch, Reason: fmt.Sprintf("lost epoch %d to %s", ev.Epoch, winner)})
	}
	return nil
}

// stepAlone: Live or Unprotected. The copy already owns its epoch; a returning
// peer has lost (and halted) and must be re-paired from scratch.
func stepAlone(a *Arbiter, ev Event) error {
	if ev.Type == EventPeerBack {
		a.log.Warn("peer reappeared after this copy won the epoch; it must have halted", "epoch", a.epoch)
	}
	return nil
}

// stepHalted: terminal. Nothing ever produces an action again.
func stepHalted(*Arbiter, Event) error { return nil }
