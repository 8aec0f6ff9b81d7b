package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/lifecycle"
	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/vmspec"
)

// stallBackup is a replaying backup of vm1 (lifecycle only, no QEMU) with a
// directory, a receiver on a MemLink and a stall detector on a fake clock, whose
// agent steps backups down after stepDown of stall (0: never).
func stallBackup(t *testing.T, stepDown time.Duration) (*backup, func(dt time.Duration, icount uint64)) {
	t.Helper()
	a := testAgent(t, "hostb", "")
	a.cfg.StallStepDown = stepDown
	b, _ := lifeBackup(t, a, slog.New(slog.DiscardHandler))
	b.dir = t.TempDir()
	link := logging.NewMemLink()
	b.recv = logging.NewReceiver(link.B(), logging.NewMemLog(12), logging.ReceiverConfig{StartOffset: 12,
		StallReports: true, HeartbeatInterval: 10 * time.Millisecond, PeerTimeout: time.Hour})
	if err := b.life.start(1, "hosta", true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.life.close)
	d := newStallDetector(3 * time.Second)
	t0 := time.Unix(1_700_000_000, 0)
	return b, func(dt time.Duration, icount uint64) {
		b.watchStall(d, replaySample{At: t0.Add(dt), Icount: icount, LogIcount: 1000, Position: 40, Fed: 80, Held: 112})
	}
}

// A stall is reported at --stall-after and changes nothing else until it has lasted
// --stall-step-down: then the backup steps down (it claims nothing), its detail
// says the sentinel stepped it down for a stall and where the replay stood, and
// stepdown.json in its directory keeps the same for forensics.
func TestBackupStepsDownOnLongStall(t *testing.T) {
	b, sample := stallBackup(t, 10*time.Second)
	sample(0, 500)
	sample(3*time.Second, 500)
	sample(9999*time.Millisecond, 500)
	if st := b.status(); st.State != "replaying" || !st.ReplayStalled || st.StepDownEvidence != "" {
		t.Fatalf("before the step-down threshold: state %s, stalled %v, evidence %q", st.State, st.ReplayStalled, st.StepDownEvidence)
	}
	sample(10*time.Second, 500)
	st := b.status()
	if st.State != "failed" {
		t.Fatalf("stalled 10 s with a 10 s step-down threshold: state %s (%s)", st.State, st.Detail)
	}
	for _, w := range []string{"stepped down: " + lifecycle.SentinelMark, "replay stalled for 10s", "icount 500", "log offset 40", "held 112"} {
		if !strings.Contains(st.Detail, w) {
			t.Errorf("detail %q does not say %q", st.Detail, w)
		}
	}
	if want := filepath.Join(b.dir, evidenceFile); st.StepDownEvidence != want {
		t.Fatalf("evidence at %q, want %q", st.StepDownEvidence, want)
	}
	data, err := os.ReadFile(st.StepDownEvidence)
	if err != nil {
		t.Fatal(err)
	}
	var ev stepDownEvidence
	if err := json.Unmarshal(data, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Icount != 500 || ev.LogOffset != 40 || !ev.Stalled || ev.StalledSec != 10 || ev.Stalls != 1 ||
		ev.VM != "vm1" || ev.Peer != "hosta" || !strings.Contains(ev.Reason, "replay stalled") {
		t.Fatalf("evidence %+v", ev)
	}
	// Later samples change nothing: the step-down is sent once.
	sample(11*time.Second, 500)
	if st2 := b.status(); st2.Detail != st.Detail {
		t.Fatalf("detail changed after the step-down: %q", st2.Detail)
	}
}

// Stalls that end before the step-down threshold, a replay that has reported no
// count yet (a snapshot still loading), an agent that only reports stalls
// (--stall-step-down 0) and a backup whose primary is lost (claiming: the
// sentinel guards a healthy primary's protection) never step down.
func TestBackupStallWithoutStepDown(t *testing.T) {
	for _, tc := range []struct {
		name     string
		stepDown time.Duration
		run      func(sample func(time.Duration, uint64))
		state    string
		lost     bool
	}{
		{"the primary is lost", 10 * time.Second, func(sample func(time.Duration, uint64)) {
			sample(0, 500)
			sample(time.Minute, 500)
		}, "claiming", true},
		{"recovers before the threshold", 10 * time.Second, func(sample func(time.Duration, uint64)) {
			sample(0, 500)
			sample(9900*time.Millisecond, 500)
			sample(9950*time.Millisecond, 501)
			sample(19900*time.Millisecond, 501) // 9.95 s still again
		}, "", false},
		{"no count yet", 10 * time.Second, func(sample func(time.Duration, uint64)) {
			sample(0, 0)
			sample(time.Minute, 0)
		}, "", false},
		{"reports only", 0, func(sample func(time.Duration, uint64)) {
			sample(0, 500)
			sample(time.Hour, 500)
		}, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, sample := stallBackup(t, tc.stepDown)
			if tc.lost {
				// No store here: the claim stays in flight, the backup claiming.
				_ = b.life.step(lifecycle.PeerLost(errors.New("peer silent")))
			}
			tc.run(sample)
			want := tc.state
			if want == "" {
				want = "replaying"
			}
			if st := b.status(); st.State != want || st.StepDownEvidence != "" {
				t.Fatalf("state %s (%s), evidence %q: want %s", st.State, st.Detail, st.StepDownEvidence, want)
			}
			if _, err := os.Stat(filepath.Join(b.dir, evidenceFile)); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("evidence written: %v", err)
			}
		})
	}
}

