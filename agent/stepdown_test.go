package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/arbiter"
	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/lifecycle"
	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/netbuf"
	"github.com/ftvmd/ftvmd/outputrule"
	"github.com/ftvmd/ftvmd/qemu"
	"github.com/ftvmd/ftvmd/replay"
	"github.com/ftvmd/ftvmd/vmspec"
)

// fakeOut is an outputPath that records the modes it is set to.
type fakeOut struct {
	mu    sync.Mutex
	modes []outputrule.Mode
}

func (*fakeOut) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (*fakeOut) Ack(int64)                     {}
func (*fakeOut) Sent(int64)                    {}
func (f *fakeOut) SetMode(m outputrule.Mode) {
	f.mu.Lock()
	f.modes = append(f.modes, m)
	f.mu.Unlock()
}
func (f *fakeOut) Protect() error {
	f.SetMode(outputrule.Protected)
	return nil
}
func (f *fakeOut) Stats() netbuf.RelayStats { return netbuf.RelayStats{} }
func (f *fakeOut) last() outputrule.Mode {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.modes) == 0 {
		return 0
	}
	return f.modes[len(f.modes)-1]
}

// What a backup does when its log channel ends with err: the agent reads err
// (channelEnded) and the backup's lifecycle decides, with shared storage (fenced) or
// without.
func TestOnChannelEnd(t *testing.T) {
	const (
		stepDown      = "step down"
		stop          = "stop"
		claim         = "claim"
		checkHandover = "check handover"
	)
	outcome := func(err error, fenced bool) string {
		t.Helper()
		m, merr := lifecycle.New(lifecycle.Config{Role: arbiter.RoleBackup, Host: "hostb", VM: "vm1"})
		if merr != nil {
			t.Fatal(merr)
		}
		var epoch uint64
		if fenced {
			epoch = 1
		}
		if err := m.Step(lifecycle.Started(epoch, "hosta", fenced)); err != nil {
			t.Fatal(err)
		}
		m.Advance()
		if err := m.Step(channelEnded(err)); err != nil {
			t.Fatal(err)
		}
		rd := m.Ready()
		switch st := rd.Status.State; {
		case st == lifecycle.Failed:
			return stepDown
		case st == lifecycle.Stopping:
			return stop
		case st == lifecycle.Claiming:
			return claim
		case st == lifecycle.Replaying && len(rd.Actions) == 1 && rd.Actions[0].Type == lifecycle.ActionReadClaim:
			return checkHandover
		default:
			return fmt.Sprintf("%v %v", st, rd.Actions)
		}
	}
	wrap := func(e error) error { return fmt.Errorf("receiving: %w: detail", e) }
	for _, tc := range []struct {
		err    error
		fenced bool
		want   string
	}{
		// The backup's own faults and its refusals of what it received: step down.
		{wrap(logging.ErrAborted), true, stepDown},
		{wrap(logging.ErrSink), true, stepDown},
		{wrap(logging.ErrChecksum), true, stepDown},
		{wrap(logging.ErrGap), true, stepDown},
		{wrap(logging.ErrStale), true, stepDown},
		{wrap(logging.ErrProtocol), true, stepDown},
		{wrap(logging.ErrTooLarge), true, stepDown},
		{wrap(logging.ErrSink), false, stepDown},
		// The primary is gone, silent or failed: claim.
		{wrap(logging.ErrPeerSilent), true, claim},
		{wrap(logging.ErrPeerRefused), true, claim},
		{errors.New("reading from peer: EOF"), true, claim},
		// The primary said Bye: a planned failover, or stop.
		{wrap(logging.ErrPeerClosed), true, checkHandover},
		// Without shared storage a backup never claims.
		{wrap(logging.ErrPeerSilent), false, stop},
		{wrap(logging.ErrPeerClosed), false, stop},
	} {
		if got := outcome(tc.err, tc.fenced); got != tc.want {
			t.Errorf("channel ended with %v, fenced=%v: %s, want %s", tc.err, tc.fenced, got, tc.want)
		}
	}
}

