package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/lifecycle"
	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/netbuf"
	"github.com/ftvmd/ftvmd/outputrule"
	"github.com/ftvmd/ftvmd/vmspec"
)

// lifeBackup is a backup of vm1 from hosta with its lifecycle and nothing else: no
// QEMU, log or channel. Its go-live is a fake that records the epoch it was given.
func lifeBackup(t *testing.T, a *Agent, log *slog.Logger) (*backup, *fakeGoLive) {
	t.Helper()
	b := &backup{a: a, spec: vmspec.Spec{Name: "vm1"}, peer: "hosta", log: log, finished: make(chan struct{})}
	if err := b.newLife(); err != nil {
		t.Fatal(err)
	}
	// Like the real one, the fake takes the backup out of the agent's VMs.
	g := &fakeGoLive{unregister: func() { a.unregister("vm1", b) }}
	b.goLive = g.run
	return b, g
}

type fakeGoLive struct {
	mu         sync.Mutex
	epochs     []uint64
	err        error // what go-live returns
	unregister func()
}

func (g *fakeGoLive) run(_ context.Context, epoch uint64, _ time.Duration) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.epochs = append(g.epochs, epoch)
	g.unregister()
	return g.err
}

func (g *fakeGoLive) calls() []uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]uint64(nil), g.epochs...)
}

