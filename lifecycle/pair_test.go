package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/arbiter"
	"github.com/ftvmd/ftvmd/disk"
)

// The pair harness drives a primary ("a") and its backup ("b") the way two agents
// do: each copy's actions are carried out later, in order, at moments the test
// picks, against one shared disk.MemStore; a Bye reaches the other copy; claims
// fail, or fail after taking effect, when the test says so. After every step it
// checks the rules the package promises (see the package comment).

type side struct {
	name  string
	m     *Machine
	queue []Action // actions not carried out yet, in order

	outputHalted bool // a HaltOutput was emitted
	faulted      bool // a local fault ended the copy
}

type pair struct {
	tb     testing.TB
	store  *disk.MemStore
	shared bool
	p, b   *side
	// liveIn records, for each epoch, the copy that ran with output in it.
	liveIn map[uint64]string
	trace  []string
}

const pairVM = "vm1"

func newPair(tb testing.TB, shared bool) *pair {
	tb.Helper()
	pr := &pair{tb: tb, store: disk.NewMemStore(), shared: shared, liveIn: map[uint64]string{}}
	var epoch uint64
	if shared {
		c, err := pr.store.ClaimNext(context.Background(), pairVM, 0, "a", "protect")
		if err != nil {
			tb.Fatal(err)
		}
		epoch = c.Epoch
	}
	mk := func(role arbiter.Role, host string) *side {
		m, err := New(Config{Role: role, Host: host, VM: pairVM, ClaimRetryTicks: 2, HandoverTicks: 5})
		if err != nil {
			tb.Fatal(err)
		}
		return &side{name: host, m: m}
	}
	pr.p, pr.b = mk(arbiter.RolePrimary, "a"), mk(arbiter.RoleBackup, "b")
	pr.step(pr.p, Started(epoch, "b", shared))
	pr.step(pr.b, Started(epoch, "a", shared))
	return pr
}

func (pr *pair) other(s *side) *side {
	if s == pr.p {
		return pr.b
	}
	return pr.p
}

func (pr *pair) failf(format string, args ...any) {
	pr.tb.Helper()
	pr.tb.Fatalf("%s\ntrace:\n  %s", fmt.Sprintf(format, args...), strings.Join(pr.trace, "\n  "))
}

var sentinels = []error{ErrUnknownEvent, ErrStaleClaim, ErrUnexpected, ErrWrongRole, ErrNotProtected,
	ErrBusy, ErrNoSharedStorage, arbiter.ErrWrongEpoch, arbiter.ErrNoClaimPending}

// step feeds ev to s and checks what it decided.
func (pr *pair) step(s *side, ev Event) {
	pr.tb.Helper()
	before := s.m.State()
	err := s.m.Step(ev)
	rd := s.m.Ready()
	s.m.Advance()
	line := fmt.Sprintf("%s %v: %v -> %v %q", s.name, ev.Type, before, rd.Status.State, rd.Status.Detail)
	for _, a := range rd.Actions {
		line += " | " + a.String()
	}
	if err != nil {
		line += " ! " + err.Error()
	}
	pr.trace = append(pr.trace, line)
	if err != nil {
		known := false
		for _, e := range sentinels {
			known = known || errors.Is(err, e)
		}
		if !known {
			pr.failf("%s: Step(%v) returned an error that wraps no sentinel: %v", s.name, ev.Type, err)
		}
	}
	if before.Terminal() && rd.Status.State != before {
		pr.failf("%s left terminal state %v for %v", s.name, before, rd.Status.State)
	}
	switch ev.Type {
	case EventQEMUExited, EventLogWriteFailed, EventFault:
		// A local fault of a running copy (go-live owns the backup's replay).
		if !before.Terminal() && before != Stopping && before != GoingLive {
			s.faulted = true
		}
	case EventGoLiveFailed:
		if before == GoingLive {
			s.faulted = true
		}
	case EventSentinel:
		// A backup the sentinel stepped down is no protection: it must never claim.
		if before == Replaying && rd.Status.State == Failed {
			s.faulted = true
		}
	}
	if ev.Type == EventStarted && s == pr.p && rd.Status.State == Protected && pr.shared {
		pr.liveIn[rd.Status.Epoch] = "a"
	}
	for _, a := range rd.Actions {
		pr.check(s, rd.Status, a)
		s.queue = append(s.queue, a)
	}
}

