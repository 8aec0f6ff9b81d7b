package agent

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/disk"
)

func TestOwnerProblem(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name string
		c    disk.Claim
		err  error
		want string // "" or a part of the problem
	}{
		{"never claimed", disk.Claim{}, disk.ErrNoEpoch, ""},
		{"owned here", disk.Claim{VM: "vm1", Epoch: 4, Owner: "hosta"}, nil, ""},
		{"owned elsewhere", disk.Claim{VM: "vm1", Epoch: 5, Owner: "hostb", ClaimedAt: at, Reason: "peer silent"}, nil, `host "hostb" owns vm vm1 since epoch 5`},
		{"corrupt", disk.Claim{VM: "vm1", Epoch: 5, Corrupt: true}, nil, "unreadable claim"},
		{"storage hung", disk.Claim{}, disk.ErrStorageTimeout, "cannot say who owns"},
	} {
		got := ownerProblem("hosta", "vm1", tc.c, tc.err)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// ownedElsewhere is an agent on hosta with vm1 defined, whose latest epoch on the
// store is 2, owned by hostb (where vm1 went live after a failover).
func ownedElsewhere(t *testing.T) (*Agent, *disk.MemStore) {
	t.Helper()
	a := testAgent(t, "hosta", "")
	store := disk.NewMemStore()
	a.store = store
	for i, owner := range []string{"hosta", "hostb"} {
		if _, err := store.ClaimNext(context.Background(), "vm1", uint64(i), owner, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.specs.Save(validSpec(t, "vm1")); err != nil {
		t.Fatal(err)
	}
	return a, store
}

// run and protect refuse while another host owns the VM's latest epoch (before: they
// started a second live copy of a VM that had failed over), and say how to override.
func TestStartRefusedWhileAnotherHostOwnsTheVM(t *testing.T) {
	for _, req := range []control.Request{
		{Op: control.OpRun, VM: "vm1"},
		{Op: control.OpProtect, VM: "vm1", Backup: "127.0.0.1:1"},
	} {
		a, store := ownedElsewhere(t)
		resp := a.handle(context.Background(), req)
		if resp.OK || !strings.Contains(resp.Error, `host "hostb" owns vm vm1 since epoch 2`) || !strings.Contains(resp.Error, "--force") {
			t.Fatalf("%s: %+v, want a refusal naming hostb and --force", req.Op, resp)
		}
		if _, running := a.lookup("vm1"); running {
			t.Fatalf("%s: the refused vm is registered", req.Op)
		}
		if c, _ := store.Current(context.Background(), "vm1"); c.Epoch != 2 {
			t.Fatalf("%s: a refused start claimed epoch %d", req.Op, c.Epoch)
		}
	}
}

// --force starts anyway, loudly: a WARN naming what it overrode, which status shows;
// the start then claims the next epoch, which makes the other copy halt.
func TestForcedStartOverridesLoudly(t *testing.T) {
	a, store := ownedElsewhere(t)
	logs := captureLog(t, a)
	own, err := a.checkOwner(context.Background(), "vm1", true)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(own.forced, "hostb") || !own.known || own.seen != 2 {
		t.Fatalf("ownership %+v", own)
	}
	if l := logs.String(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, "forced start") {
		t.Fatalf("no WARN for the forced start in %q", l)
	}
	e, err := claimOwn(context.Background(), store, "vm1", "hosta", own, "run")
	if err != nil || e != 3 {
		t.Fatalf("claim after force: %d %v, want epoch 3", e, err)
	}
	p := testPrimary(t, a, "")
	p.own = own
	if st := p.status(); st.Forced != own.forced {
		t.Fatalf("status forced %q, want %q", st.Forced, own.forced)
	}
}

// Two hosts that pass the owner check at once cannot both start: the claim is made
// after the epoch the check saw.
func TestClaimAfterCheckLosesToAnotherStart(t *testing.T) {
	a := testAgent(t, "hosta", "")
	store := disk.NewMemStore()
	a.store = store
	own, err := a.checkOwner(context.Background(), "vm1", false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.ClaimNext(context.Background(), "vm1", 0, "hostb", "run"); err != nil {
		t.Fatal(err)
	}
	if _, err := claimOwn(context.Background(), store, "vm1", "hosta", own, "run"); !errors.Is(err, errOwnedElsewhere) {
		t.Fatalf("claim after another host's start: %v, want %v", err, errOwnedElsewhere)
	}
}

// Storage that does not answer refuses a start too (who owns the VM is unknown), within
// the check's deadline.
func TestStartRefusedOnHungStorage(t *testing.T) {
	a := testAgent(t, "hosta", "")
	store := disk.NewMemStore()
	a.store = store
	store.SetHung(true)
	defer store.SetHung(false)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	_, err := a.checkOwner(ctx, "vm1", false)
	if !errors.Is(err, errOwnedElsewhere) || !strings.Contains(err.Error(), "cannot say who owns") {
		t.Fatalf("hung storage: %v", err)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("the check took %s", d)
	}
}

// `ftvmd run` claims the next epoch, so that the latest epoch names the host that
// runs the VM (other hosts' owner checks read it, a copy live elsewhere halts); a
// forced run whose check could not read the store runs without one.
func TestRunClaimsAnEpoch(t *testing.T) {
	a := testAgent(t, "hosta", "")
	store := disk.NewMemStore()
	a.store = store
	own, err := a.checkOwner(context.Background(), "vm1", false)
	if err != nil {
		t.Fatal(err)
	}
	p := testPrimary(t, a, "")
	p.own = own
	if err := p.claimUnprotected(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c, err := store.Current(context.Background(), "vm1"); err != nil || c.Epoch != 1 || c.Owner != "hosta" || p.epoch != 1 {
		t.Fatalf("after run: %+v %v, primary epoch %d", c, err, p.epoch)
	}
	// Forced over a store that could not be read: no claim, no epoch.
	p = testPrimary(t, a, "")
	p.own = ownership{forced: "shared storage cannot say who owns vm vm1"}
	if err := p.claimUnprotected(context.Background()); err != nil || p.epoch != 0 {
		t.Fatalf("forced run without a readable store: %v, epoch %d", err, p.epoch)
	}
}
