package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvmd/ftvmd/bench"
)

// newChaosCmd runs `ftvmd chaos` on the lab: faults at random moments under load.
func newChaosCmd() *cobra.Command {
	var o bench.ChaosOpts
	c := &cobra.Command{
		Use:   "chaos --faults N [--kinds k1,k2] [--weight kind=N,...] [--seed S]",
		Short: "Faults of every kind at random moments on the lab, under client load, each checked end to end (last line JSON)",
		Long: "Brings up the lab, protects a VM with a disk and keeps clients busy (requests on one long connection, new\n" +
			"connections, durable records, bulk data both ways, every byte checked), then injects N faults drawn from\n" +
			"these kinds, waits for the VM to serve again, heals the fault, protects the VM again and goes on:\n\n" +
			kindList() + "\n" +
			"Protecting again: a VM that runs alone after a fault is protected again where it runs, from a snapshot of\n" +
			"its running state (the agent's own re-protection when its lost peer's agent comes back, otherwise\n" +
			"`ftvmd protect`); the guest keeps running, and a reboot fails the fault. Only a VM that no copy runs, or\n" +
			"whose protection in place failed, is restarted from boot. Each fault reports its path (reprotect_path:\n" +
			"unchanged, in-place-auto, in-place, boot) and seconds (reprotect_s, round_s). On a quiet lab (load 2-5) a\n" +
			"failover or carry-on fault took ~21 s with a restart from boot (~12 s of it), ~10 s in place (1.2-1.5 s of\n" +
			"it); docs/benchmarks.md, \"Re-protecting in place\".\n\n" +
			"Per kind it reports requests lost, records lost, bulk bytes corrupted, instants when two copies released\n" +
			"output, whether the VM lived on, and the outage. Exit status 1 when any check failed.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Seed == 0 {
				o.Seed = time.Now().UnixNano()
			}
			// The schedule is checked before the lab comes up.
			kinds, err := bench.WeighKinds(o.Kinds, o.Weights)
			if err != nil {
				return err
			}
			if _, err := bench.ChaosSchedule(o.Seed, o.Faults, kinds); err != nil {
				return err
			}
			env := bench.NewEnv("ftvmd " + strings.Join(os.Args[1:], " "))
			fmt.Fprintf(os.Stderr, "chaos: seed %d, %d faults\n", o.Seed, o.Faults)
			rep, err := bench.RunChaos(cmd.Context(), os.Stderr, env, o)
			if err != nil {
				return err
			}
			printChaos(os.Stdout, rep)
			if err := printSummary(rep); err != nil {
				return err
			}
			if !rep.Pass {
				return fmt.Errorf("chaos: checks failed (evidence in %s)", rep.Evidence)
			}
			return nil
		},
	}
	f := c.Flags()
	f.IntVar(&o.Faults, "faults", 11, "faults to inject")
	f.StringSliceVar(&o.Kinds, "kinds", nil, "draw from these kinds only (comma-separated; a kind given twice is drawn twice as often; default all)")
	f.StringToIntVar(&o.Weights, "weight", nil, "kind=N: draw that kind N times per cycle of every kind (e.g. kill-primary-host=5,kill-primary-qemu=5 makes 12 of 21 faults kill a primary)")
	f.DurationVar(&o.MaxDuration, "max-duration", 0, "start no fault after this long (the run then reports how many of --faults ran; 0: no limit)")
	f.Int64Var(&o.Seed, "seed", 0, "random seed for the order, moments and holds of the faults (default: time)")
	f.StringVar(&o.VM, "vm", "chaos", "name of the VM")
	f.StringVar(&o.Evidence, "evidence-dir", "", "where to keep agent logs, journals, consoles, claims and the report (default /var/tmp/ftvmd-chaos/evidence-<time>)")
	f.StringSliceVar(&o.AgentArgs, "agent-arg", nil, "extra flag for the lab agents (repeatable)")
	return c
}

func kindList() string {
	var b strings.Builder
	for _, k := range bench.ChaosKinds() {
		fmt.Fprintf(&b, "  %-22s %s (expected: %s)\n", k.Name, k.Desc, k.Expect)
	}
	return b.String()
}

// printChaos prints a chaos report for people: one line per fault, a table per kind.
func printChaos(w io.Writer, r bench.ChaosReport) {
	fmt.Fprintf(w, "chaos: %d faults, seed %d, %.0f s, load average %s at the start, %s at the end\n", len(r.Faults), r.Seed, r.DurationS, r.LoadAvgStart, r.LoadAvgEnd)
	for _, f := range r.Faults {
		fmt.Fprintln(w, bench.FaultLine(f))
	}
	fmt.Fprintf(w, "\n%-22s %6s %5s %-20s %6s %6s %7s %7s %9s %7s %7s %9s %9s\n", "kind", "faults", "bulk", "outcomes", "req", "rec", "corrupt", "double", "alive", "p50 ms", "p99 ms", "problems", "verdict")
	for _, k := range r.PerKind {
		var outs []string
		for o, n := range k.Outcomes {
			outs = append(outs, fmt.Sprintf("%s:%d", o, n))
		}
		sort.Strings(outs)
		verdict := "pass"
		if !k.Pass {
			verdict = "FAIL"
		}
		fmt.Fprintf(w, "%-22s %6d %5d %-20s %6d %6d %7d %7d %4d/%-4d %7.0f %7.0f %9d %9s\n", k.Kind, k.Faults, k.DuringBulk, strings.Join(outs, ","),
			k.RequestsLost+k.Inconsistent, k.RecordsMissing, k.BulkCorruptBytes, k.DoubleRelease+k.Superseded,
			k.Alive, k.Faults, k.OutageMS.P50, k.OutageMS.P99, k.Problems, verdict)
	}
	kills, killsBulk := 0, 0
	for _, f := range r.Faults {
		if f.Kind == "kill-primary-host" || f.Kind == "kill-primary-qemu" {
			kills++
			if f.BulkMoving {
				killsBulk++
			}
		}
	}
	fmt.Fprintf(w, "\nkill-primary-host and kill-primary-qemu: %d of %d faults, %d of them during a bulk transfer (bulk: faults whose transfer was moving in the half second before)\n",
		kills, len(r.Faults), killsBulk)
	fmt.Fprintf(w, "records acknowledged %d, missing at the end %d; guest frames seen: %v; double releases outside the faults %d/%d\n",
		r.RecordsAcked, r.RecordsMissingAtEnd, r.FramesSeen, r.DoubleReleaseOutside, r.SupersededOutside)
	fmt.Fprintf(w, "seconds per fault: p50 %.1f, max %.1f over %d; re-protect:", r.RoundS.P50, r.RoundS.Max, r.RoundS.N)
	paths := make([]string, 0, len(r.ReprotectS))
	for p := range r.ReprotectS {
		paths = append(paths, string(p))
	}
	sort.Strings(paths)
	for _, p := range paths {
		d := r.ReprotectS[bench.ReprotectPath(p)]
		fmt.Fprintf(w, " %s %d (p50 %.1f s, max %.1f s)", p, d.N, d.P50, d.Max)
	}
	fmt.Fprintln(w)
	if r.Error != "" {
		fmt.Fprintf(w, "run stopped early: %s\n", r.Error)
	}
	if r.StoppedAt != "" {
		fmt.Fprintf(w, "run ended at its time limit: %s\n", r.StoppedAt)
	}
	verdict := "PASS"
	if !r.Pass {
		verdict = "FAIL"
	}
	fmt.Fprintf(w, "chaos %s; evidence in %s\n", verdict, r.Evidence)
}