// storeWith is a MemStore where vm1's epochs 1..n were claimed by owners[i].
func storeWith(t *testing.T, owners ...string) *disk.MemStore {
	t.Helper()
	s := disk.NewMemStore()
	for i, o := range owners {
		if _, err := s.ClaimNext(context.Background(), "vm1", uint64(i), o, "test"); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func waitDone(t *testing.T, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: not done after 10s", what)
	}
}

type failingSink struct{}

func (failingSink) Append(int64, []byte) error {
	return errors.New("received log does not parse: bad event")
}

// A log the backup cannot take ends a real Receiver with an error that reads as a
// local fault, not as a lost primary.
func TestReceiverSinkFailureIsLocal(t *testing.T) {
	const start = 12
	link := logging.NewMemLink()
	src := logging.NewMemLog(start)
	if err := src.Append(start, make([]byte, 64)); err != nil {
		t.Fatal(err)
	}
	snd := logging.NewSender(link.A(), src, logging.SenderConfig{StartOffset: start, HeartbeatInterval: 10 * time.Millisecond, PeerTimeout: time.Hour})
	rcv := logging.NewReceiver(link.B(), failingSink{}, logging.ReceiverConfig{StartOffset: start, HeartbeatInterval: 10 * time.Millisecond, PeerTimeout: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() { defer wg.Done(); _ = snd.Run(ctx) }()
	snd.Publish(start+64, 1000)
	done := make(chan error, 1)
	go func() { done <- rcv.Run(ctx) }()
	select {
	case err := <-done:
		if ev := channelEnded(err); ev.Type != lifecycle.EventFault {
			t.Fatalf("receiver ended with %v, read as %v; want a local fault", err, ev.Type)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("receiver did not end on a failing sink")
	}
}

// The backup's fault paths, driven through its lifecycle against a MemStore with a
// fake go-live, as the run loop feeds them.
func TestBackupLifecycle(t *testing.T) {
	silent := fmt.Errorf("receive: %w", logging.ErrPeerSilent)
	for _, tc := range []struct {
		name      string
		owners    []string // vm1's epochs claimed before, in order
		epoch     uint64   // the backup is protected under this epoch
		goLiveErr error
		events    []lifecycle.Event
		wantState lifecycle.State
		wantIn    string   // in the detail
		wantLive  []uint64 // go-live calls
		wantStore uint64   // vm1's highest epoch after
		wantOwner string
		shown     bool // registered (shown in status) at the end
	}{
		{name: "primary lost: claim, win, go live",
			owners: []string{"hosta"}, epoch: 1, events: []lifecycle.Event{channelEnded(silent)},
			wantState: lifecycle.Live, wantIn: "went live under epoch 2", wantLive: []uint64{2}, wantStore: 2, wantOwner: "hostb"},
		{name: "go-live fails: the backup stays, failed, with the reason",
			owners: []string{"hosta"}, epoch: 1, goLiveErr: errors.New("replay stalled before the cut: icount 2146425407"),
			events:    []lifecycle.Event{channelEnded(silent)},
			wantState: lifecycle.Failed, wantIn: "go live under epoch 2: replay stalled before the cut", wantLive: []uint64{2},
			wantStore: 2, wantOwner: "hostb", shown: true},
		{name: "the primary won first: halt",
			owners: []string{"hosta", "hosta"}, epoch: 1, events: []lifecycle.Event{channelEnded(silent)},
			wantState: lifecycle.Halted, wantIn: "lost epoch 2 to hosta", wantStore: 2, wantOwner: "hosta"},
		{name: "a Bye after a planned failover: go live under the primary's claim",
			owners: []string{"hosta", "hostb"}, epoch: 1, events: []lifecycle.Event{channelEnded(logging.ErrPeerClosed)},
			wantState: lifecycle.Live, wantLive: []uint64{2}, wantStore: 2, wantOwner: "hostb"},
		{name: "a Bye after unprotect: stop",
			owners: []string{"hosta", "hosta"}, epoch: 1, events: []lifecycle.Event{channelEnded(logging.ErrPeerClosed)},
			wantState: lifecycle.Stopped, wantIn: "log channel ended", wantStore: 2, wantOwner: "hosta"},
		{name: "the replaying QEMU exits, then the channel ends: no claim",
			owners: []string{"hosta"}, epoch: 1,
			events:    []lifecycle.Event{lifecycle.QEMUExited(errors.New("signal: killed")), channelEnded(io.ErrUnexpectedEOF)},
			wantState: lifecycle.Failed, wantIn: "replaying qemu exited: signal: killed", wantStore: 1, wantOwner: "hosta", shown: true},
		{name: "a log that does not parse: no claim",
			owners: []string{"hosta"}, epoch: 1,
			events:    []lifecycle.Event{channelEnded(fmt.Errorf("%w: received log does not parse", logging.ErrSink))},
			wantState: lifecycle.Failed, wantIn: "received log does not parse", wantStore: 1, wantOwner: "hosta", shown: true},
		{name: "no shared storage: a lost primary stops the backup",
			epoch: 0, events: []lifecycle.Event{channelEnded(silent)},
			wantState: lifecycle.Stopped, wantIn: "log channel ended"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := testAgent(t, "hostb", "")
			var store *disk.MemStore
			if len(tc.owners) > 0 {
				store = storeWith(t, tc.owners...)
				a.store = store
			}
			b, g := lifeBackup(t, a, a.log)
			g.err = tc.goLiveErr
			b.epoch = tc.epoch
			if err := a.register("vm1", b); err != nil {
				t.Fatal(err)
			}
			if err := b.life.start(b.epoch, b.peer, b.epoch > 0 && store != nil); err != nil {
				t.Fatal(err)
			}
			if st := b.status().State; st != "replaying" {
				t.Fatalf("state %q after start, want replaying", st)
			}
			for _, ev := range tc.events {
				_ = b.life.step(ev)
			}
			waitDone(t, b.done(), "backup")
			ls := b.life.state()
			if ls.State != tc.wantState || !strings.Contains(ls.Detail, tc.wantIn) {
				t.Fatalf("backup %v (%s), want %v with %q", ls.State, ls.Detail, tc.wantState, tc.wantIn)
			}
			if got := g.calls(); fmt.Sprint(got) != fmt.Sprint(tc.wantLive) {
				t.Fatalf("go-live calls %v, want %v", got, tc.wantLive)
			}
			if store != nil {
				c, err := store.Current(context.Background(), "vm1")
				if err != nil || c.Epoch != tc.wantStore || c.Owner != tc.wantOwner {
					t.Fatalf("store: %+v %v; want epoch %d owned by %s", c, err, tc.wantStore, tc.wantOwner)
				}
			}
			if v, ok := a.lookup("vm1"); tc.shown && (!ok || v.status().State != tc.wantState.String()) {
				t.Fatalf("vm1 not shown as %v in status (registered: %v)", tc.wantState, ok)
			}
		})
	}
}

// fakeGuest is the primary's QEMU as the lifecycle's actions see it.
type fakeGuest struct {
	mu                   sync.Mutex
	pauses, conts, kills int
	pauseErr             error
}

func (g *fakeGuest) Pause(context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.pauses++
	return g.pauseErr
}

func (g *fakeGuest) Cont(context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.conts++
	return nil
}

func (g *fakeGuest) Kill() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.kills++
	return nil
}

func (g *fakeGuest) counts() (pauses, conts, kills int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pauses, g.conts, g.kills
}

// ruleOut is an output path around a real output rule: it records the modes the
// lifecycle set.
type ruleOut struct {
	mu          sync.Mutex
	rule        *outputrule.Rule
	modes       []outputrule.Mode
	acked       func() int64 // what the backup has acknowledged (the log sender's view)
	ackedAtHalt int64        // acked when output was halted
}

func newRuleOut() *ruleOut {
	return &ruleOut{rule: outputrule.New(outputrule.Config{}, outputrule.Protected)}
}

func (o *ruleOut) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (o *ruleOut) Ack(off int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	_ = o.rule.Ack(off, time.Now())
}
func (o *ruleOut) Sent(off int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.rule.Sent(off)
}
func (o *ruleOut) SetMode(m outputrule.Mode) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if m == outputrule.Halted && o.rule.Mode() != outputrule.Halted && o.acked != nil {
		o.ackedAtHalt = o.acked()
	}
	o.rule.SetMode(m, time.Now())
	o.modes = append(o.modes, m)
}
func (o *ruleOut) Protect() error {
	o.SetMode(outputrule.Protected)
	o.mu.Lock()
	defer o.mu.Unlock()
	if m := o.rule.Mode(); m != outputrule.Protected {
		return fmt.Errorf("output is %v", m)
	}
	return nil
}
func (o *ruleOut) Stats() netbuf.RelayStats {
	o.mu.Lock()
	defer o.mu.Unlock()
	return netbuf.RelayStats{Rule: o.rule.Stats()}
}
func (o *ruleOut) setModes() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return fmt.Sprint(o.modes)
}

