package e2e

import (
	"context"
	"math/rand"
	"os"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
)

// TestAgentRestartHandsOver: `systemctl restart` of the primary's agent (SIGTERM,
// wait, start again) under client load and a bulk guest->client transfer. The agent
// hands the VM over to its backup before it exits: no answered request is lost, the
// guest does not reboot (its counter carries on), the TCP connections survive, every
// bulk byte checks out, and the VM runs live on host B; the restarted agent on A runs
// nothing. Before, the agent's Bye stopped the backup too: the VM was down on both.
func TestAgentRestartHandsOver(t *testing.T) {
	if os.Getenv("FTVMD_E2E") != "1" {
		t.Skip("end-to-end test: set FTVMD_E2E=1 (test/run-tests.sh does)")
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t0 := time.Now()
	s := drillLab(ctx, t, agentArgs()...)
	rep, err := bench.RunDrillOpts(ctx, s, bench.NewEnv("e2e"),
		bench.DrillOpts{VM: "restart", Kind: bench.RestartPrimaryAgent, Bulk: bench.BulkGet}, rand.New(rand.NewSource(seed)))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", rep)
	t.Logf("drill took %s; outage %.0f ms, bulk %d bytes checked (%d after the SIGTERM)",
		time.Since(t0).Round(time.Second), rep.OutageMS, rep.BulkBytes, rep.BulkBytesPost)
	checkLiveOnB(t, rep)
	if rep.BulkError != "" {
		t.Errorf("bulk get through the restart: %s (%d bytes checked before it broke)", rep.BulkError, rep.BulkBytes)
	}
	if rep.LoserState != "gone" {
		t.Errorf("the restarted agent on a shows the VM as %q, want none", rep.LoserState)
	}
	if rep.NewConns == 0 {
		t.Error("no new connection succeeded during the drill")
	}
}
