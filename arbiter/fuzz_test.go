package arbiter_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/ftvmd/ftvmd/arbiter"
	"github.com/ftvmd/ftvmd/disk"
)

// fuzzCopy is one copy of the pair, driven as the agent drives it, except that a
// claim the arbiter asks for waits in pending until the fuzzer lets it run, so
// the two copies' claims interleave in any order.
type fuzzCopy struct {
	a       *arbiter.Arbiter
	host    string
	pending []arbiter.Action // ClaimEpoch actions not carried out yet
	running bool             // went live / continues unprotected
	epoch   uint64           // the epoch it runs under
	halted  bool
}

// collect takes the arbiter's actions after a Step.
func (c *fuzzCopy) collect(t *testing.T) {
	t.Helper()
	for c.a.HasReady() {
		rd := c.a.Ready()
		c.a.Advance()
		for _, act := range rd.Actions {
			if c.halted {
				t.Fatalf("%s: action %v after Halt", c.host, act)
			}
			switch act.Type {
			case arbiter.ActionClaimEpoch:
				c.pending = append(c.pending, act)
			case arbiter.ActionGoLive, arbiter.ActionContinueUnprotected:
				if c.running {
					t.Fatalf("%s: %v while already running", c.host, act)
				}
				c.running, c.epoch = true, act.Epoch
			case arbiter.ActionHalt:
				c.running, c.halted = false, true
			default:
				t.Fatalf("%s: unknown action %v", c.host, act)
			}
		}
	}
}

// step feeds ev; an event the arbiter refuses must leave it as it was.
func (c *fuzzCopy) step(t *testing.T, ev arbiter.Event) {
	t.Helper()
	before, epoch := c.a.State(), c.a.Epoch()
	if err := c.a.Step(ev); err != nil {
		if c.a.State() != before || c.a.Epoch() != epoch || c.a.HasReady() {
			t.Fatalf("%s: refused %+v (%v) but moved from %v/%d to %v/%d", c.host, ev, err, before, epoch, c.a.State(), c.a.Epoch())
		}
		if !errors.Is(err, arbiter.ErrNoClaimPending) && !errors.Is(err, arbiter.ErrWrongEpoch) && !errors.Is(err, arbiter.ErrUnknownEvent) {
			t.Fatalf("%s: Step(%+v): undocumented error %v", c.host, ev, err)
		}
	}
	c.collect(t)
}