type lifePrimaryEnv struct {
	p     *primary
	guest *fakeGuest
	out   *ruleOut
	byes  atomic.Int32
}

// lifePrimary is a protected primary of vm1 (backup hostb) with its lifecycle
// started, a fake QEMU and output path, and shortened ticks and claim deadlines.
// store may be nil (no shared storage); with one, hosta claims the first epoch.
func lifePrimary(t *testing.T, store *disk.MemStore, tick time.Duration) *lifePrimaryEnv {
	t.Helper()
	return lifePrimaryAt(t, store, tick, "")
}

// lifePrimaryAt is lifePrimary whose backup's agent is at addr ("": unknown), with
// which it re-protects the VM by itself when it outlives its backup.
func lifePrimaryAt(t *testing.T, store *disk.MemStore, tick time.Duration, addr string) *lifePrimaryEnv {
	t.Helper()
	a := testAgent(t, "hosta", "")
	var epoch uint64
	if store != nil {
		a.store = store
		e, err := claimFirst(context.Background(), store, "vm1", "hosta")
		if err != nil {
			t.Fatal(err)
		}
		epoch = e
	}
	p := testPrimary(t, a, "hostb:7800")
	p.life.tick, p.life.claimTimeout, p.life.opTimeout = tick, 200*time.Millisecond, 300*time.Millisecond
	env := &lifePrimaryEnv{p: p, guest: &fakeGuest{}, out: newRuleOut()}
	p.epoch, p.backupHost, p.guest, p.out = epoch, "hostb", env.guest, env.out
	_, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.stopSender = func() { env.byes.Add(1) }
	if err := a.register("vm1", p); err != nil {
		t.Fatal(err)
	}
	var err error
	if addr != "" {
		err = p.life.startPrimary(epoch, "hostb", addr, store != nil)
	} else {
		err = p.life.start(epoch, "hostb", store != nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := p.stop(sctx); err != nil {
			t.Errorf("stop: %v", err)
		}
	})
	return env
}

