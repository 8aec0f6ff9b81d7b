// Package lifecycle decides the protection lifecycle of one copy of a
// fault-tolerant VM: when a primary is protected, degraded, claiming, alone,
// handing over, halted or failed, and when a backup replays, claims, goes live
// or steps down.
//
// It is a pure state machine in the style of etcd's raft, like arbiter and
// outputrule: no I/O, no goroutines, no clock. The agent feeds it what happened
// with Step (the peer was lost, a claim's result, QEMU exited, the operator
// asked for a planned failover, a tick), collects what it must do with Ready
// (claim an epoch, release or halt output, pause the guest, go live, tear down,
// answer the operator) and acknowledges it with Advance. The agent carries out
// every action and steps back its result; it decides nothing itself.
//
// The failover decision after a lost peer is the arbiter's (arbiter.Arbiter,
// driven from here): a copy runs on alone only after winning the next epoch on
// shared storage. This package adds the rest of the lifecycle around it and
// keeps these rules, checked by a fuzz target over both copies of a pair:
//
//   - a primary releases its held output (ReleaseOutput) only when it goes
//     Unprotected, and never after it halted its output (HaltOutput);
//   - a backup goes live only under an epoch it won, or one its primary
//     claimed for it in a planned failover;
//   - of a pair, at most one copy runs with output in any epoch;
//   - a copy that failed locally (its QEMU exited, its log cannot be written or
//     parsed) never claims an epoch; while its log channel is up it tells the other
//     copy why, so that a failed primary's backup takes over and a failed backup's
//     primary carries on;
//   - a backup the divergence sentinel trips (its replay diverged from the
//     recording, or stalled past its threshold) steps down the same way, and its
//     primary, healthy, carries on and protects the VM again from a fresh start
//     once that backup's agent answers;
//   - a live copy that learns another host owns a later epoch halts.
//
// A Machine is not safe for concurrent use; drive it from one goroutine or
// under one lock.
package lifecycle

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/ftvmd/ftvmd/arbiter"
)

// State is where a copy is in its lifecycle. String gives the name ftvmd status
// shows.
type State int

const (
	// Starting: the copy is being set up (primary: QEMU, taps, log channel;
	// backup: log, replay config).
	Starting State = iota + 1
	// Protected: a primary whose backup receives its log. Output is held until
	// the backup acknowledges the log before it.
	Protected
	// Replaying: a backup receiving and replaying its primary's log.
	Replaying
	// Degraded: a primary that lost its backup without shared storage. Output
	// stays held until the operator unprotects it.
	Degraded
	// Claiming: the peer was lost; the copy claims the next epoch (the
	// arbiter decides). A primary holds its output throughout.
	Claiming
	// Unprotecting: the operator asked a protected primary to run alone; it
	// claims the next epoch first, output still held.
	Unprotecting
	// HandingOver: a planned failover: the primary pauses its guest, waits for
	// the backup to acknowledge the whole log, halts its output and claims the
	// next epoch for the backup.
	HandingOver
	// Unprotected: a primary running alone (no backup, a won epoch, or the
	// operator's choice). Output flows freely.
	Unprotected
	// GoingLive: a backup that owns the next epoch turns its replay into the
	// live VM.
	GoingLive
	// Live: a backup went live; the VM now runs on this host as a new primary.
	// Terminal for the backup.
	Live
	// HandedOver: a primary that handed the VM over to its backup. Terminal.
	HandedOver
	// Halted: the copy lost the epoch: its output is halted for good and its
	// QEMU killed. Terminal.
	Halted
	// Stopping: the copy is being torn down.
	Stopping
	// Stopped: the copy was torn down. Terminal.
	Stopped
	// Failed: the copy failed locally (the detail says why). Its output is
	// halted and it is torn down. Terminal.
	Failed
	// Syncing: a primary that runs unprotected while a new backup is brought
	// up from a snapshot of its running state (protect a running VM, or
	// re-protect after a failover). Output flows until the backup holds the
	// snapshot and the log since it; then the primary holds output from an
	// exact log offset and, once the backup acknowledged that offset, is
	// Protected.
	Syncing
)