// FuzzArbiterPair: a primary and a backup that lose sight of each other in any
// order, claim on one shared store in any interleaving, see storage fail (before
// or after it recorded the claim), see the peer come back, and are fed stray claim
// results. Whatever happens: the two copies never run at once, a running copy owns
// its epoch on the store, a halted copy never acts again, and a refused event
// changes nothing.
func FuzzArbiterPair(f *testing.F) {
	f.Add(uint8(1), []byte{0, 2, 1, 3})           // both silent, primary claims first
	f.Add(uint8(0), []byte{1, 0, 3, 2})           // backup first
	f.Add(uint8(5), []byte{0, 4, 8, 8, 8, 2, 10}) // claim fails after the store recorded it, retried
	f.Add(uint8(2), []byte{0, 1, 6, 2, 3, 12, 13, 14, 15})
	f.Fuzz(func(t *testing.T, epoch uint8, ops []byte) {
		store := disk.NewMemStore()
		const vm = "vm1"
		if epoch > 0 {
			for e := uint64(1); e <= uint64(epoch); e++ {
				store.Put(disk.Claim{VM: vm, Epoch: e, Owner: "hosta"})
			}
		}
		newCopy := func(role arbiter.Role, host string) *fuzzCopy {
			a, err := arbiter.New(arbiter.Config{Role: role, Host: host, Epoch: uint64(epoch), ClaimRetryTicks: 2})
			if err != nil {
				t.Fatal(err)
			}
			return &fuzzCopy{a: a, host: host}
		}
		copies := []*fuzzCopy{newCopy(arbiter.RolePrimary, "hosta"), newCopy(arbiter.RoleBackup, "hostb")}
		ctx := context.Background()
		for _, op := range ops {
			c := copies[op&1]
			switch op >> 1 % 8 {
			case 0:
				c.step(t, arbiter.PeerSilent())
			case 1:
				c.step(t, arbiter.PeerBack())
			case 2:
				c.step(t, arbiter.Tick())
			case 3, 4, 5: // carry out the oldest pending claim: normally, failing before, or after the store took it
				if len(c.pending) == 0 {
					continue
				}
				act := c.pending[0]
				c.pending = c.pending[1:]
				if op>>1%8 == 4 {
					c.step(t, arbiter.ClaimFailed(errors.New("storage timed out before the claim")))
					continue
				}
				cl, err := store.ClaimNext(ctx, vm, act.Seen, c.host, act.Reason)
				if op>>1%8 == 5 {
					c.step(t, arbiter.ClaimFailed(fmt.Errorf("storage timed out (claim %v, %v)", cl.Epoch, err)))
					continue
				}
				switch {
				case err == nil:
					c.step(t, arbiter.ClaimWon(cl.Epoch))
				case errors.Is(err, disk.ErrLost):
					c.step(t, arbiter.ClaimLost(cl.Epoch, cl.Owner))
				default:
					c.step(t, arbiter.ClaimFailed(err))
				}
			case 6: // a stray claim result for an epoch that was not claimed
				if op&0x80 == 0 {
					c.step(t, arbiter.ClaimWon(c.a.Epoch()+2+uint64(op)))
				} else {
					c.step(t, arbiter.ClaimLost(c.a.Epoch()-min(c.a.Epoch(), uint64(op&3)), "hostc"))
				}
			case 7: // not an event
				c.step(t, arbiter.Event{Type: arbiter.EventType(-int(op)), Epoch: uint64(op), Winner: "hostc"})
			}
			if copies[0].running && copies[1].running {
				t.Fatalf("both copies run: primary under epoch %d, backup under %d", copies[0].epoch, copies[1].epoch)
			}
			for _, c := range copies {
				if !c.running {
					continue
				}
				cur, err := store.Current(ctx, vm)
				if err != nil || cur.Epoch != c.epoch || cur.Owner != c.host || c.a.Epoch() != c.epoch {
					t.Fatalf("%s runs under epoch %d (arbiter %d), the store says %+v (%v)", c.host, c.epoch, c.a.Epoch(), cur, err)
				}
			}
		}
	})
}

// FuzzResume: at agent restart, a copy runs again only when nobody claimed beyond
// the epoch it was protected under, or it owns the later claim itself; whatever it
// decides starts a valid Arbiter.
func FuzzResume(f *testing.F) {
	f.Add(uint8(1), "hosta", uint64(3), uint64(3), "hostb", false)
	f.Add(uint8(2), "hostb", uint64(3), uint64(4), "hostb", false)
	f.Add(uint8(2), "hostb", uint64(3), uint64(4), "", true)
	f.Add(uint8(1), "hosta", uint64(5), uint64(2), "hosta", false)
	f.Add(uint8(0), "", uint64(0), uint64(0), "", false)
	f.Fuzz(func(t *testing.T, role uint8, host string, protected, current uint64, owner string, corrupt bool) {
		r := arbiter.Role(role % 4)
		d := arbiter.Resume(r, host, protected, arbiter.Claim{Epoch: current, Owner: owner, Corrupt: corrupt})
		if !d.Run {
			if d.State != arbiter.StateHalted || d.Why == "" {
				t.Fatalf("not run, but %+v", d)
			}
			return
		}
		switch {
		case current == protected && d.State == arbiter.StateProtected && d.Epoch == protected:
		case current > protected && !corrupt && owner == host && d.Epoch == current &&
			(r == arbiter.RoleBackup && d.State == arbiter.StateLive || r == arbiter.RolePrimary && d.State == arbiter.StateUnprotected):
		default:
			t.Fatalf("%v %q protected under %d, store at %d by %q (corrupt %v): runs as %+v", r, host, protected, current, owner, corrupt, d)
		}
		a, err := arbiter.New(d.Config(arbiter.Config{Role: r, Host: host}))
		if err != nil || a.State() != d.State || a.Epoch() != d.Epoch {
			t.Fatalf("decision %+v does not start an arbiter: %v", d, err)
		}
	})
}