func waitLife(t *testing.T, d *driver, want lifecycle.State) lifecycle.Status {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := d.state()
		if st.State == want {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("lifecycle %v (%s), want %v", st.State, st.Detail, want)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// The primary's fault paths through its lifecycle, against a MemStore.
func TestPrimaryLifecycle(t *testing.T) {
	lost := fmt.Errorf("receive: %w", logging.ErrPeerSilent)
	t.Run("backup lost: the primary wins and runs on alone", func(t *testing.T) {
		store := storeWith(t)
		env := lifePrimary(t, store, time.Millisecond)
		_ = env.p.life.step(lifecycle.PeerLost(lost))
		st := waitLife(t, env.p.life, lifecycle.Unprotected)
		if st.Epoch != 2 || env.out.setModes() != "[unprotected]" || env.byes.Load() != 1 {
			t.Fatalf("epoch %d, output modes %s, byes %d; want 2, [unprotected], 1", st.Epoch, env.out.setModes(), env.byes.Load())
		}
		if s := env.p.status(); s.FailoverClaimMS <= 0 || s.State != "unprotected" {
			t.Fatalf("status %s, claim %.1f ms: want unprotected with the claim's duration", s.State, s.FailoverClaimMS)
		}
		if c, _ := store.Current(context.Background(), "vm1"); c.Epoch != 2 || c.Owner != "hosta" {
			t.Fatalf("store %+v, want epoch 2 owned by hosta", c)
		}
	})
	t.Run("backup lost: the backup won first, the primary halts", func(t *testing.T) {
		store := storeWith(t)
		env := lifePrimary(t, store, time.Millisecond)
		if _, err := store.ClaimNext(context.Background(), "vm1", 1, "hostb", "failover"); err != nil {
			t.Fatal(err)
		}
		_ = env.p.life.step(lifecycle.PeerLost(lost))
		waitLife(t, env.p.life, lifecycle.Halted)
		if _, _, kills := env.guest.counts(); kills != 1 || env.out.setModes() != "[halted]" {
			t.Fatalf("kills %d, output modes %s; want 1, [halted]", kills, env.out.setModes())
		}
	})
	t.Run("storage hangs while claiming: output stays held, retried until it answers", func(t *testing.T) {
		store := storeWith(t)
		env := lifePrimary(t, store, time.Millisecond)
		store.SetHung(true)
		_ = env.p.life.step(lifecycle.PeerLost(lost))
		time.Sleep(500 * time.Millisecond) // two claims time out (200 ms each)
		if st := env.p.life.state(); st.State != lifecycle.Claiming || env.out.setModes() != "[]" {
			t.Fatalf("lifecycle %v, output modes %s while storage hangs; want claiming, []", st.State, env.out.setModes())
		}
		store.SetHung(false)
		waitLife(t, env.p.life, lifecycle.Unprotected)
	})
	t.Run("backup lost without shared storage: degraded until unprotect", func(t *testing.T) {
		env := lifePrimary(t, nil, time.Millisecond)
		_ = env.p.life.step(lifecycle.PeerLost(lost))
		waitLife(t, env.p.life, lifecycle.Degraded)
		if env.out.setModes() != "[]" {
			t.Fatalf("output modes %s while degraded, want none", env.out.setModes())
		}
		if err := env.p.unprotect(context.Background(), "operator request"); err != nil {
			t.Fatal(err)
		}
		if st := env.p.life.state(); st.State != lifecycle.Unprotected || env.out.setModes() != "[unprotected]" {
			t.Fatalf("after unprotect: %v, modes %s", st.State, env.out.setModes())
		}
	})
	for _, tc := range []struct {
		name   string
		ev     lifecycle.Event
		detail string
	}{
		{"QEMU exits", lifecycle.QEMUExited(errors.New("signal: killed")), "qemu exited: signal: killed; the backup takes over"},
		{"the log cannot be written", lifecycle.LogWriteFailed("No space left on device"), "rr log write failed: No space left on device; output stopped; the backup takes over"},
		{"the output path fails", lifecycle.Fault(errors.New("network output path: tap gone")), "network output path: tap gone; the backup takes over"},
	} {
		t.Run(tc.name+": failed, output halted, torn down", func(t *testing.T) {
			env := lifePrimary(t, storeWith(t), time.Millisecond)
			_ = env.p.life.step(tc.ev)
			waitDone(t, env.p.done(), "primary")
			if s := env.p.status(); s.State != "failed" || s.Detail != tc.detail || env.out.setModes() != "[halted]" {
				t.Fatalf("status %s (%s), modes %s; want failed (%s), [halted]", s.State, s.Detail, env.out.setModes(), tc.detail)
			}
		})
	}
}

// ftvmd unprotect through the lifecycle, against a MemStore.
func TestPrimaryUnprotect(t *testing.T) {
	ctx := context.Background()
	t.Run("claims the next epoch, then runs alone", func(t *testing.T) {
		store := storeWith(t)
		env := lifePrimary(t, store, time.Millisecond)
		if err := env.p.unprotect(ctx, "operator request"); err != nil {
			t.Fatal(err)
		}
		if st := env.p.life.state(); st.State != lifecycle.Unprotected || st.Epoch != 2 || env.byes.Load() != 1 {
			t.Fatalf("%+v, byes %d; want unprotected under epoch 2 and a Bye", st, env.byes.Load())
		}
	})
	t.Run("the backup owns the next epoch: this copy halts", func(t *testing.T) {
		store := storeWith(t)
		env := lifePrimary(t, store, time.Millisecond)
		if _, err := store.ClaimNext(ctx, "vm1", 1, "hostb", "failover"); err != nil {
			t.Fatal(err)
		}
		err := env.p.unprotect(ctx, "operator request")
		if !errors.Is(err, lifecycle.ErrTakenOver) || env.p.life.state().State != lifecycle.Halted || env.out.setModes() != "[halted]" {
			t.Fatalf("unprotect: %v, state %v, modes %s; want %v, halted, [halted]", err, env.p.life.state().State, env.out.setModes(), lifecycle.ErrTakenOver)
		}
	})
	t.Run("storage hangs: refused, protection unchanged", func(t *testing.T) {
		store := storeWith(t)
		env := lifePrimary(t, store, time.Millisecond)
		store.SetHung(true)
		err := env.p.unprotect(ctx, "operator request")
		store.SetHung(false)
		if !errors.Is(err, lifecycle.ErrStorage) || env.p.life.state().State != lifecycle.Protected || env.out.setModes() != "[]" {
			t.Fatalf("unprotect: %v, state %v, modes %s; want %v, protected, none", err, env.p.life.state().State, env.out.setModes(), lifecycle.ErrStorage)
		}
	})
	t.Run("refused while claiming", func(t *testing.T) {
		store := storeWith(t)
		env := lifePrimary(t, store, time.Millisecond)
		store.SetHung(true)
		defer store.SetHung(false)
		_ = env.p.life.step(lifecycle.PeerLost(errors.New("peer silent")))
		if err := env.p.unprotect(ctx, "operator request"); !errors.Is(err, lifecycle.ErrNotProtected) {
			t.Fatalf("unprotect while claiming: %v, want %v", err, lifecycle.ErrNotProtected)
		}
	})
}

// channelPair connects the primary's log sender to a backup's receiver over a
// MemLink: the backup acknowledges the log (unless ackDelay holds its acks) and its
// lifecycle hears how the channel ended.
func channelPair(t *testing.T, env *lifePrimaryEnv, b *backup, ackDelay time.Duration) {
	t.Helper()
	const start = 12
	link := logging.NewMemLink()
	src := logging.NewMemLog(start)
	if err := src.Append(start, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	snd := logging.NewSender(link.A(), src, logging.SenderConfig{StartOffset: start, HeartbeatInterval: 10 * time.Millisecond, PeerTimeout: 5 * time.Second})
	rcv := logging.NewReceiver(link.B(), logging.NewMemLog(start), logging.ReceiverConfig{StartOffset: start,
		HeartbeatInterval: 10 * time.Millisecond, PeerTimeout: 5 * time.Second, AckDelay: ackDelay})
	ctx, cancel := context.WithCancel(context.Background())
	sctx, scancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })
	p := env.p
	p.sender, p.stopSender = snd, func() { env.byes.Add(1); scancel() }
	env.out.mu.Lock()
	env.out.acked = func() int64 { return snd.Stats().Acked }
	env.out.mu.Unlock()
	wg.Add(3)
	go func() {
		defer wg.Done()
		// As in startSender: a channel that ends not on purpose is the lifecycle's.
		if err := snd.Run(sctx); sctx.Err() == nil {
			p.backupChannelEnded(err)
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-ctx.Done():
				return
			case a := <-snd.Acks():
				p.out.Sent(snd.Stats().Sent)
				p.out.Ack(a.Offset)
			}
		}
	}()
	// The backup's receiver is its own, as in run: an AbortChannel tells the
	// primary why over it, and the teardown waits for that.
	recvDone := make(chan struct{})
	b.mu.Lock()
	b.recv, b.recvDone = rcv, recvDone
	b.mu.Unlock()
	go func() {
		defer wg.Done()
		err := rcv.Run(ctx)
		close(recvDone)
		if ctx.Err() == nil {
			_ = b.life.step(channelEnded(err))
		}
	}()
	p.mu.Lock()
	p.boundary, p.safePoint = start+4096, start+4096
	p.mu.Unlock()
	snd.Publish(start+4096, 1000)
}

