package agent

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/lifecycle"
)

// A primary that lost its backup claims the next epoch for as long as storage does
// not answer; stopping it (ftvmd stop, agent shutdown) must still end in time.
func TestStopWhileClaimingOnHungStorage(t *testing.T) {
	a := testAgent(t, "hosta", "")
	store := disk.NewMemStore()
	a.store = store
	epoch, err := claimFirst(context.Background(), store, "vm1", "hosta")
	if err != nil {
		t.Fatal(err)
	}
	p := testPrimary(t, a, "hostb:7800")
	p.epoch, p.backupHost = epoch, "hostb"
	_, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	if err := p.life.start(epoch, "hostb", true); err != nil {
		t.Fatal(err)
	}
	store.SetHung(true)
	defer store.SetHung(false)

	_ = p.life.step(lifecycle.PeerLost(errors.New("log channel: peer silent")))
	waitState(t, p, "claiming")
	time.Sleep(300 * time.Millisecond) // the claim is in flight, blocked on storage

	const limit = 3 * time.Second
	sctx, scancel := context.WithTimeout(context.Background(), limit)
	defer scancel()
	t0 := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- p.stop(sctx) }()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("stop: %v after %s, want a clean stop", err, time.Since(t0))
		}
	case <-time.After(limit + 2*time.Second):
		t.Fatalf("stop did not return within %s (the claim retries against hung storage forever)", limit+2*time.Second)
	}
	t.Logf("stopped in %s", time.Since(t0).Round(time.Millisecond))
	select {
	case <-p.done():
	default:
		t.Fatal("stop returned but the VM is not done")
	}
	if st := p.status().State; st != "stopped" {
		t.Fatalf("state %q, want stopped", st)
	}
	// Nothing was claimed behind the stopped primary's back.
	store.SetHung(false)
	if c, err := store.Current(context.Background(), "vm1"); err != nil || c.Epoch != epoch {
		t.Fatalf("store after stop: %+v %v, want epoch %d", c, err, epoch)
	}
}

// A stop whose teardown cannot finish returns when its ctx ends, says so, and the
// teardown completes later.
func TestStopHonoursItsDeadline(t *testing.T) {
	a := testAgent(t, "hosta", "")
	p := testPrimary(t, a, "")
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	stuck := make(chan struct{})
	p.go1(func() { <-ctx.Done(); <-stuck }) // a goroutine that ignores its cancel
	checkStopDeadline(t, p, stuck)
	// A second stop after the teardown returns at once.
	if err := p.stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func waitState(t *testing.T, p *primary, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for p.status().State != want {
		if time.Now().After(deadline) {
			t.Fatalf("state %q, want %q", p.status().State, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The backup's stop has the same deadline.
func TestBackupStopHonoursItsDeadline(t *testing.T) {
	a := testAgent(t, "hostb", "")
	b, _ := lifeBackup(t, a, a.log)
	if err := b.life.start(0, "hosta", false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel
	stuck := make(chan struct{})
	b.wg.Add(1)
	go func() { defer b.wg.Done(); <-ctx.Done(); <-stuck }()
	checkStopDeadline(t, b, stuck)
}

// checkStopDeadline: a stop of v, whose teardown waits until stuck is closed,
// returns when its 200 ms deadline ends, with the deadline's error; the
// teardown finishes once stuck is closed.
func checkStopDeadline(t *testing.T, v vmRunner, stuck chan struct{}) {
	t.Helper()
	sctx, scancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer scancel()
	stopped := make(chan error, 1)
	go func() { stopped <- v.stop(sctx) }()
	select {
	case err := <-stopped:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("stop: %v, want %v", err, context.DeadlineExceeded)
		}
	case <-time.After(2 * time.Second):
		close(stuck)
		t.Fatal("stop did not return within 2s; its deadline was 200ms")
	}
	close(stuck)
	select {
	case <-v.done():
	case <-time.After(5 * time.Second):
		t.Fatal("teardown did not finish once unblocked")
	}
}
