package e2e

import (
	"context"
	"math/rand"
	"os"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
)

// TestFailover runs the failover drills under continuous client load, the fault at a
// random moment: kill-primary (SIGKILL of every process of host A), kill-backup, and a
// partition of the A-B link. Each must leave exactly one live copy, lose no answered
// request and keep the client's TCP connection.
func TestFailover(t *testing.T) {
	if os.Getenv("FTVMD_E2E") != "1" {
		t.Skip("end-to-end test: set FTVMD_E2E=1 (test/run-tests.sh does)")
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	// The last two kill the primary in the middle of a bulk transfer each way: the
	// backup must replay up to the cut under that load and go live, and the transfer
	// must carry on over the same TCP connection, every byte checked.
	drills := []struct{ kind, bulk string }{
		{bench.KillPrimary, ""}, {bench.KillBackup, ""}, {bench.Partition, ""}, {bench.Planned, ""},
		{bench.KillPrimary, bench.BulkGet}, {bench.KillPrimary, bench.BulkPut},
	}
	for i, d := range drills {
		kind := d.kind
		name := kind
		if d.bulk != "" {
			name += "-during-bulk-" + d.bulk
		}
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
			defer cancel()
			s := drillLab(ctx, t, agentArgs()...) // a fresh lab per drill
			rep, err := bench.RunDrillOpts(ctx, s, bench.NewEnv("e2e"), bench.DrillOpts{VM: "fo" + string(rune('a'+i)), Kind: kind, Bulk: d.bulk}, rng)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", rep)
			if d.bulk != "" {
				if rep.BulkError != "" {
					t.Fatalf("bulk %s through the failover: %s (%d bytes checked before it broke)", d.bulk, rep.BulkError, rep.BulkBytes)
				}
				t.Logf("bulk %s: %d bytes checked end to end, %d after the fault", d.bulk, rep.BulkBytes, rep.BulkBytesPost)
			}
			if rep.RequestsLost != 0 || rep.Inconsistent != 0 {
				t.Fatalf("requests lost %d, inconsistent %d", rep.RequestsLost, rep.Inconsistent)
			}
			if !rep.ConnSurvived {
				t.Fatal("the client's TCP connection did not survive")
			}
			if rep.GuestRebooted || rep.CounterAfter <= rep.CounterBefore {
				t.Fatalf("guest counter %d -> %d: the guest lost its memory", rep.CounterBefore, rep.CounterAfter)
			}
			if rep.OwnerState != "unprotected" {
				t.Fatalf("survivor on %s is %s", rep.Owner, rep.OwnerState)
			}
			switch kind {
			case bench.KillPrimary:
				if rep.Owner != "b" {
					t.Fatalf("owner %s after the primary died", rep.Owner)
				}
			case bench.Planned:
				if rep.Owner != "b" || rep.LoserState != "handed-over" {
					t.Fatalf("planned failover: owner %s, old primary %s", rep.Owner, rep.LoserState)
				}
			case bench.KillBackup:
				if rep.Owner != "a" {
					t.Fatalf("owner %s after the backup died", rep.Owner)
				}
			case bench.Partition:
				if rep.LoserState != "halted" {
					t.Fatalf("partition: the loser is %s, want halted", rep.LoserState)
				}
				if rep.LoserReleasedAf != 0 {
					t.Fatalf("partition: the loser released %d frames after the claim", rep.LoserReleasedAf)
				}
			}
			if rep.NewConns == 0 {
				t.Fatal("no new connection succeeded during the drill")
			}
		})
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}