// testBackup is a backup of vm1 on hostb, protected under epoch 1 owned by hosta on
// store, whose replaying QEMU fails to start with startErr. It has a real log file
// and feed, no QEMU.
func testBackup(t *testing.T, store *disk.MemStore, startErr error) *backup {
	t.Helper()
	a := testAgent(t, "hostb", "")
	a.store = store
	if _, err := claimFirst(context.Background(), store, "vm1", "hosta"); err != nil {
		t.Fatal(err)
	}
	b := &backup{a: a, spec: vmspec.Spec{Name: "vm1"}, peer: "hosta", log: a.log.With("vm", "vm1", "role", "backup"),
		dir: t.TempDir(), finished: make(chan struct{}), epoch: 1}
	if err := b.newLife(); err != nil {
		t.Fatal(err)
	}
	if err := b.openLog(context.Background()); err != nil {
		t.Fatal(err)
	}
	m, err := qemu.New(qemu.Config{Name: "vm1"}, qemu.WithLogger(b.log))
	if err != nil {
		t.Fatal(err)
	}
	m.Handlers = qemu.HandlerList{{Name: "launch", Fn: func(context.Context, *qemu.Machine) error { return startErr }}}
	b.m = m
	return b
}

// A backup whose replaying QEMU does not start steps down: it tells the primary
// why, claims nothing (before: it took its own closed connection for a lost
// primary, claimed the next epoch and made the healthy primary halt), and says so in
// its status.
func TestBackupStartFailureStepsDownWithoutClaiming(t *testing.T) {
	store := disk.NewMemStore()
	b := testBackup(t, store, errors.New("exec: qemu-system-x86_64: not found"))
	link := logging.NewMemLink()
	snd := logging.NewSender(link.A(), logging.NewMemLog(replay.HeaderSize), logging.SenderConfig{StartOffset: replay.HeaderSize})
	serr := make(chan error, 1)
	go func() { serr <- snd.Run(context.Background()) }()

	ran := make(chan struct{})
	go func() { defer close(ran); b.run(link.B()) }()
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("backup run did not end after its QEMU failed to start")
	}
	select {
	case err := <-serr:
		if !errors.Is(err, logging.ErrPeerRefused) || !strings.Contains(err.Error(), "not found") {
			t.Fatalf("primary's sender ended with %v, want the backup's reason (ErrPeerRefused)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the primary's sender was not told")
	}
	if c, err := store.Current(context.Background(), "vm1"); err != nil || c.Epoch != 1 || c.Owner != "hosta" {
		t.Fatalf("store after the backup's fault: %+v %v; want epoch 1 still hosta's", c, err)
	}
	st := b.status()
	if st.State != "failed" || !strings.Contains(st.Detail, "stepped down") || !strings.Contains(st.Detail, "not found") {
		t.Fatalf("backup status %q %q, want failed, stepped down, with the reason", st.State, st.Detail)
	}
}

// A received log that does not parse (the sink refuses it) is a step-down too.
func TestBackupParseErrorStepsDownWithoutClaiming(t *testing.T) {
	store := disk.NewMemStore()
	b := testBackup(t, store, nil)
	// A QEMU that is still starting: only the received log fails.
	b.m.Handlers = qemu.HandlerList{{Name: "launch", Fn: func(ctx context.Context, _ *qemu.Machine) error { <-ctx.Done(); return ctx.Err() }}}
	src := logging.NewMemLog(replay.HeaderSize)
	if err := src.Append(replay.HeaderSize, []byte{0xff, 0xff, 0xff, 0xff}); err != nil {
		t.Fatal(err)
	}
	link := logging.NewMemLink()
	snd := logging.NewSender(link.A(), src, logging.SenderConfig{StartOffset: replay.HeaderSize})
	snd.Publish(replay.HeaderSize+4, 1)
	serr := make(chan error, 1)
	go func() { serr <- snd.Run(context.Background()) }()
	ran := make(chan struct{})
	go func() { defer close(ran); b.run(link.B()) }()
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("backup run did not end on a log that does not parse")
	}
	if err := <-serr; !errors.Is(err, logging.ErrPeerRefused) {
		t.Fatalf("primary's sender ended with %v, want ErrPeerRefused", err)
	}
	if c, err := store.Current(context.Background(), "vm1"); err != nil || c.Epoch != 1 {
		t.Fatalf("store: %+v %v; want epoch 1", c, err)
	}
	if st := b.status(); st.State != "failed" || !strings.Contains(st.Detail, "does not parse") {
		t.Fatalf("backup status %q %q", st.State, st.Detail)
	}
}