// A planned failover in memory: the primary's real log sender and the backup's real
// receiver over a MemLink, both lifecycles, one MemStore. The primary pauses, waits
// for the backup's acks, halts its output, claims epoch 2 for hostb and says Bye;
// the backup reads the claim and goes live under it.
func TestPlannedFailover(t *testing.T) {
	// Acks come late: the primary must wait for them before it halts its output.
	env, b, g, store := protectedPair(t, 5*time.Millisecond, 200*time.Millisecond)

	if err := env.p.handover(context.Background()); err != nil {
		t.Fatalf("handover: %v", err)
	}
	checkHandedOver(t, env, b, g, store)
	if n := env.byes.Load(); n != 1 {
		t.Fatalf("byes %d, want 1", n)
	}
}

// checkHandedOver: the primary handed the VM over under epoch 2 (the guest paused
// once and killed, the output halted once the log up to the pause was acked) and
// the backup took it over.
func checkHandedOver(t *testing.T, env *lifePrimaryEnv, b *backup, g *fakeGoLive, store *disk.MemStore) {
	t.Helper()
	if st := env.p.life.state(); st.State != lifecycle.HandedOver || st.Epoch != 2 {
		t.Fatalf("primary %+v, want handed-over under epoch 2", st)
	}
	if pauses, conts, kills := env.guest.counts(); pauses != 1 || conts != 0 || kills != 1 || env.out.setModes() != "[halted]" {
		t.Fatalf("pauses %d conts %d kills %d, modes %s; want 1 0 1, [halted]", pauses, conts, kills, env.out.setModes())
	}
	env.out.mu.Lock()
	acked := env.out.ackedAtHalt
	env.out.mu.Unlock()
	if acked < 12+4096 {
		t.Fatalf("output halted with the log acked to %d, short of the pause at %d", acked, 12+4096)
	}
	checkBackupTookOver(t, b, g, store, "")
}

