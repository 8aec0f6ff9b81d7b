package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
	"github.com/ftvmd/ftvmd/lab"
)

// loadPhaseTime is how long each traffic pattern runs. The replay stall of issue 12
// came within seconds of a bulk guest->client stream; a minute per pattern also
// covers slower build-ups (lag growing until the throttle holds the primary).
const loadPhaseTime = 60 * time.Second

// TestLoadLockstep protects one guest (one lab, one boot) and runs every traffic
// pattern of `ftvmd bench load` against it in turn, with the agents as the lab
// starts them (flush, throttle and pacing as shipped). All the while the backup's
// replay must keep advancing (never still for bench.StallGrace), the consoles
// must agree, both copies must stay protected/replaying, the replaying QEMU must
// emit nothing and the output rule's invariant must hold. Each pattern is a
// subtest; once one fails, the ones after it fail too (the guest is no longer in
// lockstep to test). Per phase it logs one `loadphase key=value` line and, with
// FTVMD_E2E_ARTIFACTS set, appends the same as JSON to loadlockstep.jsonl there.
func TestLoadLockstep(t *testing.T) {
	l := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	const vm = "loadguest"
	bound := protectGuest(ctx, t, l, vm)
	c := bench.LabCopies(vm)
	// Replay of boot is slower than record: give the backup time to catch up.
	if err := lab.WaitConsole(ctx, c.BackupConsole, "ftguest ready", 4*time.Minute); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, vm, bound, 2*time.Minute)

	var jsonl *os.File
	if dir := os.Getenv("FTVMD_E2E_ARTIFACTS"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.OpenFile(filepath.Join(dir, "loadlockstep.jsonl"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		jsonl = f
	}
	failed := ""
	for _, p := range bench.LoadPatterns() {
		t.Run(p.Name, func(t *testing.T) {
			if failed != "" {
				t.Fatalf("not run: %s", failed)
			}
			t.Logf("%s for %s: %s", p.Name, loadPhaseTime, p.Desc)
			ph, err := bench.RunLoadPhase(ctx, c, p, bench.LabTarget(), loadPhaseTime)
			t.Log(ph.Line())
			if jsonl != nil {
				if _, werr := jsonl.WriteString(ph.JSON() + "\n"); werr != nil {
					t.Errorf("write %s: %v", jsonl.Name(), werr)
				}
			}
			if err != nil {
				failed = "phase " + p.Name + " failed"
				if ph.Diagnosis != "" {
					t.Logf("threads when the replay was found standing:\n%s", ph.Diagnosis)
				}
				logStatus(ctx, t, vm)
				keepEvidence(ctx, t, vm)
				t.Fatalf("%s: %v", p.Name, err)
			}
		})
	}
	if failed != "" {
		return
	}
	// The backup must have replayed what the primary printed a moment ago.
	time.Sleep(2 * time.Second)
	if err := bench.BackupCaughtUp(ctx, c.PrimaryConsole, c.BackupConsole, 3*time.Second); err != nil {
		logStatus(ctx, t, vm)
		keepEvidence(ctx, t, vm)
		t.Fatal(err)
	}
}

// keepEvidence keeps the rr logs, consoles, agent logs and status of a failed run
// under FTVMD_E2E_ARTIFACTS (the logs let an offline replay retry the stall).
func keepEvidence(ctx context.Context, t *testing.T, vm string) {
	t.Helper()
	dir := os.Getenv("FTVMD_E2E_ARTIFACTS")
	if dir == "" {
		return
	}
	dst := filepath.Join(dir, "TestLoadLockstep-evidence")
	if err := bench.KeepEvidence(ctx, dst, vm); err != nil {
		t.Logf("keeping evidence in %s: %v", dst, err)
		return
	}
	t.Logf("rr logs, consoles, agent logs and status kept in %s", dst)
}

// logStatus logs both copies' full status, for a failure's diagnosis.
func logStatus(ctx context.Context, t *testing.T, vm string) {
	t.Helper()
	for _, h := range []lab.Host{lab.HostA, lab.HostB} {
		st, err := lab.Status(ctx, h, vm)
		if err != nil {
			t.Logf("status on %s: %v", h.Name, err)
			continue
		}
		b, _ := json.Marshal(st)
		t.Logf("status on %s: %s", h.Name, b)
	}
}
