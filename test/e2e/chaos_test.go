package e2e

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
)

// TestChaosEveryKind is the short chaos run CI makes (issue 14): `ftvmd chaos` with
// every fault kind once, in a seeded random order, each at a random moment under
// request, record and bulk load, each checked end to end. It fails when any check
// of any fault fails: an acknowledged request or record lost, a bulk byte corrupted,
// two copies releasing output, the VM not alive where the guarantees say it lives,
// a guest reboot, an outcome other than docs/failover-guarantees.md's, a VM that
// survived the fault but was not protected again in place. 198 s on the 2-core lab at
// load average ~4 (2026-11-30, docs/benchmarks.md "Re-protecting in place"); 12
// minutes at load ~20 when every failover ended in a restart from boot ("Run 4").
func TestChaosEveryKind(t *testing.T) {
	if os.Getenv("FTVMD_E2E") != "1" {
		t.Skip("end-to-end test: set FTVMD_E2E=1 (test/run-tests.sh does)")
	}
	seed := time.Now().UnixNano()
	// FTVMD_CHAOS_SEED replays a failed run's order, moments and holds.
	if v := os.Getenv("FTVMD_CHAOS_SEED"); v != "" {
		var err error
		if seed, err = strconv.ParseInt(v, 10, 64); err != nil {
			t.Fatalf("FTVMD_CHAOS_SEED=%q: %v", v, err)
		}
	}
	t.Logf("seed %d (rerun: ftvmd chaos --faults %d --seed %d)", seed, len(bench.ChaosKindNames()), seed)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	kinds := bench.ChaosKindNames()
	evidence := ""
	if dir := os.Getenv("FTVMD_E2E_ARTIFACTS"); dir != "" {
		evidence = filepath.Join(dir, "TestChaosEveryKind")
	}
	rep, err := bench.RunChaos(ctx, testWriter{t}, bench.NewEnv("e2e TestChaosEveryKind"),
		bench.ChaosOpts{Faults: len(kinds), Seed: seed, Evidence: evidence, AgentArgs: agentArgs()})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d faults in %.0f s; load average %s at the start, %s at the end; evidence in %s",
		len(rep.Faults), rep.DurationS, rep.LoadAvgStart, rep.LoadAvgEnd, rep.Evidence)
	for _, f := range rep.Faults {
		t.Log(bench.FaultLine(f))
		t.Logf("  re-protect: %s", f.Reprotect)
	}
	if rep.Error != "" {
		t.Errorf("the run stopped early: %s", rep.Error)
	}
	// Every kind ran exactly once.
	var ran []string
	for _, f := range rep.Faults {
		ran = append(ran, f.Kind)
	}
	slices.Sort(ran)
	want := slices.Clone(kinds)
	slices.Sort(want)
	if !slices.Equal(ran, want) {
		t.Errorf("kinds run %v, want every kind once %v", ran, want)
	}
	// The checks, fault by fault (the report's verdict is their sum; each is named
	// here so that a failure says which).
	for _, f := range rep.Faults {
		name := f.Kind
		if !f.Expect.Matches(f.Outcome) {
			t.Errorf("%s: outcome %s, the guarantees say %s", name, f.Outcome, f.Expect)
		}
		if f.Outcome.Alive() && (f.RequestsLost > 0 || !f.Alive || !f.ConnSurvived) {
			t.Errorf("%s: requests lost %d, alive %v, request connection survived %v", name, f.RequestsLost, f.Alive, f.ConnSurvived)
		}
		if f.Inconsistent > 0 || f.RecordsMissing+f.RecordsMissingAfter > 0 || f.BulkCorruptBytes > 0 ||
			f.DoubleRelease > 0 || f.ReleasedSupersede > 0 || f.GuestRebooted {
			t.Errorf("%s: inconsistent answers %d, records missing %d+%d, bulk bytes corrupt %d, double release %d+%d, rebooted %v",
				name, f.Inconsistent, f.RecordsMissing, f.RecordsMissingAfter, f.BulkCorruptBytes, f.DoubleRelease, f.ReleasedSupersede, f.GuestRebooted)
		}
		// A VM that one copy runs alone after the fault is protected again where it
		// runs (bench/chaosreprotect.go): a restart from boot there means its
		// protection in place failed (the fault's reprotect says why).
		if (f.Outcome == bench.OutcomeFailover || f.Outcome == bench.OutcomeCarryOn) && f.ReprotectPath == bench.ReprotectBoot {
			t.Errorf("%s: protected again from boot, not in place: %s", name, f.Reprotect)
		}
		if len(f.Problems) > 0 {
			t.Errorf("%s: %v", name, f.Problems)
		}
	}
	if rep.RecordsMissingAtEnd != 0 || rep.DoubleReleaseOutside != 0 || rep.SupersededOutside != 0 {
		t.Errorf("at the end: records missing %d of %d, double release outside the faults %d+%d",
			rep.RecordsMissingAtEnd, rep.RecordsAcked, rep.DoubleReleaseOutside, rep.SupersededOutside)
	}
	if !rep.Pass && !t.Failed() {
		t.Error("the chaos report did not pass")
	}
}
