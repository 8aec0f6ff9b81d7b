package agent

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/outputrule"
)

func TestEpochVerdict(t *testing.T) {
	for _, tc := range []struct {
		name     string
		c        disk.Claim
		err      error
		halt     bool
		whyHas   string
		whyEmpty bool
	}{
		{name: "same epoch", c: disk.Claim{Epoch: 3, Owner: "hosta"}, whyEmpty: true},
		{name: "own later claim in flight", c: disk.Claim{Epoch: 4, Owner: "hosta"}, whyEmpty: true},
		{name: "later epoch elsewhere", c: disk.Claim{Epoch: 4, Owner: "hostb", Reason: "forced run"}, halt: true, whyHas: `"hostb"`},
		{name: "far later epoch elsewhere", c: disk.Claim{Epoch: 9, Owner: "hostc"}, halt: true, whyHas: "epoch 9"},
		{name: "later corrupt claim", c: disk.Claim{Epoch: 4, Corrupt: true}, halt: true, whyHas: "unknown owner"},
		{name: "store behind", c: disk.Claim{Epoch: 2, Owner: "hosta"}, whyHas: "behind"},
		{name: "no epoch at all", err: disk.ErrNoEpoch, whyHas: "no epoch"},
		{name: "storage hung", err: disk.ErrStorageTimeout, whyHas: "cannot read"},
	} {
		halt, why := epochVerdict("hosta", 3, tc.c, tc.err)
		if halt != tc.halt || (tc.whyEmpty && why != "") || !strings.Contains(why, tc.whyHas) {
			t.Errorf("%s: halt=%v why=%q, want halt=%v why containing %q", tc.name, halt, why, tc.halt, tc.whyHas)
		}
	}
}

// liveCopy is an unprotected primary of vm1 on hosta, live under epoch 1 of store,
// checking its epoch every 20 ms with a 100 ms deadline.
func liveCopy(t *testing.T, store *disk.MemStore) (*primary, *fakeOut) {
	t.Helper()
	a := testAgent(t, "hosta", "")
	a.store = store
	e, err := claimFirst(context.Background(), store, "vm1", "hosta")
	if err != nil {
		t.Fatal(err)
	}
	p := testPrimary(t, a, "")
	p.epoch = e
	if err := p.life.start(e, "", false); err != nil {
		t.Fatal(err)
	}
	p.epochEvery, p.epochTimeout = 20*time.Millisecond, 100*time.Millisecond
	out := new(fakeOut)
	p.out = out
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.go1(func() { p.watchEpoch(ctx) })
	t.Cleanup(func() { _ = p.stop(context.Background()) })
	return p, out
}

// A live copy halts (output first) when another host claims a later epoch (before:
// it ran on beside the new owner: two live copies).
func TestLiveCopyHaltsOnLaterEpoch(t *testing.T) {
	store := disk.NewMemStore()
	p, out := liveCopy(t, store)
	time.Sleep(100 * time.Millisecond)
	if st := p.status(); st.State != "unprotected" || st.EpochCheck != "" {
		t.Fatalf("before the claim: %q %q", st.State, st.EpochCheck)
	}
	if _, err := store.ClaimNext(context.Background(), "vm1", 1, "hostb", "run --force"); err != nil {
		t.Fatal(err)
	}
	waitState(t, p, "halted")
	if st := p.status(); !strings.Contains(st.Detail, `"hostb"`) {
		t.Fatalf("detail %q: want the new owner", st.Detail)
	}
	if m := out.last(); m != outputrule.Halted {
		t.Fatalf("output %v, want halted", m)
	}
}

// Its own later claim (the primary claims the next epoch when its backup is lost or
// on unprotect) is not a reason to halt.
func TestLiveCopyIgnoresItsOwnClaim(t *testing.T) {
	store := disk.NewMemStore()
	p, _ := liveCopy(t, store)
	if _, err := store.ClaimNext(context.Background(), "vm1", 1, "hosta", "unprotect"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	if st := p.status(); st.State != "unprotected" {
		t.Fatalf("state %q after its own claim", st.State)
	}
}

// Storage that hangs does not wedge the copy: each read ends at its deadline, the copy
// carries on and status says the check cannot read the store; a stop ends at once;
// the note clears when storage answers again.
func TestLiveCopyCarriesOnWhenStoreHangs(t *testing.T) {
	store := disk.NewMemStore()
	p, out := liveCopy(t, store)
	store.SetHung(true)
	deadline := time.Now().Add(3 * time.Second)
	for p.status().EpochCheck == "" {
		if time.Now().After(deadline) {
			t.Fatal("status does not say the epoch check fails on hung storage")
		}
		time.Sleep(10 * time.Millisecond)
	}
	st := p.status()
	if st.State != "unprotected" || !strings.Contains(st.EpochCheck, "cannot read") {
		t.Fatalf("on hung storage: %q %q", st.State, st.EpochCheck)
	}
	if m := out.last(); m != 0 {
		t.Fatalf("output mode set to %v on hung storage", m)
	}
	store.SetHung(false)
	deadline = time.Now().Add(3 * time.Second)
	for p.status().EpochCheck != "" {
		if time.Now().After(deadline) {
			t.Fatal("the note stays after storage answers again")
		}
		time.Sleep(10 * time.Millisecond)
	}
	store.SetHung(true)
	defer store.SetHung(false)
	time.Sleep(50 * time.Millisecond) // a read is blocked now
	sctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := p.stop(sctx); err != nil {
		t.Fatalf("stop with a read blocked on hung storage: %v", err)
	}
}
