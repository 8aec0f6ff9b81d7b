package e2e

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
)

// TestProtectRunningOtherPath: TestProtectRunning on the data path the rest of the
// suite does not run on (tap by default, relay with FTVMD_DATA_PATH=tap), then
// the ping-pong, so that both paths meet a protect from a running state and two
// failovers in every run. A guest that runs unprotected on host A is protected
// from its running state while a client sends seq requests; output is held (in
// the kernel on tap, in the agent on relay) from an exact log offset on. Then
// host A is killed: B's backup goes live, A's agent comes back, and B protects
// the VM again by itself; then the same from B back to A. No request is lost,
// the guest's counter carries on, no released frame breaks the output rule (the
// agents check every release), and each new backup's console equals its
// primary's from the snapshot on.
func TestProtectRunningOtherPath(t *testing.T) {
	if os.Getenv("FTVMD_E2E") != "1" {
		t.Skip("end-to-end test: set FTVMD_E2E=1 (test/run-tests.sh does)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	start := time.Now()
	path := otherDataPath()
	s := drillLab(ctx, t, append(agentArgs(), "--data-path="+path)...)
	rep, err := bench.RunProtect(ctx, s, bench.NewEnv("e2e"), bench.ProtectOpts{VM: "pother", Unprotected: 15 * time.Second, Failovers: 2})
	for i, r := range rep.Rounds {
		t.Logf("failover %d: %+v", i+1, r)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rep)
	if rep.DataPath != path {
		t.Fatalf("data path %q, want %q", rep.DataPath, path)
	}
	if rep.RequestsLost != 0 || rep.Inconsistent != 0 || !rep.ConnSurvived {
		t.Fatalf("requests lost %d, inconsistent %d, connection survived %v", rep.RequestsLost, rep.Inconsistent, rep.ConnSurvived)
	}
	if rep.CounterAfter <= rep.CounterBefore {
		t.Fatalf("guest counter %d -> %d: the guest lost its memory", rep.CounterBefore, rep.CounterAfter)
	}
	if rep.InvariantFails != 0 {
		t.Fatalf("%d released frames broke the output rule", rep.InvariantFails)
	}
	if rep.PauseMS <= 0 {
		t.Fatal("no pause measured")
	}
	if rep.Divergence != "" {
		t.Fatalf("a backup's sentinel saw a divergence: %s", rep.Divergence)
	}
	if rep.ConsoleCompared == 0 || rep.SentinelChecked == 0 {
		t.Fatalf("consoles compared %d bytes, sentinel checked %d", rep.ConsoleCompared, rep.SentinelChecked)
	}
	if rep.AddedDelayP50MS <= 0 {
		t.Fatalf("no output held once protected (added delay p50 %.2f ms)", rep.AddedDelayP50MS)
	}
	if len(rep.Rounds) != 2 {
		t.Fatalf("%d failovers, want 2", len(rep.Rounds))
	}
	for i, r := range rep.Rounds {
		if r.WindowMS <= 0 || r.PauseMS <= 0 {
			t.Errorf("failover %d: window %.0f ms, pause %.0f ms not measured", i+1, r.WindowMS, r.PauseMS)
		}
	}
	t.Logf("%s path: protected from a running state (pause %.0f ms, protected %.1f s after the command, client outage %.0f ms), then re-protected by itself after 2 failovers (windows %.1f s, %.1f s); %d requests, 0 lost; consoles identical for %d bytes; test took %s",
		path, rep.PauseMS, rep.ToProtectedMS/1000, rep.OutageMS, rep.Rounds[0].WindowMS/1000, rep.Rounds[1].WindowMS/1000, rep.Requests, rep.ConsoleCompared, time.Since(start).Round(time.Second))
}