// checkBackupTookOver: the backup went live once, under epoch 2, which the store
// says hostb owns (why, if not empty, says what else that shows).
func checkBackupTookOver(t *testing.T, b *backup, g *fakeGoLive, store *disk.MemStore, why string) {
	t.Helper()
	waitDone(t, b.done(), "backup")
	if st := b.life.state(); st.State != lifecycle.Live || fmt.Sprint(g.calls()) != "[2]" {
		t.Fatalf("backup %+v, go-live calls %v; want live, [2]", st, g.calls())
	}
	if c, _ := store.Current(context.Background(), "vm1"); c.Epoch != 2 || c.Owner != "hostb" {
		if why != "" {
			why = " (" + why + ")"
		}
		t.Fatalf("store %+v, want epoch 2 owned by hostb%s", c, why)
	}
}

// A backup that does not acknowledge the log up to the pause in time: the guest
// resumes, still protected, and nothing was claimed or halted.
func TestPlannedFailoverTimesOut(t *testing.T) {
	store := storeWith(t)
	env := lifePrimary(t, store, time.Millisecond) // 300 ticks: 300 ms
	ba := testAgent(t, "hostb", "")
	b, _ := lifeBackup(t, ba, ba.log)
	if err := b.life.start(1, "hosta", false); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.stop(context.Background()) })
	channelPair(t, env, b, time.Hour)

	first := make(chan error, 1)
	go func() { first <- env.p.handover(context.Background()) }()
	waitLife(t, env.p.life, lifecycle.HandingOver)
	// While it waits, other requests are refused and change nothing.
	if err := env.p.handover(context.Background()); !errors.Is(err, lifecycle.ErrBusy) {
		t.Fatalf("a second failover: %v, want %v", err, lifecycle.ErrBusy)
	}
	if err := env.p.unprotect(context.Background(), "operator request"); !errors.Is(err, lifecycle.ErrBusy) {
		t.Fatalf("unprotect during a failover: %v, want %v", err, lifecycle.ErrBusy)
	}
	err := <-first
	if !errors.Is(err, lifecycle.ErrHandoverTimeout) {
		t.Fatalf("handover: %v, want %v", err, lifecycle.ErrHandoverTimeout)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, conts, _ := env.guest.counts(); conts == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the guest was not resumed")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if st := env.p.life.state(); st.State != lifecycle.Protected || env.out.setModes() != "[]" {
		t.Fatalf("primary %v, modes %s; want protected, none", st.State, env.out.setModes())
	}
	if c, _ := store.Current(context.Background(), "vm1"); c.Epoch != 1 {
		t.Fatalf("store %+v: a claim was made", c)
	}
}