func TestStallStepDownConfig(t *testing.T) {
	for _, tc := range []struct {
		after, down time.Duration
		ok          bool
	}{
		{0, DefaultStallStepDown, true},
		{3 * time.Second, 3 * time.Second, true},
		{3 * time.Second, 0, true},
		{3 * time.Second, 2 * time.Second, false},
		{0, 2 * time.Second, false}, // under the default report threshold
		{3 * time.Second, -time.Second, false},
	} {
		cfg := DefaultConfig("h", t.TempDir())
		cfg.StallAfter, cfg.StallStepDown = tc.after, tc.down
		if err := cfg.Validate(); (err == nil) != tc.ok {
			t.Errorf("stall-after %s, stall-step-down %s: %v, want ok=%v", tc.after, tc.down, err, tc.ok)
		}
	}
	if DefaultStallStepDown < DefaultStallAfter {
		t.Fatalf("the default step-down (%s) is under the default report threshold (%s)", DefaultStallStepDown, DefaultStallAfter)
	}
}

// A new backup of a VM whose last backup the sentinel stepped down keeps that one's
// evidence (its directory moved aside, one generation, without the replay's disk);
// a directory without evidence is simply replaced.
func TestKeepEvidence(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "vm1.backup")
	write := func(name, s string) {
		t.Helper()
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("log.rr", "old log")
	if kept, err := keepEvidence(dir); err != nil || kept != "" {
		t.Fatalf("no evidence: kept %q, %v", kept, err)
	}
	for gen := 1; gen <= 2; gen++ {
		write("log.rr", fmt.Sprintf("log %d", gen))
		write("disk.qcow2", "the replay's disk")
		if _, err := writeEvidence(dir, stepDownEvidence{Reason: fmt.Sprintf("step-down %d", gen), Icount: uint64(gen)}); err != nil {
			t.Fatal(err)
		}
		kept, err := keepEvidence(dir)
		if err != nil || kept != dir+steppedDownSuffix {
			t.Fatalf("kept %q, %v", kept, err)
		}
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the backup directory is still there: %v", err)
		}
		if got, _ := os.ReadFile(filepath.Join(kept, "log.rr")); string(got) != fmt.Sprintf("log %d", gen) {
			t.Fatalf("generation %d: kept log %q", gen, got)
		}
		if _, err := os.Stat(filepath.Join(kept, "disk.qcow2")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the replay's disk was kept: %v", err)
		}
		ev, _ := os.ReadFile(filepath.Join(kept, evidenceFile))
		if !strings.Contains(string(ev), fmt.Sprintf("step-down %d", gen)) {
			t.Fatalf("generation %d: evidence %s", gen, ev)
		}
	}
}

