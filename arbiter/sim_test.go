package arbiter_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/arbiter"
	"github.com/ftvmd/ftvmd/disk"
)

// copyNode is one copy of the pair driven the way the agent drives it: carry
// out Ready's actions, claim on the shared store, step the result back.
type copyNode struct {
	a       *arbiter.Arbiter
	host    string
	store   disk.EpochStore
	timeout time.Duration

	running  bool // went live / continued unprotected
	halted   bool // halted its VM
	actions  []string
	afterEnd int // actions seen after Halt (must stay 0)
}

func newCopy(t *testing.T, role arbiter.Role, host string, epoch uint64, store disk.EpochStore) *copyNode {
	t.Helper()
	a, err := arbiter.New(arbiter.Config{Role: role, Host: host, Epoch: epoch, ClaimRetryTicks: 2})
	if err != nil {
		t.Fatal(err)
	}
	return &copyNode{a: a, host: host, store: store, timeout: 2 * time.Second}
}

// claimEvent turns a ClaimNext result into the arbiter's event.
func claimEvent(c disk.Claim, err error) arbiter.Event {
	switch {
	case err == nil:
		return arbiter.ClaimWon(c.Epoch)
	case errors.Is(err, disk.ErrLost):
		winner := c.Owner
		if c.Corrupt {
			winner = ""
		}
		return arbiter.ClaimLost(c.Epoch, winner)
	default:
		return arbiter.ClaimFailed(err)
	}
}

// step feeds ev and carries out every resulting action, including the claims
// they lead to, until nothing is left.
func (n *copyNode) step(t *testing.T, ev arbiter.Event) {
	if err := n.a.Step(ev); err != nil {
		t.Errorf("%s: Step(%v): %v", n.host, ev.Type, err)
	}
	for n.a.HasReady() {
		rd := n.a.Ready()
		n.a.Advance()
		for _, act := range rd.Actions {
			n.actions = append(n.actions, act.Type.String())
			if n.halted {
				n.afterEnd++
			}
			switch act.Type {
			case arbiter.ActionClaimEpoch:
				ctx, cancel := context.WithTimeout(context.Background(), n.timeout)
				c, err := n.store.ClaimNext(ctx, "vm", act.Seen, n.host, act.Reason)
				cancel()
				if err := n.a.Step(claimEvent(c, err)); err != nil {
					t.Errorf("%s: claim result: %v", n.host, err)
				}
			case arbiter.ActionGoLive, arbiter.ActionContinueUnprotected:
				n.running = true
			case arbiter.ActionHalt:
				n.running, n.halted = false, true
			}
		}
	}
}

func checkOneWinner(t *testing.T, p, b *copyNode) {
	t.Helper()
	if p.running == b.running || p.halted == b.halted || p.running == p.halted || b.running == b.halted {
		t.Fatalf("want exactly one running copy and one halted:\n primary %s running=%v halted=%v %v\n backup  %s running=%v halted=%v %v",
			p.a.State(), p.running, p.halted, p.actions, b.a.State(), b.running, b.halted, b.actions)
	}
	if p.afterEnd+b.afterEnd != 0 {
		t.Fatalf("actions after Halt: primary %v, backup %v", p.actions, b.actions)
	}
	want := map[bool]arbiter.State{true: arbiter.StateUnprotected, false: arbiter.StateHalted}
	if p.a.State() != want[p.running] {
		t.Fatalf("primary state %v, running=%v", p.a.State(), p.running)
	}
	want[true] = arbiter.StateLive
	if b.a.State() != want[b.running] {
		t.Fatalf("backup state %v, running=%v", b.a.State(), b.running)
	}
}

type storeFactory struct {
	name  string
	new   func(t *testing.T) disk.EpochStore
	iters int
}

func storeFactories() []storeFactory {
	return []storeFactory{
		{"MemStore", func(*testing.T) disk.EpochStore { return disk.NewMemStore() }, 500},
		{"DirStore", func(t *testing.T) disk.EpochStore {
			s, err := disk.NewDirStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			return s
		}, 50},
	}
}