func (pr *pair) check(s *side, st Status, a Action) {
	pr.tb.Helper()
	switch a.Type {
	case ActionClaimEpoch:
		if s.faulted {
			pr.failf("%s claims an epoch after it failed locally", s.name)
		}
	case ActionHaltOutput:
		s.outputHalted = true
	case ActionReleaseOutput:
		if s != pr.p {
			pr.failf("a backup released output")
		}
		if pr.shared {
			c, err := pr.store.Current(context.Background(), pairVM)
			if err != nil || c.Corrupt || c.Epoch != st.Epoch || c.Owner != "a" {
				pr.failf("primary releases output under epoch %d, the store holds %+v (%v)", st.Epoch, c, err)
			}
		}
		if st.State != Unprotected {
			pr.failf("primary released output in state %v", st.State)
		}
		if s.outputHalted {
			pr.failf("primary released output after halting it")
		}
		pr.runs("a", st.Epoch)
	case ActionGoLive:
		if s != pr.b {
			pr.failf("a primary went live")
		}
		c, err := pr.store.Current(context.Background(), pairVM)
		if err != nil || c.Corrupt || c.Epoch != a.Epoch || c.Owner != "b" {
			pr.failf("backup goes live under epoch %d, the store holds %+v (%v)", a.Epoch, c, err)
		}
		pr.runs("b", a.Epoch)
	}
}

// runs records that host runs the VM with output under epoch (0: no shared
// storage, no epochs to compare).
func (pr *pair) runs(host string, epoch uint64) {
	pr.tb.Helper()
	if epoch == 0 {
		return
	}
	if other, ok := pr.liveIn[epoch]; ok && other != host {
		pr.failf("two copies run with output in epoch %d: %s and %s", epoch, other, host)
	}
	pr.liveIn[epoch] = host
}

// watchEpoch is the primary's periodic read of shared storage: a later epoch that
// another host owns supersedes it.
func (pr *pair) watchEpoch() {
	pr.tb.Helper()
	if !pr.shared {
		return
	}
	c, err := pr.store.Current(context.Background(), pairVM)
	if err == nil && c.Epoch > pr.p.m.Status().Epoch && c.Owner != "a" {
		pr.step(pr.p, EpochSuperseded(fmt.Sprintf("epoch %d was claimed by %q", c.Epoch, c.Owner)))
	}
}

// Ways to carry out an action, picked by the test.
const (
	doNormal = iota
	doFail   // the claim fails, the pause fails, go-live fails, the drain never comes
	doApplyThenFail
	doHow
)

// carry carries out s's oldest action and steps back its result.
func (pr *pair) carry(s *side, how int) {
	pr.tb.Helper()
	if len(s.queue) == 0 {
		return
	}
	a := s.queue[0]
	s.queue = s.queue[1:]
	ctx := context.Background()
	switch a.Type {
	case ActionClaimEpoch:
		if how == doFail {
			pr.step(s, ClaimFailed(a.Claim, disk.ErrStorageTimeout))
			return
		}
		c, err := pr.store.ClaimNext(ctx, pairVM, a.Seen, a.Owner, a.Reason)
		switch {
		case how == doApplyThenFail:
			// A timed-out claim that completed in the background.
			pr.step(s, ClaimFailed(a.Claim, disk.ErrStorageTimeout))
		case err == nil:
			pr.step(s, ClaimWon(a.Claim, c.Epoch))
		case errors.Is(err, disk.ErrLost):
			owner := c.Owner
			if c.Corrupt {
				owner = ""
			}
			pr.step(s, ClaimLost(a.Claim, c.Epoch, owner))
		default:
			pr.step(s, ClaimFailed(a.Claim, err))
		}
	case ActionReadClaim:
		c, err := pr.store.Current(ctx, pairVM)
		if how == doFail {
			err = disk.ErrStorageTimeout
		}
		pr.step(s, ClaimRead(c.Epoch, c.Owner, c.Corrupt, err))
	case ActionPauseGuest:
		if how == doFail {
			pr.step(s, PauseFailed(errors.New("qmp stop timed out")))
		} else {
			pr.step(s, GuestPaused())
		}
	case ActionAwaitDrain:
		if how != doFail {
			pr.step(s, Drained())
		}
	case ActionGoLive:
		if how == doFail {
			pr.step(s, GoLiveFailed(errors.New("replay stalled before the cut")))
		} else {
			pr.step(s, GoLiveDone())
		}
	case ActionTeardown:
		pr.step(s, TeardownDone())
	case ActionEndChannel:
		if o := pr.other(s); !o.m.State().Terminal() {
			pr.step(o, PeerBye(errors.New("peer closed the channel")))
		}
	case ActionAbortChannel:
		if o := pr.other(s); !o.m.State().Terminal() {
			err := fmt.Errorf("peer reported an error: %s", a.Reason)
			if SteppedDownBySentinel(a.Reason) {
				pr.step(o, PeerSteppedDown(err))
			} else {
				pr.step(o, PeerQuit(err))
			}
		}
	case ActionKillQEMU:
		pr.step(s, QEMUExited(errors.New("signal: killed")))
	}
}