// A planned failover needs shared storage.
func TestPlannedFailoverNeedsSharedStorage(t *testing.T) {
	env := lifePrimary(t, nil, time.Millisecond)
	if err := env.p.handover(context.Background()); !errors.Is(err, lifecycle.ErrNoSharedStorage) {
		t.Fatalf("handover: %v, want %v", err, lifecycle.ErrNoSharedStorage)
	}
	if pauses, _, _ := env.guest.counts(); pauses != 0 {
		t.Fatal("the guest was paused")
	}
}

// The states status shows (control.VMStates, which metrics exports one series each)
// are exactly the lifecycle's.
func TestVMStatesAreTheLifecycles(t *testing.T) {
	var names []string
	for s := lifecycle.Starting; !strings.HasPrefix(s.String(), "State("); s++ {
		names = append(names, s.String())
	}
	sort.Strings(names)
	want := append([]string(nil), control.VMStates...)
	sort.Strings(want)
	if fmt.Sprint(names) != fmt.Sprint(want) {
		t.Fatalf("lifecycle states %v, control.VMStates %v", names, want)
	}
}

// protectedPair is a protected primary on hosta (its lifecycle ticking every
// tick) and its backup on hostb over a real log channel (channelPair), one
// MemStore; acks wait ackDelay.
func protectedPair(t *testing.T, tick, ackDelay time.Duration) (*lifePrimaryEnv, *backup, *fakeGoLive, *disk.MemStore) {
	t.Helper()
	store := storeWith(t)
	env := lifePrimary(t, store, tick)
	ba := testAgent(t, "hostb", "")
	ba.store = store
	b, g := lifeBackup(t, ba, ba.log)
	b.epoch = 1
	if err := ba.register("vm1", b); err != nil {
		t.Fatal(err)
	}
	if err := b.life.start(1, "hosta", true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.stop(context.Background()) })
	channelPair(t, env, b, ackDelay)
	return env, b, g, store
}

// The primary's agent shuts down (SIGTERM: systemctl stop or restart) while the VM
// is protected: instead of stopping the VM on both hosts (a Bye), it hands the VM
// over to its backup as a planned failover does, then tears down. The backup goes
// live under the epoch claimed for it.
func TestAgentShutdownHandsOver(t *testing.T) {
	env, b, g, store := protectedPair(t, time.Millisecond, 100*time.Millisecond)
	t0 := time.Now()
	env.p.a.stopAll()
	t.Logf("agent shutdown took %s", time.Since(t0).Round(time.Millisecond))
	select {
	case <-env.p.done():
	default:
		t.Fatal("stopAll returned with the primary not torn down")
	}
	checkHandedOver(t, env, b, g, store)
}

// The backup never acknowledges the log up to the pause: the shutting-down primary
// does not resume and wait again (its agent is leaving); it fails as a primary whose
// QEMU died does: output halted, the backup told why, and the backup claims the next
// epoch and goes live. The primary claims nothing.
func TestAgentShutdownHandoverTimesOut(t *testing.T) {
	env, b, g, store := protectedPair(t, time.Millisecond, time.Hour) // 300 ticks of 1 ms
	env.p.a.stopAll()
	if st := env.p.life.state(); st.State != lifecycle.Failed {
		t.Fatalf("primary %+v, want failed", st)
	}
	if _, conts, _ := env.guest.counts(); conts != 0 || env.out.setModes() != "[halted]" {
		t.Fatalf("conts %d, modes %s; want 0, [halted]", conts, env.out.setModes())
	}
	checkBackupTookOver(t, b, g, store, "the primary claims nothing")
}

// Without shared storage nothing can hand the VM over: the agent's shutdown stops
// the primary (and its Bye stops the backup), as documented.
func TestAgentShutdownWithoutSharedStorageStops(t *testing.T) {
	env := lifePrimary(t, nil, time.Millisecond)
	env.p.a.stopAll()
	if st := env.p.life.state(); st.State != lifecycle.Stopped {
		t.Fatalf("primary %+v, want stopped", st)
	}
	if pauses, _, _ := env.guest.counts(); pauses != 0 {
		t.Fatal("the guest was paused")
	}
}