var stateNames = map[State]string{
	Starting: "starting", Protected: "protected", Replaying: "replaying", Degraded: "degraded",
	Claiming: "claiming", Unprotecting: "unprotecting", HandingOver: "handing-over",
	Unprotected: "unprotected", GoingLive: "going-live", Live: "live", HandedOver: "handed-over",
	Halted: "halted", Stopping: "stopping", Stopped: "stopped", Failed: "failed",
	Syncing: "syncing",
}

func (s State) String() string {
	if n, ok := stateNames[s]; ok {
		return n
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Terminal reports whether nothing but a teardown can follow s.
func (s State) Terminal() bool {
	switch s {
	case Live, HandedOver, Halted, Stopped, Failed:
		return true
	}
	return false
}

// EventType names an input.
type EventType int

const (
	// EventStarted: the copy is set up. Epoch is the epoch it is protected
	// under (0 without shared storage), Peer the other copy's host name ("" for
	// a primary that runs alone), Shared whether claims on shared storage fence
	// a failover.
	EventStarted EventType = iota + 1
	// EventPeerLost: the log channel ended. Bye: the peer ended it on purpose;
	// Quit: the peer said it failed (an Error on the channel); otherwise it went
	// silent or the connection broke (Err says how).
	EventPeerLost
	// EventPeerBack: traffic from a lost peer resumed (it cannot undo a claim).
	EventPeerBack
	// EventTick: one unit of time passed (the agent's lifecycle tick).
	EventTick
	// EventClaimWon, EventClaimLost, EventClaimFailed: the result of the
	// ClaimEpoch action whose ID is Claim. Won: Epoch is the epoch won. Lost:
	// Epoch and Owner describe the highest claim (Owner "" if unreadable).
	// Failed: the outcome is unknown (Err).
	EventClaimWon
	EventClaimLost
	EventClaimFailed
	// EventClaimRead: the result of ReadClaim: the highest claim on shared
	// storage (Epoch, Owner, Corrupt), or Err.
	EventClaimRead
	// EventGuestPaused, EventPauseFailed: the result of PauseGuest.
	EventGuestPaused
	EventPauseFailed
	// EventDrained: the result of AwaitDrain: the backup acknowledged the log
	// up to the pause and no output is held.
	EventDrained
	// EventQEMUExited: this copy's QEMU exited (Err: how).
	EventQEMUExited
	// EventLogWriteFailed: the recording QEMU could not write its log (Reason).
	EventLogWriteFailed
	// EventFault: another local failure that ends this copy (Err): the output
	// path, reading or parsing the log, the disk copy, starting QEMU.
	EventFault
	// EventStallEntered, EventStallCleared: the backup's replay stopped making
	// progress with log in hand, or moved again. Reported, not acted on (a stall
	// past the agent's step-down threshold comes as EventSentinel).
	EventStallEntered
	EventStallCleared
	// EventSentinel: (backup) the divergence sentinel found the replay is no
	// protection while the primary is healthy (Reason: what differed, or how long
	// it stalled, and where): it diverged from the recording (console or NIC
	// frames), or stalled longer than the agent's step-down threshold. A
	// replaying backup steps down: it claims nothing, tells its primary why
	// (the reason begins with SentinelMark) and is torn down. A backup whose
	// primary is already lost (claiming, going live) ignores it: the sentinel
	// guards a healthy primary's protection, and go-live decides the rest.
	EventSentinel
	// EventGoLiveDone, EventGoLiveFailed: the result of GoLive.
	EventGoLiveDone
	EventGoLiveFailed
	// EventStop: the copy must stop (the operator, agent shutdown, a failed
	// start). Reason is shown while it stops.
	EventStop
	// EventTeardownDone: the teardown the Teardown action started finished.
	EventTeardownDone
	// EventUnprotect: the operator asks a primary to run alone (Reason).
	EventUnprotect
	// EventHandover: the operator asks for a planned failover to the backup.
	EventHandover
	// EventAbort: the operator stopped waiting for its request; a planned
	// failover that has not claimed yet is called off.
	EventAbort
	// EventEpochSuperseded: (primary) a read of shared storage found a later
	// epoch owned by another host, or by an unknown one (Reason says which): that
	// epoch's owner may run the VM.
	EventEpochSuperseded
	// EventShutdown: the agent is going away (SIGTERM: systemctl stop or
	// restart; Reason says so). A protected primary with shared storage hands
	// the VM over to its backup (as a planned failover does) and then tears
	// down; if the handover cannot finish it fails as a primary whose QEMU died
	// does, so that the backup takes over from the log it holds. Any other copy
	// stops, as on EventStop.
	EventShutdown
	// EventProtect: (primary) protect the VM while it runs, with a new backup
	// on Peer: an unprotected primary starts Syncing.
	EventProtect
	// EventSynced: (primary) the backup holds the snapshot and the log since
	// it, and acknowledged the offset from which output is held: the primary
	// is Protected under Epoch (Shared: claims on shared storage fence a
	// failover). (backup) the primary says so: from now on a lost primary is
	// claimed. Peer (primary, SyncedWith): the new backup's host name, from its
	// answer; Protect knew only its agent's address, and a planned failover
	// claims the epoch for the backup by its host name.
	EventSynced
	// EventSyncFailed: (primary) bringing the backup up failed (Err); the VM
	// runs on unprotected.
	EventSyncFailed
	// EventProbed: (primary) the result of ProbePeer: the peer's agent answered
	// (Err nil) or not.
	EventProbed
	// EventQEMUUnresponsive, EventQEMUAnswers: this copy's QEMU stopped answering
	// the agent's liveness probe (Reason: since when, the last good probe), or
	// answers again. Reported in every role; the only decision it changes is an
	// unprotected primary's automatic re-protection, which starts no attempt while
	// it lasts (each would pause a guest that cannot pause and time out). A
	// protected copy's stall and peer-loss handling stay as they are.
	EventQEMUUnresponsive
	EventQEMUAnswers
)

var eventNames = map[EventType]string{
	EventStarted: "Started", EventPeerLost: "PeerLost", EventPeerBack: "PeerBack", EventTick: "Tick",
	EventClaimWon: "ClaimWon", EventClaimLost: "ClaimLost", EventClaimFailed: "ClaimFailed",
	EventClaimRead: "ClaimRead", EventGuestPaused: "GuestPaused", EventPauseFailed: "PauseFailed",
	EventDrained: "Drained", EventQEMUExited: "QEMUExited", EventLogWriteFailed: "LogWriteFailed",
	EventFault: "Fault", EventStallEntered: "StallEntered", EventStallCleared: "StallCleared",
	EventSentinel:   "Sentinel",
	EventGoLiveDone: "GoLiveDone", EventGoLiveFailed: "GoLiveFailed", EventStop: "Stop",
	EventTeardownDone: "TeardownDone", EventUnprotect: "Unprotect", EventHandover: "Handover",
	EventAbort: "Abort", EventEpochSuperseded: "EpochSuperseded", EventShutdown: "Shutdown",
	EventProtect: "Protect", EventSynced: "Synced", EventSyncFailed: "SyncFailed",
	EventProbed: "Probed", EventQEMUUnresponsive: "QEMUUnresponsive", EventQEMUAnswers: "QEMUAnswers",
}

func (t EventType) String() string {
	if n, ok := eventNames[t]; ok {
		return n
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

func (t EventType) isClaimResult() bool {
	return t == EventClaimWon || t == EventClaimLost || t == EventClaimFailed
}

// Event is one input to Step. Only the fields its type names are read.
type Event struct {
	Type   EventType
	Epoch  uint64
	Peer   string
	Shared bool
	// Sync: (Started, backup) the backup starts from a snapshot of a running
	// VM and is not protecting it until Synced.
	Sync bool
	// Addr: (Started, primary) the backup's agent address, which a primary that
	// outlives its backup re-protects with when that agent answers again.
	Addr string
	Bye  bool
	Quit bool
	// Sentinel: (PeerLost, with Quit) the backup said the divergence sentinel
	// stepped it down (PeerSteppedDown): its agent is up and its copy discarded,
	// so the primary protects the VM again with it by itself.
	Sentinel bool
	Claim    uint64 // claim results: the ClaimEpoch action's ID
	Owner    string
	Corrupt  bool
	Reason   string
	Err      error
}

// Constructors, one per event type.
func Started(epoch uint64, peer string, shared bool) Event {
	return Event{Type: EventStarted, Epoch: epoch, Peer: peer, Shared: shared}
}

// StartedSyncing: a backup set up from a snapshot of a running VM (peer: its
// primary); it claims nothing until Synced.
func StartedSyncing(peer string) Event {
	return Event{Type: EventStarted, Peer: peer, Sync: true}
}
func Protect(peer string) Event { return Event{Type: EventProtect, Peer: peer} }
func Synced(epoch uint64, shared bool) Event {
	return Event{Type: EventSynced, Epoch: epoch, Shared: shared}
}

// SyncedWith is a primary's Synced, with the host name its new backup answered with.
func SyncedWith(epoch uint64, shared bool, backupHost string) Event {
	return Event{Type: EventSynced, Epoch: epoch, Shared: shared, Peer: backupHost}
}
func SyncFailed(err error) Event { return Event{Type: EventSyncFailed, Err: err} }
func Probed(err error) Event     { return Event{Type: EventProbed, Err: err} }

// StartedWith is Started for a primary whose backup's agent is at addr.
func StartedWith(epoch uint64, peer, addr string, shared bool) Event {
	ev := Started(epoch, peer, shared)
	ev.Addr = addr
	return ev
}
func PeerLost(err error) Event { return Event{Type: EventPeerLost, Err: err} }
func PeerBye(err error) Event  { return Event{Type: EventPeerLost, Bye: true, Err: err} }
func PeerQuit(err error) Event { return Event{Type: EventPeerLost, Quit: true, Err: err} }
func PeerBack() Event          { return Event{Type: EventPeerBack} }

// PeerSteppedDown: (primary) the backup ended the channel with an Error whose
// reason begins with SentinelMark (see SteppedDownBySentinel): the divergence
// sentinel stepped it down.
func PeerSteppedDown(err error) Event {
	return Event{Type: EventPeerLost, Quit: true, Sentinel: true, Err: err}
}

// SentinelMark begins the reason a backup stepped down by the divergence
// sentinel sends its primary (EventSentinel's AbortChannel): the primary tells
// such a step-down from other failures by it, and only by it, since the log
// channel's Error carries text.
const SentinelMark = "divergence sentinel: "

// SteppedDownBySentinel reports whether a reason (or error text) a backup sent
// says the divergence sentinel stepped it down.
func SteppedDownBySentinel(reason string) bool { return strings.Contains(reason, SentinelMark) }

// SentinelTripped: (backup) the divergence sentinel found what (EventSentinel).
func SentinelTripped(what string) Event { return Event{Type: EventSentinel, Reason: what} }
func Tick() Event                       { return Event{Type: EventTick} }
func ClaimWon(id, epoch uint64) Event {
	return Event{Type: EventClaimWon, Claim: id, Epoch: epoch}
}
func ClaimLost(id, epoch uint64, owner string) Event {
	return Event{Type: EventClaimLost, Claim: id, Epoch: epoch, Owner: owner}
}
func ClaimFailed(id uint64, err error) Event {
	return Event{Type: EventClaimFailed, Claim: id, Err: err}
}
func ClaimRead(epoch uint64, owner string, corrupt bool, err error) Event {
	return Event{Type: EventClaimRead, Epoch: epoch, Owner: owner, Corrupt: corrupt, Err: err}
}
func GuestPaused() Event                 { return Event{Type: EventGuestPaused} }
func PauseFailed(err error) Event        { return Event{Type: EventPauseFailed, Err: err} }
func Drained() Event                     { return Event{Type: EventDrained} }
func QEMUExited(err error) Event         { return Event{Type: EventQEMUExited, Err: err} }
func LogWriteFailed(reason string) Event { return Event{Type: EventLogWriteFailed, Reason: reason} }
func Fault(err error) Event              { return Event{Type: EventFault, Err: err} }
func StallEntered() Event                { return Event{Type: EventStallEntered} }
func StallCleared() Event                { return Event{Type: EventStallCleared} }
func QEMUUnresponsive(reason string) Event {
	return Event{Type: EventQEMUUnresponsive, Reason: reason}
}
func QEMUAnswers() Event            { return Event{Type: EventQEMUAnswers} }
func GoLiveDone() Event             { return Event{Type: EventGoLiveDone} }
func GoLiveFailed(err error) Event  { return Event{Type: EventGoLiveFailed, Err: err} }
func Stop(reason string) Event      { return Event{Type: EventStop, Reason: reason} }
func Shutdown(reason string) Event  { return Event{Type: EventShutdown, Reason: reason} }
func TeardownDone() Event           { return Event{Type: EventTeardownDone} }
func Unprotect(reason string) Event { return Event{Type: EventUnprotect, Reason: reason} }
func Handover() Event               { return Event{Type: EventHandover} }
func Abort(err error) Event         { return Event{Type: EventAbort, Err: err} }
func EpochSuperseded(reason string) Event {
	return Event{Type: EventEpochSuperseded, Reason: reason}
}

// ActionType names an output.
type ActionType int

const (
	// ActionClaimEpoch: call EpochStore.ClaimNext(vm, Seen, Owner, Reason) and
	// step the result as ClaimWon, ClaimLost or ClaimFailed with Claim (the
	// action's ID). Owner is this host, or the backup's in a planned failover.
	ActionClaimEpoch ActionType = iota + 1
	// ActionReadClaim: (backup) read the highest claim (EpochStore.Current)
	// and step it as ClaimRead.
	ActionReadClaim
	// ActionReleaseOutput: (primary) stop holding output: release what is
	// held, let frames pass, stop pacing and throttling for the backup.
	ActionReleaseOutput
	// ActionHaltOutput: (primary) release nothing, ever again.
	ActionHaltOutput
	// ActionEndChannel: (primary) end the log channel with a Bye, so that the
	// backup stops (or finds its planned-failover claim) instead of claiming.
	ActionEndChannel
	// ActionAbortChannel: end the log channel with an Error saying why (Reason):
	// this copy failed. A backup told so by its primary takes over; a primary
	// told so by its backup carries on. Teardown, which follows, waits for it.
	ActionAbortChannel
	// ActionPauseGuest: (primary) stop the guest's vCPU; step GuestPaused or
	// PauseFailed.
	ActionPauseGuest
	// ActionAwaitDrain: (primary) step Drained once the backup acknowledged
	// the log up to the pause and no output is held. Stop waiting on
	// ResumeGuest or Teardown.
	ActionAwaitDrain
	// ActionResumeGuest: (primary) let the paused guest run again.
	ActionResumeGuest
	// ActionKillQEMU: kill this copy's QEMU now (the copy halted or handed
	// over; another copy owns the VM).
	ActionKillQEMU
	// ActionGoLive: (backup) stop the replay at the last safe cut point and
	// run the VM from there under Epoch; step GoLiveDone or GoLiveFailed.
	ActionGoLive
	// ActionTeardown: stop everything this copy runs and undo its setup; step
	// TeardownDone when finished.
	ActionTeardown
	// ActionReply: the operator's request Op finished; Err is its outcome.
	ActionReply
	// ActionStartSync: (primary) bring up a backup on Peer (an agent address)
	// from the running VM's state (Syncing); step Synced or SyncFailed. Reason
	// says whether the operator asked or the copy re-protects itself.
	ActionStartSync
	// ActionProbePeer: (primary) see whether the agent at Peer answers; step
	// Probed with the result.
	ActionProbePeer
)

var actionNames = map[ActionType]string{
	ActionClaimEpoch: "ClaimEpoch", ActionReadClaim: "ReadClaim", ActionReleaseOutput: "ReleaseOutput",
	ActionHaltOutput: "HaltOutput", ActionEndChannel: "EndChannel", ActionAbortChannel: "AbortChannel", ActionPauseGuest: "PauseGuest",
	ActionAwaitDrain: "AwaitDrain", ActionResumeGuest: "ResumeGuest", ActionKillQEMU: "KillQEMU",
	ActionGoLive: "GoLive", ActionTeardown: "Teardown", ActionReply: "Reply",
	ActionStartSync: "StartSync", ActionProbePeer: "ProbePeer",
}

func (t ActionType) String() string {
	if n, ok := actionNames[t]; ok {
		return n
	}
	return fmt.Sprintf("ActionType(%d)", int(t))
}

// Op names an operator request that is answered with a Reply action.
type Op int

const (
	OpUnprotect Op = iota + 1
	OpHandover
)

func (o Op) String() string {
	switch o {
	case OpUnprotect:
		return "unprotect"
	case OpHandover:
		return "failover"
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// Action is one output the caller must carry out, in order.
type Action struct {
	Type   ActionType
	Claim  uint64 // ClaimEpoch: the ID its result is stepped with
	Seen   uint64 // ClaimEpoch: claim the epoch after Seen
	Owner  string // ClaimEpoch: the claim's owner
	Epoch  uint64 // GoLive: the epoch the VM runs under
	Peer   string // StartSync, ProbePeer: the backup's agent address
	Reason string
	Op     Op    // Reply; ClaimEpoch: the request the claim serves (0: a failover's)
	Err    error // Reply: nil when the request succeeded
}

func (a Action) String() string {
	switch a.Type {
	case ActionClaimEpoch:
		return fmt.Sprintf("ClaimEpoch #%d seen=%d owner=%s", a.Claim, a.Seen, a.Owner)
	case ActionGoLive:
		return fmt.Sprintf("GoLive epoch=%d", a.Epoch)
	case ActionStartSync:
		return fmt.Sprintf("StartSync %s (%s)", a.Peer, a.Reason)
	case ActionProbePeer:
		return fmt.Sprintf("ProbePeer %s", a.Peer)
	case ActionReply:
		if a.Err != nil {
			return fmt.Sprintf("Reply %s: %v", a.Op, a.Err)
		}
		return fmt.Sprintf("Reply %s: ok", a.Op)
	}
	return a.Type.String()
}

// Status is what ftvmd status shows of the lifecycle.
type Status struct {
	State  State
	Detail string
	Epoch  uint64 // the epoch the copy is protected under, or owns
	// Stalled: the backup's replay is stalled (reported; the state is
	// unchanged by it).
	Stalled bool
	// QEMUStuck: why this copy's QEMU is taken for unresponsive ("" while it
	// answers); an unprotected primary's Detail says its re-protection waits.
	QEMUStuck string
}

// Ready is what the caller must act on.
type Ready struct {
	Status Status
	// Changed: Status changed since the last Advance.
	Changed bool
	Actions []Action
}

// Sentinel errors. Step's errors mean the event was ignored; operator requests
// refused with them leave the copy as it was.
var (
	ErrUnknownEvent  = errors.New("lifecycle: unknown event")
	ErrInvalidConfig = errors.New("lifecycle: invalid config")
	// ErrStaleClaim: a claim result that answers no claim in flight.
	ErrStaleClaim = errors.New("lifecycle: result for no claim in flight")
	// ErrUnexpected: a result (paused, drained, go-live, claim read) nobody
	// asked for in this state.
	ErrUnexpected = errors.New("lifecycle: unexpected event")
	// ErrWrongRole: an operator request the copy's role cannot serve.
	ErrWrongRole = errors.New("lifecycle: not for this role")
	// ErrNotProtected: the request needs a protected primary.
	ErrNotProtected = errors.New("not protected")
	// ErrBusy: another operator request is in progress.
	ErrBusy = errors.New("another request is in progress")
	// ErrNoSharedStorage: a planned failover needs shared storage.
	ErrNoSharedStorage = errors.New("planned failover needs shared storage (--shared-dir) on both hosts")
	// ErrTakenOver: the backup owns the next epoch; this copy halted.
	ErrTakenOver = errors.New("the backup already took over")
	// ErrStorage: shared storage did not give an answer; protection unchanged.
	ErrStorage = errors.New("shared storage")
	// ErrHandoverTimeout: the backup did not acknowledge the log up to the
	// pause in time; the guest runs on, protected.
	ErrHandoverTimeout = errors.New("backup did not acknowledge the log up to the pause in time")
	// ErrPeerLost: the backup was lost during the request.
	ErrPeerLost = errors.New("backup lost")
	// ErrStopped: the copy stopped or failed before the request finished.
	ErrStopped = errors.New("stopped")
	// ErrNotUnprotected: protecting a running VM needs a primary that runs
	// unprotected.
	ErrNotUnprotected = errors.New("not running unprotected")
)

// Config configures a Machine.
type Config struct {
	Role arbiter.Role
	Host string // this copy's host: the owner of its claims
	VM   string // for messages
	// LiveEpoch: a primary that continues a backup's replay after a failover,
	// under this epoch (0 otherwise).
	LiveEpoch uint64
	// Reprotect: (with LiveEpoch) the agent address of the lost primary's host:
	// the live copy protects itself again with it once that agent answers.
	Reprotect string
	// Spares: agent addresses of the other hosts named for the VM (its spec's
	// backup_hosts). A copy that runs alone after a failover or a lost backup
	// probes its lost peer first, then these in order, and protects itself with
	// the first that answers: a spare at once, the lost peer only once its agent
	// went away and came back (see Machine.peerDown). The copy's own address may
	// be among them: its agent refuses the probe.
	Spares []string
	// ProbeTicks: how often a copy waiting to re-protect itself probes its peer
	// (DefaultProbeTicks when 0); after a failed protection the wait doubles,
	// up to MaxProbeTicks.
	ProbeTicks int
	// ClaimRetryTicks: the arbiter's wait after a failed failover claim
	// (arbiter default when 0).
	ClaimRetryTicks int
	// HandoverTicks: how long a planned failover waits for the backup to
	// acknowledge the log up to the pause (default 300).
	HandoverTicks int
	// PauseTicks: how long a planned failover waits for the guest to pause
	// (default 50).
	PauseTicks int
	Logger     *slog.Logger // default: discard
}

// DefaultHandoverTicks is Config.HandoverTicks when 0: 30 s at the agent's
// 100 ms tick.
const DefaultHandoverTicks = 300

// DefaultPauseTicks is Config.PauseTicks when 0: 5 s at the agent's 100 ms tick
// (a QMP stop answers in milliseconds; one that does not, answers no more).
const DefaultPauseTicks = 50

// DefaultProbeTicks is Config.ProbeTicks when 0 (1 s at the agent's tick);
// MaxProbeTicks bounds the wait after failed protections (1 min): each attempt
// pauses the guest once for a snapshot.
const (
	DefaultProbeTicks = 10
	MaxProbeTicks     = 600
)

func (c *Config) validate() error {
	if c.Role != arbiter.RolePrimary && c.Role != arbiter.RoleBackup {
		return fmt.Errorf("%w: role %v", ErrInvalidConfig, c.Role)
	}
	if c.Host == "" {
		return fmt.Errorf("%w: empty host", ErrInvalidConfig)
	}
	if c.ProbeTicks < 0 {
		return fmt.Errorf("%w: negative probe ticks %d", ErrInvalidConfig, c.ProbeTicks)
	}
	if c.ProbeTicks == 0 {
		c.ProbeTicks = DefaultProbeTicks
	}
	if c.ClaimRetryTicks < 0 || c.HandoverTicks < 0 || c.PauseTicks < 0 {
		return fmt.Errorf("%w: negative ticks (claim retry %d, handover %d, pause %d)", ErrInvalidConfig, c.ClaimRetryTicks, c.HandoverTicks, c.PauseTicks)
	}
	if c.LiveEpoch > 0 && c.Role != arbiter.RolePrimary {
		return fmt.Errorf("%w: a live epoch is for a primary, role is %v", ErrInvalidConfig, c.Role)
	}
	if c.HandoverTicks == 0 {
		c.HandoverTicks = DefaultHandoverTicks
	}
	if c.PauseTicks == 0 {
		c.PauseTicks = DefaultPauseTicks
	}
	if c.VM == "" {
		c.VM = "vm"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}
