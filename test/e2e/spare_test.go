package e2e

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
	"github.com/ftvmd/ftvmd/lab"
)

// TestReprotectOnSpareHost: issue 15's second half. A VM defined on host a with
// the agent addresses of a, b and the spare host d as its backup hosts (the same
// list would serve every host) is protected a -> b under client load. Every
// process of a is SIGKILLed and a stays down: b goes live and, with no command,
// protects the VM again with its backup on d, the first backup host that answers
// (not a, which is down, and never itself); d's replay prints b's console byte
// for byte. Then every process of b is SIGKILLed: d goes live. The client's TCP
// connection survives both failovers with no request lost, the guest's counter
// carries on (never rebooted), no released frame breaks the output rule (the
// agents check every release), and d, alone with no backup host up but itself,
// stays unprotected.
func TestReprotectOnSpareHost(t *testing.T) {
	if os.Getenv("FTVMD_E2E") != "1" {
		t.Skip("end-to-end test: set FTVMD_E2E=1 (test/run-tests.sh does)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	s := drillLab(ctx, t, agentArgs()...)
	rep, err := bench.RunSpare(ctx, s, bench.NewEnv("e2e"), bench.SpareOpts{VM: "spare", Settle: 5 * time.Second})
	t.Logf("%+v", rep)
	if err != nil {
		t.Fatal(err)
	}
	a, b, d := lab.HostA.Peer(), lab.HostB.Peer(), lab.HostD.Peer()

	// b's re-protection: on d, with no command, and only ever on d.
	if rep.Backup != d {
		t.Errorf("b protected the VM again with its backup on %q, want d (%s)", rep.Backup, d)
	}
	for _, bk := range rep.SyncBackups {
		switch bk {
		case a:
			t.Errorf("b tried to protect the VM on a (%s), which is down (protections after the kill: %v)", bk, rep.SyncBackups)
		case b:
			t.Errorf("b tried to protect the VM on itself (%s) (protections after the kill: %v)", bk, rep.SyncBackups)
		}
	}
	if len(rep.SyncBackups) != 1 {
		t.Errorf("b started %d protections after a's kill (%v), want one, on d", len(rep.SyncBackups), rep.SyncBackups)
	}
	if !slices.Equal(rep.ProtectPeers, []string{"d"}) {
		t.Errorf("b's journal names the backups %v for its protections after a's kill, want [d]", rep.ProtectPeers)
	}
	if rep.ReprotectionsB != 1 {
		t.Errorf("b counts %d re-protections, want 1", rep.ReprotectionsB)
	}
	if rep.SpareRole != "backup" || rep.SpareState != "replaying" {
		t.Errorf("d's copy is %s %q once b is protected again, want a replaying backup", rep.SpareRole, rep.SpareState)
	}
	if rep.WindowMS <= 0 || rep.PauseMS <= 0 {
		t.Errorf("b's re-protection: window %.0f ms, pause %.0f ms not measured", rep.WindowMS, rep.PauseMS)
	}
	if rep.ConsoleCompared == 0 || rep.Divergence != "" {
		t.Errorf("d's replay against b's console: %d bytes compared, divergence %q", rep.ConsoleCompared, rep.Divergence)
	}
	if rep.SpareEmitted != 0 {
		t.Errorf("d's replaying QEMU tried to send %d frames", rep.SpareEmitted)
	}

	// d after b's kill: live, and nobody to protect it with (a and b down, not itself).
	if rep.Owner != "d" || rep.OwnerState != "unprotected" {
		t.Errorf("the VM runs on %s as %q (%s), want live (unprotected) on d", rep.Owner, rep.OwnerState, rep.OwnerDetail)
	}
	if len(rep.DProtectPeers) != 0 {
		t.Errorf("d protected the VM with %v after b's kill; a and b are down and d must not pick itself", rep.DProtectPeers)
	}
	if !rep.ADown {
		t.Error("a process runs on host a, which was to stay down")
	}

	// The client and the guest saw nothing of it.
	if rep.RequestsLost != 0 || rep.Inconsistent != 0 || !rep.ConnSurvived {
		t.Errorf("requests lost %d, inconsistent %d, connection survived %v", rep.RequestsLost, rep.Inconsistent, rep.ConnSurvived)
	}
	if rep.GuestRebooted || rep.CounterAfter <= rep.CounterBefore {
		t.Errorf("guest counter %d -> %d: the guest rebooted or lost its memory", rep.CounterBefore, rep.CounterAfter)
	}
	if rep.InvariantFails != 0 {
		t.Errorf("%d released frames broke the output rule", rep.InvariantFails)
	}
	t.Logf("a killed: b live in %.1f s, protected again on d by itself (window %.1f s: waiting for a host %.1f s, pause %.0f ms, copy %.1f s, catch-up %.1f s; console identical for %d bytes); b killed: d live in %.1f s; %d requests, %d lost; test took %s",
		rep.LiveOnBMS/1000, rep.WindowMS/1000, rep.WaitMS/1000, rep.PauseMS, rep.CopyMS/1000, rep.CatchUpMS/1000, rep.ConsoleCompared,
		rep.LiveOnDMS/1000, rep.Requests, rep.RequestsLost, time.Since(start).Round(time.Second))
}