// The step-down end to end in memory: the backup's sentinel trips, its reason
// crosses a real log channel, and the primary (shared storage) claims the next
// epoch itself and never halts, runs on unprotected saying why, and protects the VM
// again by itself once the backup's agent answers a ping.
func TestSentinelStepDownReprotects(t *testing.T) {
	ca := newTestCA(t)
	ba := testAgent(t, "hostb", ca.issue("hostb"))
	addr := servePeersTLS(t, ba)
	store := storeWith(t)
	// Set up before the primary: the test's cleanups run the other way round, and
	// the primary's teardown must not wait on a listener already gone.
	b, _ := lifeBackup(t, ba, ba.log)
	b.dir = t.TempDir()
	env := lifePrimaryAt(t, store, 5*time.Millisecond, addr)
	p := env.p
	p.a.cfg.KeysDir = ca.issue("hosta")
	if err := ba.register("vm1", b); err != nil {
		t.Fatal(err)
	}
	if err := b.life.start(1, "hosta", true); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	p.vmCtx = context.Background() // a re-protection needs the running VM's context
	p.mu.Unlock()
	channelPair(t, env, b, 0)

	b.sentinelStepDown("replay diverged from the recording: frame #7 differs; replay at icount 9, log offset 4000", 9, 4000)
	st := waitLife(t, p.life, lifecycle.Unprotected)
	for _, w := range []string{"backup stepped down", lifecycle.SentinelMark, "frame #7 differs", "won epoch 2"} {
		if !strings.Contains(st.Detail, w) {
			t.Errorf("primary detail %q does not say %q", st.Detail, w)
		}
	}
	if c, _ := store.Current(context.Background(), "vm1"); c.Epoch != 2 || c.Owner != "hosta" {
		t.Fatalf("store %+v: want epoch 2 owned by the primary (the backup never claims)", c)
	}
	if env.out.setModes() != "[unprotected]" {
		t.Fatalf("output modes %s, want [unprotected]: the primary runs on", env.out.setModes())
	}
	waitDone(t, b.done(), "the stepped-down backup's teardown")
	if bs := b.status(); bs.State != "failed" || !strings.Contains(bs.Detail, lifecycle.SentinelMark) || bs.StepDownEvidence == "" {
		t.Fatalf("backup: %s (%s), evidence %q", bs.State, bs.Detail, bs.StepDownEvidence)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := p.status()
		if s.Sync != nil {
			if !s.Sync.Auto || s.Sync.Backup != addr {
				t.Fatalf("sync %+v: want the primary's own re-protection with %s", s.Sync, addr)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no re-protection 10 s after the backup stepped down: %s (%s)", s.State, s.Detail)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if st := p.life.state(); st.State == lifecycle.Halted || st.State == lifecycle.Failed {
		t.Fatalf("primary %v", st.State)
	}
}

// A ping (a primary waiting to re-protect) is refused while a copy of the VM still
// runs on the agent (a stepped-down backup tearing down): starting a backup there
// would be refused too. Once it is done, or for another VM, the ping is answered.
func TestPingWaitsForTheOldCopy(t *testing.T) {
	ca := newTestCA(t)
	ba := testAgent(t, "hostb", ca.issue("hostb"))
	addr := servePeersTLS(t, ba)
	keys := ca.issue("hosta")
	b, _ := lifeBackup(t, ba, ba.log)
	if err := ba.register("vm1", b); err != nil {
		t.Fatal(err)
	}
	if err := b.life.start(1, "hosta", true); err != nil {
		t.Fatal(err)
	}
	ping := func(vm string) (peerReply, error) {
		return helloAs(t, addr, keys, peerHello{Op: "ping", From: "hosta", Spec: vmspec.Spec{Name: vm}})
	}
	if r, err := ping("vm1"); err != nil || r.OK || !strings.Contains(r.Error, "still running") {
		t.Fatalf("ping while vm1's backup runs: %+v, %v; want refused", r, err)
	}
	if r, err := ping("vm2"); err != nil || !r.OK {
		t.Fatalf("ping for another vm: %+v, %v", r, err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := b.stop(sctx); err != nil {
		t.Fatal(err)
	}
	if r, err := ping("vm1"); err != nil || !r.OK {
		t.Fatalf("ping after the backup stopped: %+v, %v", r, err)
	}
}