// protectedPrimary is a protected primary of vm1 on hosta (epoch 1 on store, nil for
// none) whose sender streams over a MemLink; the other end is returned for the test
// to play the backup.
func protectedPrimary(t *testing.T, store *disk.MemStore) (*primary, *fakeOut, *logging.MemLink) {
	t.Helper()
	a := testAgent(t, "hosta", "")
	if store != nil {
		a.store = store
	}
	p := testPrimary(t, a, "hostb:7800")
	p.backupHost = "hostb"
	if store != nil {
		e, err := claimFirst(context.Background(), store, "vm1", "hosta")
		if err != nil {
			t.Fatal(err)
		}
		p.epoch = e
	}
	if err := p.life.start(p.epoch, "hostb", store != nil); err != nil {
		t.Fatal(err)
	}
	out := new(fakeOut)
	p.out = out
	link := logging.NewMemLink()
	p.sender = logging.NewSender(link.A(), logging.NewMemLog(replay.HeaderSize), logging.SenderConfig{StartOffset: replay.HeaderSize})
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.startSender(ctx, p.sender)
	t.Cleanup(func() { _ = p.stop(context.Background()) })
	return p, out, link
}

// A backup that steps down says why; the primary carries on unprotected and its
// status names the backup's reason.
func TestPrimaryCarriesOnWhenBackupStepsDown(t *testing.T) {
	for _, shared := range []bool{true, false} {
		t.Run(fmt.Sprintf("shared=%v", shared), func(t *testing.T) {
			var store *disk.MemStore
			if shared {
				store = disk.NewMemStore()
			}
			p, out, link := protectedPrimary(t, store)
			rcv := logging.NewReceiver(link.B(), logging.NewMemLog(replay.HeaderSize), logging.ReceiverConfig{StartOffset: replay.HeaderSize})
			rerr := make(chan error, 1)
			go func() { rerr <- rcv.Run(context.Background()) }()
			time.Sleep(20 * time.Millisecond)
			rcv.Abort(errors.New("replaying qemu exited: signal: killed"))
			<-rerr
			waitState(t, p, "unprotected")
			st := p.status()
			if !strings.Contains(st.Detail, "backup stepped down") || !strings.Contains(st.Detail, "replaying qemu exited") {
				t.Fatalf("detail %q: want the backup's reason", st.Detail)
			}
			if m := out.last(); m != outputrule.Unprotected {
				t.Fatalf("output mode %v, want unprotected", m)
			}
		})
	}
}

// A protected primary whose QEMU dies hands the VM to its backup: it halts its
// output, claims nothing and ends the channel with an Error saying why, which the
// backup reads as a failed primary and claims (before: a Bye, and the backup
// stopped: the VM was down on both hosts).
func TestPrimaryQEMUDeathHandsOverToBackup(t *testing.T) {
	store := disk.NewMemStore()
	p, out, link := protectedPrimary(t, store)
	rcv := logging.NewReceiver(link.B(), logging.NewMemLog(replay.HeaderSize), logging.ReceiverConfig{StartOffset: replay.HeaderSize})
	rerr := make(chan error, 1)
	go func() { rerr <- rcv.Run(context.Background()) }()
	time.Sleep(20 * time.Millisecond)
	p.fail(errors.New("qemu exited: signal: killed"))
	var err error
	select {
	case err = <-rerr:
	case <-time.After(5 * time.Second):
		t.Fatal("the backup's receiver did not end")
	}
	if ev := channelEnded(err); ev.Type != lifecycle.EventPeerLost || !ev.Quit {
		t.Fatalf("backup's channel ended with %v: %+v, want a primary that failed and said so (the backup claims)", err, ev)
	}
	if !strings.Contains(err.Error(), "qemu exited") {
		t.Fatalf("backup's error %v does not say why", err)
	}
	select {
	case <-p.done():
	case <-time.After(5 * time.Second):
		t.Fatal("the failed primary did not stop")
	}
	if st := p.status(); st.State != "failed" || !strings.Contains(st.Detail, "the backup takes over") {
		t.Fatalf("primary %q %q", st.State, st.Detail)
	}
	if m := out.last(); m != outputrule.Halted {
		t.Fatalf("output mode %v, want halted", m)
	}
	if c, err := store.Current(context.Background(), "vm1"); err != nil || c.Epoch != 1 {
		t.Fatalf("the failed primary claimed: %+v %v", c, err)
	}
}