// Both sides notice the silence at the same moment and race on one store.
func TestSimBothSilentAtOnce(t *testing.T) {
	for _, sf := range storeFactories() {
		t.Run(sf.name, func(t *testing.T) {
			wins := map[string]int{}
			for i := range sf.iters {
				store := sf.new(t)
				if _, err := store.ClaimNext(context.Background(), "vm", 0, "hostA", "pair start"); err != nil {
					t.Fatal(err)
				}
				p := newCopy(t, arbiter.RolePrimary, "hostA", 1, store)
				b := newCopy(t, arbiter.RoleBackup, "hostB", 1, store)
				start := make(chan struct{})
				var wg sync.WaitGroup
				for _, n := range []*copyNode{p, b} {
					wg.Go(func() {
						<-start
						n.step(t, arbiter.PeerSilent())
					})
				}
				close(start)
				wg.Wait()
				checkOneWinner(t, p, b)
				// Later the partition heals and everything flaps: nothing changes.
				for _, n := range []*copyNode{p, b} {
					n.step(t, arbiter.PeerBack())
					n.step(t, arbiter.PeerSilent())
					n.step(t, arbiter.Tick())
				}
				checkOneWinner(t, p, b)
				if p.running {
					wins["primary"]++
				} else {
					wins["backup"]++
				}
				if c, err := store.Current(context.Background(), "vm"); err != nil || c.Epoch != 2 {
					t.Fatalf("iteration %d: store at %+v, %v; want epoch 2", i, c, err)
				}
			}
			t.Logf("winners over %d races: %v", sf.iters, wins)
		})
	}
}

// A one-sided partition: the backup stops hearing the primary and wins; the
// primary notices later (no acks) and loses against the already-claimed epoch.
func TestSimOneSidedThenHeal(t *testing.T) {
	store := disk.NewMemStore()
	p := newCopy(t, arbiter.RolePrimary, "hostA", 0, store)
	b := newCopy(t, arbiter.RoleBackup, "hostB", 0, store)
	b.step(t, arbiter.PeerSilent())
	if !b.running || b.a.Epoch() != 1 {
		t.Fatalf("backup: running=%v epoch=%d, want live on epoch 1", b.running, b.a.Epoch())
	}
	p.step(t, arbiter.PeerBack()) // the primary still hears something: no claim yet
	if p.a.State() != arbiter.StateProtected {
		t.Fatalf("primary state %v", p.a.State())
	}
	p.step(t, arbiter.PeerSilent())
	checkOneWinner(t, p, b)
}

// Storage hangs during the partition: nobody can claim, so nobody runs and the
// primary keeps holding output. When storage recovers, exactly one wins.
func TestSimHungStorageThenRecovery(t *testing.T) {
	store := disk.NewMemStore()
	p := newCopy(t, arbiter.RolePrimary, "hostA", 0, store)
	b := newCopy(t, arbiter.RoleBackup, "hostB", 0, store)
	for _, n := range []*copyNode{p, b} {
		n.timeout = 10 * time.Millisecond
	}
	store.SetHung(true)
	for _, n := range []*copyNode{p, b} {
		n.step(t, arbiter.PeerSilent())
		for range 5 {
			n.step(t, arbiter.Tick())
		}
	}
	for _, n := range []*copyNode{p, b} {
		if n.running || n.halted || n.a.State() != arbiter.StateClaiming {
			t.Fatalf("%s during hung storage: state %v running=%v halted=%v", n.host, n.a.State(), n.running, n.halted)
		}
	}
	store.SetHung(false)
	// Ticks until both retried: the first to retry wins, the other loses.
	for range 3 {
		for _, n := range []*copyNode{b, p} {
			n.step(t, arbiter.Tick())
		}
	}
	checkOneWinner(t, p, b)
	if !b.running {
		t.Fatalf("backup retried first and should have won: %v / %v", p.actions, b.actions)
	}
}

// Resume after an agent restart reads the store and refuses to run a copy that
// lost while it was down.
func TestSimResumeAfterRestart(t *testing.T) {
	store := disk.NewMemStore()
	ctx := context.Background()
	if _, err := store.ClaimNext(ctx, "vm", 0, "hostA", "pair start"); err != nil {
		t.Fatal(err)
	}
	// While hostA's agent was down, the backup claimed epoch 2.
	if _, err := store.ClaimNext(ctx, "vm", 1, "hostB", "peer silent"); err != nil {
		t.Fatal(err)
	}
	cur, err := store.Current(ctx, "vm")
	if err != nil {
		t.Fatal(err)
	}
	view := arbiter.Claim{Epoch: cur.Epoch, Owner: cur.Owner, Corrupt: cur.Corrupt}
	for _, tc := range []struct {
		role arbiter.Role
		host string
		run  bool
	}{{arbiter.RolePrimary, "hostA", false}, {arbiter.RoleBackup, "hostB", true}} {
		d := arbiter.Resume(tc.role, tc.host, 1, view)
		if d.Run != tc.run {
			t.Errorf("%s: Resume = %+v, want run=%v", tc.host, d, tc.run)
		}
		t.Log(tc.host, d.Why)
	}
}