var primaryEvents = []func(a byte, m *Machine) Event{
	func(byte, *Machine) Event { return PeerLost(errors.New("peer silent")) },
	func(byte, *Machine) Event { return PeerBack() },
	func(byte, *Machine) Event { return Tick() },
	func(byte, *Machine) Event { return QEMUExited(errors.New("signal: killed")) },
	func(byte, *Machine) Event { return LogWriteFailed("No space left on device") },
	func(byte, *Machine) Event { return Fault(errors.New("network output path: closed")) },
	func(byte, *Machine) Event { return Stop("") },
	func(byte, *Machine) Event { return Unprotect("operator request") },
	func(byte, *Machine) Event { return Handover() },
	func(byte, *Machine) Event { return Abort(context.Canceled) },
	func(byte, *Machine) Event { return StallEntered() },
	func(byte, *Machine) Event { return GuestPaused() },
	func(byte, *Machine) Event { return Drained() },
	// A result that answers no claim in flight (a forged or stale one).
	func(a byte, m *Machine) Event { return ClaimWon(m.claimID+1+uint64(a%3), uint64(a%8)) },
	func(a byte, m *Machine) Event { return ClaimLost(m.claimID+1, uint64(a%8), "b") },
	func(byte, *Machine) Event { return Event{Type: EventType(200)} },
	func(byte, *Machine) Event { return PeerQuit(errors.New("backup stepped down")) },
	func(byte, *Machine) Event { return PeerSteppedDown(errors.New(SentinelMark + "replay diverged")) },
	func(byte, *Machine) Event { return Probed(nil) },
	func(byte, *Machine) Event { return SentinelTripped("on the wrong role") },
	func(byte, *Machine) Event { return EpochSuperseded("a forged later epoch") },
	func(byte, *Machine) Event { return Shutdown("agent shutting down") },
	func(byte, *Machine) Event { return PauseFailed(errors.New("qmp stop timed out")) },
	func(byte, *Machine) Event { return QEMUUnresponsive("qemu not answering since 20:25:24") },
	func(byte, *Machine) Event { return QEMUAnswers() },
}

var backupEvents = []func(a byte, m *Machine) Event{
	func(byte, *Machine) Event { return PeerLost(errors.New("peer silent")) },
	func(byte, *Machine) Event { return PeerBye(errors.New("peer closed the channel")) },
	func(byte, *Machine) Event { return PeerBack() },
	func(byte, *Machine) Event { return Tick() },
	func(byte, *Machine) Event { return QEMUExited(errors.New("signal: killed")) },
	func(byte, *Machine) Event { return Fault(errors.New("received log does not parse")) },
	func(byte, *Machine) Event { return Stop("") },
	func(byte, *Machine) Event { return StallEntered() },
	func(byte, *Machine) Event { return StallCleared() },
	func(byte, *Machine) Event { return GoLiveDone() },
	func(byte, *Machine) Event { return Unprotect("") },
	func(byte, *Machine) Event { return PeerQuit(errors.New("primary failed")) },
	func(byte, *Machine) Event { return SentinelTripped("replay stalled for 10 s at icount 7") },
	func(byte, *Machine) Event { return Shutdown("agent shutting down") },
	func(a byte, m *Machine) Event { return ClaimWon(m.claimID+1, uint64(a%8)) },
	func(a byte, m *Machine) Event {
		if m.reading {
			return Tick() // a forged claim read while one is awaited is the store's word, not an event to test
		}
		return ClaimRead(uint64(a%8), "b", false, nil)
	},
	func(byte, *Machine) Event { return QEMUUnresponsive("qemu not answering since 20:25:24") },
	func(byte, *Machine) Event { return QEMUAnswers() },
}

