package e2e

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
)

// TestPingPong: three failovers back and forth under client load, each followed
// by automatic re-protection: kill -9 of every process of host A, B goes live,
// A's agent starts again and B protects the VM again with A with no command;
// then kill -9 of B, A goes live, re-protected on B; and once more. The client's
// TCP connection survives with no request lost, the guest's counter carries on
// (never rebooted), and each survivor reports its window of vulnerability.
func TestPingPong(t *testing.T) {
	if os.Getenv("FTVMD_E2E") != "1" {
		t.Skip("end-to-end test: set FTVMD_E2E=1 (test/run-tests.sh does)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	start := time.Now()
	s := drillLab(ctx, t, agentArgs()...)
	rep, err := bench.RunPingPong(ctx, s, bench.NewEnv("e2e"), bench.PingPongOpts{VM: "pp", Failovers: 3, AgentDown: time.Second})
	for i, r := range rep.Rounds {
		t.Logf("round %d: %+v", i+1, r)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rep)
	if len(rep.Rounds) != 3 {
		t.Fatalf("%d rounds", len(rep.Rounds))
	}
	if rep.RequestsLost != 0 || rep.Inconsistent != 0 || !rep.ConnSurvived {
		t.Fatalf("requests lost %d, inconsistent %d, connection survived %v", rep.RequestsLost, rep.Inconsistent, rep.ConnSurvived)
	}
	if rep.GuestRebooted || rep.CounterAfter <= rep.CounterBefore {
		t.Fatalf("guest counter %d -> %d: the guest lost its memory", rep.CounterBefore, rep.CounterAfter)
	}
	if rep.OwnerState != "protected" {
		t.Fatalf("the VM on %s is %s at the end", rep.Owner, rep.OwnerState)
	}
	for i, r := range rep.Rounds {
		if r.WindowMS <= 0 || r.PauseMS <= 0 {
			t.Errorf("round %d: window %.0f ms, pause %.0f ms not measured", i+1, r.WindowMS, r.PauseMS)
		}
	}
	t.Logf("%d failovers, %d requests, 0 lost; took %s", len(rep.Rounds), rep.Requests, time.Since(start).Round(time.Second))
}