// run interprets ops as a sequence of (operation, argument) byte pairs.
func (pr *pair) run(ops []byte) {
	pr.tb.Helper()
	for i := 0; i+1 < len(ops); i += 2 {
		op, arg := ops[i], ops[i+1]
		switch op % 7 {
		case 0:
			pr.carry(pr.p, int(arg)%doHow)
		case 1:
			pr.carry(pr.b, int(arg)%doHow)
		case 2:
			pr.step(pr.p, primaryEvents[int(arg)%len(primaryEvents)](arg/16, pr.p.m))
		case 3:
			pr.step(pr.b, backupEvents[int(arg)%len(backupEvents)](arg/16, pr.b.m))
		case 4:
			for range arg%4 + 1 {
				pr.step(pr.p, Tick())
				pr.step(pr.b, Tick())
			}
		case 5:
			// A partition: each side loses the other.
			pr.step(pr.p, PeerLost(errors.New("peer silent")))
			pr.step(pr.b, PeerLost(errors.New("peer silent")))
		case 6:
			pr.watchEpoch()
		}
	}
	// Let everything still queued complete normally, as time goes on.
	for range 200 {
		if len(pr.p.queue) == 0 && len(pr.b.queue) == 0 {
			break
		}
		pr.carry(pr.p, doNormal)
		pr.carry(pr.b, doNormal)
		pr.step(pr.p, Tick())
		pr.step(pr.b, Tick())
	}
}

// FuzzPair drives both copies of a pair with random events and results: never
// two copies with output in one epoch, never output released while not
// unprotected or after it was halted, no claim after a local failure, no
// terminal state left, every error a sentinel, no panic.
func FuzzPair(f *testing.F) {
	f.Add(true, []byte{2, 0, 0, 0, 0, 0})                   // backup lost, claim won
	f.Add(true, []byte{5, 0, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0}) // partition, both claim
	f.Add(true, []byte{2, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // planned failover
	f.Add(true, []byte{2, 7, 0, 2, 3, 1, 1, 0})             // unprotect applied then failed
	f.Add(true, []byte{3, 4, 3, 0, 1, 0, 2, 0, 0, 0})       // backup QEMU dies, then the channel
	f.Add(false, []byte{2, 0, 2, 7, 0, 0})                  // no shared storage
	f.Fuzz(func(t *testing.T, shared bool, ops []byte) {
		newPair(t, shared).run(ops)
	})
}

// TestPairRandom runs the fuzz target's checks over many random sequences, so that
// a plain go test explores beyond the seed corpus.
func TestPairRandom(t *testing.T) {
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	n := 3000
	if testing.Short() {
		n = 300
	}
	for range n {
		ops := make([]byte, 2*(1+rng.Intn(80)))
		rng.Read(ops)
		shared := rng.Intn(5) > 0
		pr := newPair(t, shared)
		pr.run(ops)
	}
}

// Scenarios over the pair, end to end through the shared store.
func TestPairScenarios(t *testing.T) {
	type want struct{ p, b State }
	for _, tc := range []struct {
		name string
		ops  func(pr *pair)
		want want
	}{
		{"partition: both claim, the first claim wins, the other halts", func(pr *pair) {
			pr.step(pr.p, PeerLost(errors.New("peer silent")))
			pr.step(pr.b, PeerLost(errors.New("peer silent")))
			pr.carry(pr.b, doNormal) // the backup's claim lands first
			pr.carry(pr.p, doNormal)
		}, want{Halted, GoingLive}},
		{"planned failover", func(pr *pair) {
			pr.step(pr.p, Handover())
			pr.carry(pr.p, doNormal) // paused
			pr.carry(pr.p, doNormal) // drained
			pr.carry(pr.p, doNormal) // output halted
			pr.carry(pr.p, doNormal) // claim for b
			pr.carry(pr.p, doNormal) // Bye
			pr.carry(pr.b, doNormal) // read claim: it is b's
		}, want{HandedOver, GoingLive}},
		{"planned failover whose claim timed out after landing: the primary halts, the backup goes live", func(pr *pair) {
			pr.step(pr.p, Handover())
			pr.carry(pr.p, doNormal)
			pr.carry(pr.p, doNormal)
			pr.carry(pr.p, doNormal)
			pr.carry(pr.p, doApplyThenFail)
			pr.step(pr.b, PeerLost(errors.New("peer silent"))) // the halted primary goes silent
			pr.carry(pr.b, doNormal)                           // b's retry of its own claim wins
		}, want{Halted, GoingLive}},
		{"the primary's agent shuts down: it hands the VM over, the backup goes live", func(pr *pair) {
			pr.step(pr.p, Shutdown("agent shutting down"))
			pr.carry(pr.p, doNormal) // paused
			pr.carry(pr.p, doNormal) // drained
			pr.carry(pr.p, doNormal) // output halted
			pr.carry(pr.p, doNormal) // claim for b
			pr.carry(pr.p, doNormal) // Bye
			pr.carry(pr.p, doNormal) // QEMU killed
			pr.carry(pr.p, doNormal) // torn down
			pr.carry(pr.b, doNormal) // read claim: it is b's
		}, want{HandedOver, GoingLive}},
		{"the primary's agent shuts down and the guest does not pause: it fails, the backup takes over", func(pr *pair) {
			pr.step(pr.p, Shutdown("agent shutting down"))
			pr.carry(pr.p, doFail)   // the pause fails
			pr.carry(pr.p, doNormal) // output halted
			pr.carry(pr.p, doNormal) // AbortChannel: the backup hears the primary failed
			pr.carry(pr.b, doNormal) // its claim wins
		}, want{Failed, GoingLive}},
		{"the primary's agent shuts down and the backup never acknowledges: it fails, the backup takes over", func(pr *pair) {
			pr.step(pr.p, Shutdown("agent shutting down"))
			pr.carry(pr.p, doNormal) // paused
			pr.carry(pr.p, doFail)   // the drain never comes
			for range 5 {            // HandoverTicks
				pr.step(pr.p, Tick())
			}
			pr.carry(pr.p, doNormal) // output halted
			pr.carry(pr.p, doNormal) // AbortChannel
			pr.carry(pr.b, doNormal) // its claim wins
		}, want{Failed, GoingLive}},
		{"the backup's agent shuts down: the primary claims and carries on", func(pr *pair) {
			pr.step(pr.b, Shutdown("agent shutting down"))
			pr.step(pr.p, PeerLost(errors.New("peer closed the channel")))
			pr.carry(pr.p, doNormal)
		}, want{Unprotected, Stopping}},
		{"unprotect: the backup finds the primary's claim and stops", func(pr *pair) {
			pr.step(pr.p, Unprotect("operator request"))
			pr.carry(pr.p, doNormal) // claim won
			pr.carry(pr.p, doNormal) // release
			pr.carry(pr.p, doNormal) // Bye
			pr.carry(pr.b, doNormal) // read claim: the primary's
		}, want{Unprotected, Stopping}},
		{"the backup's QEMU dies: it steps down, the primary claims and carries on", func(pr *pair) {
			pr.step(pr.b, QEMUExited(errors.New("signal: killed")))
			pr.step(pr.b, PeerLost(errors.New("connection reset")))
			pr.step(pr.p, PeerLost(errors.New("connection reset")))
			pr.carry(pr.p, doNormal)
		}, want{Unprotected, Failed}},
		{"the sentinel steps the backup down: it tells the primary, which claims and carries on", func(pr *pair) {
			pr.step(pr.b, SentinelTripped("replay stalled for 10 s at icount 7, log offset 4096"))
			pr.carry(pr.b, doNormal) // AbortChannel: the primary hears it was the sentinel
			pr.carry(pr.p, doNormal) // the primary's claim wins
			pr.carry(pr.b, doNormal) // torn down
			for range 50 {           // ticks: the stepped-down backup never claims
				pr.step(pr.p, Tick())
				pr.step(pr.b, Tick())
				pr.carry(pr.p, doNormal)
				pr.carry(pr.b, doNormal)
			}
		}, want{Unprotected, Failed}},
		{"the primary's QEMU dies: it tells the backup, which takes over", func(pr *pair) {
			pr.step(pr.p, QEMUExited(errors.New("signal: killed")))
			pr.carry(pr.p, doNormal) // output halted
			pr.carry(pr.p, doNormal) // AbortChannel: the backup hears the primary failed
			pr.carry(pr.b, doNormal) // its claim wins
		}, want{Failed, GoingLive}},
		{"a forced start elsewhere: the primary halts at its next epoch read, the backup stops", func(pr *pair) {
			if _, err := pr.store.ClaimNext(context.Background(), pairVM, 1, "c", "run --force"); err != nil {
				pr.tb.Fatal(err)
			}
			pr.watchEpoch()
			pr.carry(pr.p, doNormal) // output halted
			pr.carry(pr.p, doNormal) // Bye
			pr.carry(pr.b, doNormal) // read claim: c's
		}, want{Halted, Stopping}},
		{"go-live fails: the backup says so; nobody else runs the epoch", func(pr *pair) {
			pr.step(pr.p, QEMUExited(errors.New("signal: killed")))
			pr.step(pr.b, PeerLost(errors.New("peer silent")))
			pr.carry(pr.b, doNormal)
			pr.carry(pr.b, doFail)
		}, want{Failed, Failed}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pr := newPair(t, true)
			tc.ops(pr)
			if p, b := pr.p.m.State(), pr.b.m.State(); p != tc.want.p || b != tc.want.b {
				t.Fatalf("primary %v, backup %v; want %v, %v\ntrace:\n  %s", p, b, tc.want.p, tc.want.b, strings.Join(pr.trace, "\n  "))
			}
		})
	}
}
