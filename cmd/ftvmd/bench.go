package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvmd/ftvmd/bench"
	"github.com/ftvmd/ftvmd/logspace"
	"github.com/ftvmd/ftvmd/vmspec"
)

// Benchmarks run on the lab (they bring it up and down themselves). Progress goes to
// stderr; the last line on stdout is the JSON summary for docs/benchmarks.md.
func newBenchCmd() *cobra.Command {
	b := &cobra.Command{Use: "bench", Short: "Benchmarks on the lab (see docs/benchmarks.md); the last output line is JSON"}
	opts := &benchOpts{}
	b.PersistentFlags().StringSliceVar(&opts.agentArgs, "agent-arg", nil, "extra flag for the lab agents, e.g. --agent-arg=--cgroup-root= (repeatable)")
	b.PersistentFlags().StringSliceVar(&opts.defineArgs, "define-arg", nil, "extra vm define flag for the bench's guests, after its own, e.g. --define-arg=--icount-shift=1 (repeatable)")
	var dur time.Duration
	var busy bool
	lag := &cobra.Command{
		Use: "lag", Short: "Backup lag and log bandwidth of a protected guest, idle or busy",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(cmd.Context(), opts, func(ctx context.Context, s *bench.Session, env bench.Env) (any, error) {
				return bench.Lag(ctx, s, env, dur, busy)
			})
		},
	}
	lag.Flags().DurationVar(&dur, "duration", 60*time.Second, "sampling time after the backup caught up")
	lag.Flags().BoolVar(&busy, "busy", false, "run a CPU-bound loop in the guest")
	var mb, runs int
	var minRun time.Duration
	var cpuShift int
	cpu := &cobra.Command{
		Use: "cpu", Short: "A CPU-bound task in the guest, unprotected vs protected, in one run",
		Long: "Times md5 of --mb MiB in the guest, repeated back to back so that one unprotected run\n" +
			"lasts at least --min-run (the count is measured once, before the first run, and\n" +
			"used both ways), --runs times unprotected and then protected on the same engine.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(cmd.Context(), opts, func(ctx context.Context, s *bench.Session, env bench.Env) (any, error) {
				return bench.CPU(ctx, s, env, mb, runs, minRun.Seconds(), cpuShift)
			})
		},
	}
	cpu.Flags().IntVar(&mb, "mb", 100, "MiB to md5 in the guest per command")
	cpu.Flags().IntVar(&runs, "runs", 3, "runs each way")
	cpu.Flags().DurationVar(&minRun, "min-run", 30*time.Second, "shortest unprotected run (md5 repeated to fill it)")
	cpu.Flags().IntVar(&cpuShift, "icount-shift", 0, "the guest's --icount-shift (0: vm define's default)")
	var requests, bulk, netLagBound, iperfSecs int
	var neighbour float64
	netc := &cobra.Command{
		Use: "net", Short: "Request/response latency and bulk TCP throughput both ways, unprotected vs protected, in one run",
		Long: "Request/response round trips and a bulk transfer each way with the lab guest's own service,\n" +
			"unprotected and then protected on the same engine. Each mode then runs Debian's iperf3 (one\n" +
			"TCP stream, --iperf-seconds each way: client to guest, then -R) from the lab's client host\n" +
			"against the iperf3 server the guest starts at boot: a standard tool's figures beside bench\n" +
			"net's own. It needs iperf3 on this host and in the guest image (test/guest/build.sh);\n" +
			"--iperf-seconds 0 skips it.",
		RunE: func(cmd *cobra.Command, _ []string) error {
			if iperfSecs < 0 {
				return fmt.Errorf("--iperf-seconds %d: must be 0 (off) or more", iperfSecs)
			}
			if iperfSecs > 0 {
				// Before the lab comes up: a missing client fails at once.
				if err := bench.CheckIperfHost(); err != nil {
					return err
				}
			}
			return runBench(cmd.Context(), opts, func(ctx context.Context, s *bench.Session, env bench.Env) (any, error) {
				return bench.Net(ctx, s, env, bench.NetOpts{Requests: requests, MB: bulk, LagBoundMS: netLagBound, IperfSeconds: iperfSecs, UnprotectedNeighbour: neighbour})
			})
		},
	}
	netc.Flags().Float64Var(&neighbour, "unprotected-neighbour", 0, "keep host b's CPU this busy (0-1) during the unprotected mode, standing in for protection's share of the lab's two cores (0: off)")
	netc.Flags().IntVar(&iperfSecs, "iperf-seconds", 20, "seconds of iperf3 each way in each mode after bench net's own phases (0: off)")
	netc.Flags().IntVar(&requests, "requests", 1000, "request/response round trips")
	netc.Flags().IntVar(&bulk, "mb", 200, "MiB per bulk transfer")
	netc.Flags().IntVar(&netLagBound, "lag-bound-ms", vmspec.DefaultLagBoundMS, "the guest's lag bound: a looser bound throttles the primary less often")
	var foRuns int
	var foBulk string
	fo := &cobra.Command{
		Use: "failover", Short: "Client-observed outage of kill-primary over many runs (detection, claim, go-live)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			env := bench.NewEnv("ftvmd " + strings.Join(os.Args[1:], " "))
			res, err := bench.Failover(cmd.Context(), os.Stderr, env, foRuns, foBulk, opts.lab())
			if err != nil {
				return err
			}
			return printSummary(res)
		},
	}
	fo.Flags().IntVar(&foRuns, "runs", 20, "kill-primary drills")
	fo.Flags().StringVar(&foBulk, "bulk", "", "a bulk transfer through every fault: get (guest->client) or put (client->guest), every byte checked")
	var imgSize string
	var records int
	dk := &cobra.Command{
		Use: "disk", Short: "Durable writes in the guest, unprotected vs protected, and the initial image copy rate",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(cmd.Context(), opts, func(ctx context.Context, s *bench.Session, env bench.Env) (any, error) {
				return bench.Disk(ctx, s, env, imgSize, records)
			})
		},
	}
	dk.Flags().StringVar(&imgSize, "image-size", "1G", "size of the fully allocated image copied at protect")
	dk.Flags().IntVar(&records, "records", 500, "durable records to write each way")
	var loadLabs, loadSecs int
	var evidence string
	var loadPatterns []string
	ld := &cobra.Command{
		Use:   "load",
		Short: "Lockstep under traffic: every load pattern (bulk each way, both, short connections, ping flood, busy CPU plus bulk) on fresh labs; lag, stalls, throughput per pattern",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			patterns, err := bench.SelectLoadPatterns(loadPatterns)
			if err != nil {
				return err
			}
			env := bench.NewEnv("ftvmd " + strings.Join(os.Args[1:], " "))
			res, err := bench.Load(cmd.Context(), os.Stderr, env, loadLabs, time.Duration(loadSecs)*time.Second, patterns, evidence, opts.lab())
			if err != nil {
				return err
			}
			// Per pattern: a line to read, then the same as JSON; the summary last.
			for _, p := range res.Patterns {
				fmt.Println(p.Line())
				line, err := json.Marshal(p)
				if err != nil {
					return err
				}
				fmt.Println(string(line))
			}
			return printSummary(res)
		},
	}
	ld.Flags().IntVar(&loadLabs, "labs", 1, "fresh labs, each running every pattern on one protected guest")
	ld.Flags().IntVar(&loadSecs, "seconds", 60, "seconds of traffic per pattern")
	ld.Flags().StringSliceVar(&loadPatterns, "patterns", nil, "run only these patterns, in this order (comma-separated; default all: get,put,getput,conns,pingflood,busyget)")
	ld.Flags().StringVar(&evidence, "evidence-dir", "", "keep agent logs, consoles and status of a lab whose run failed here")
	var prRuns int
	pr := &cobra.Command{
		Use: "protect", Short: "Protecting a running guest under client load, many times: the guest's pause, time to protected, client outage",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(cmd.Context(), opts, func(ctx context.Context, s *bench.Session, env bench.Env) (any, error) {
				return bench.ProtectRuns(ctx, s, env, "bprot", prRuns)
			})
		},
	}
	pr.Flags().IntVar(&prRuns, "runs", 10, "protections of the running guest (each followed by unprotect)")
	var ppFailovers int
	var ppRecords bool
	var ppSettle time.Duration
	pp := &cobra.Command{
		Use: "pingpong", Short: "kill -9 of the host running a protected guest, back and forth under client load, each failover followed by automatic re-protection: window of vulnerability and its parts",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(cmd.Context(), opts, func(ctx context.Context, s *bench.Session, env bench.Env) (any, error) {
				return bench.RunPingPong(ctx, s, env, bench.PingPongOpts{VM: "bpp", Failovers: ppFailovers, AgentDown: time.Second, Records: ppRecords, Settle: ppSettle})
			})
		},
	}
	pp.Flags().IntVar(&ppFailovers, "failovers", 10, "failovers (each host killed in turn)")
	pp.Flags().DurationVar(&ppSettle, "settle", 2*time.Second, "how long the guest runs protected again before the next kill")
	pp.Flags().BoolVar(&ppRecords, "records", false, "give the guest a disk and write records to it (O_SYNC) beside the seq load; every acknowledged record must read back")
	b.AddCommand(lag, cpu, netc, fo, dk, ld, newSoakCmd(opts), pr, pp)
	return b
}

// newSoakCmd is `ftvmd bench soak`: a sample table on stderr as it runs, the JSON
// summary last on stdout, and a failing exit when a target was missed.
func newSoakCmd(opts *benchOpts) *cobra.Command {
	var o bench.SoakOpts
	c := &cobra.Command{
		Use:   "soak",
		Short: "A busy protected guest under a bulk client->guest stream and a request loop for a long time: log disk, RSS and lag sampled, targets judged",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if _, err := logspace.ParseRetention(o.Retention); err != nil {
				return fmt.Errorf("--retention: %w", err)
			}
			env := bench.NewEnv("ftvmd " + strings.Join(os.Args[1:], " "))
			args := append(append([]string(nil), opts.agentArgs...), "--log-retention="+o.Retention)
			s, err := bench.OpenLab(cmd.Context(), os.Stderr, bench.LabArgs{Agent: args, Define: opts.defineArgs})
			if err != nil {
				return err
			}
			res, err := bench.Soak(cmd.Context(), s, env, o)
			if cerr := s.Close(); cerr != nil && err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			for _, t := range res.Targets {
				met := "met"
				if !t.Met {
					met = "NOT MET"
				}
				fmt.Fprintf(os.Stderr, "target %-28s %-7s %s\n", t.Name, met, t.Detail)
			}
			if err := printSummary(res); err != nil {
				return err
			}
			if !res.Pass {
				return fmt.Errorf("bench soak: targets not met: %s", strings.Join(res.Failed(), "; "))
			}
			return nil
		},
	}
	f := c.Flags()
	f.DurationVar(&o.Duration, "duration", time.Hour, "traffic time after the backup caught up")
	f.DurationVar(&o.Interval, "interval", bench.DefaultSoakInterval, "one sample row per interval")
	f.DurationVar(&o.Poll, "poll", bench.DefaultSoakPoll, "status poll between rows (lag samples, disk peaks)")
	f.StringVar(&o.MaxLogDisk, "max-log-disk", "", "the VM's --max-log-disk (default: vm define's)")
	f.IntVar(&o.LagBoundMS, "lag-bound-ms", 0, "the VM's --lag-bound-ms (default: vm define's)")
	f.StringVar(&o.Retention, "retention", "0", "the lab agents' --log-retention: 0, all, a duration or a size")
	f.StringVar(&o.VM, "vm", "soak", "the VM's name")
	return c
}

// newDrillCmd runs a failover drill on the lab and prints its report.
func newDrillCmd() *cobra.Command {
	var kind string
	var seed int64
	c := &cobra.Command{
		Use:   "drill <vm> --kind kill-primary|kill-backup|partition|planned|restart-primary-agent",
		Short: "Rehearse a failover on the lab under client load and print a report (last line JSON)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if seed == 0 {
				seed = time.Now().UnixNano()
			}
			rng := rand.New(rand.NewSource(seed))
			return runBench(cmd.Context(), &benchOpts{}, func(ctx context.Context, s *bench.Session, env bench.Env) (any, error) {
				rep, err := bench.RunDrill(ctx, s, env, args[0], kind, rng)
				if err == nil {
					printDrill(os.Stderr, rep)
				}
				return rep, err
			})
		},
	}
	c.Flags().StringVar(&kind, "kind", bench.KillPrimary, "kill-primary, kill-backup, partition, planned or restart-primary-agent")
	c.Flags().Int64Var(&seed, "seed", 0, "random seed for the fault's moment (default: time)")
	return c
}

func printDrill(w io.Writer, r bench.DrillReport) {
	fmt.Fprintf(w, "\nfailover drill %s (fault after %.1f s of client load)\n", r.Kind, r.FaultAfterS)
	fmt.Fprintf(w, "  detection       %8.0f ms\n", r.DetectionMS)
	fmt.Fprintf(w, "  epoch claim     %8.0f ms\n", r.ClaimMS)
	fmt.Fprintf(w, "  go-live         %8.0f ms\n", r.GoLiveMS)
	fmt.Fprintf(w, "  client outage   %8.0f ms (longest gap between answered requests over the failover)\n", r.OutageMS)
	fmt.Fprintf(w, "  longest gap     %8.0f ms (from 2 s before the fault on)\n", r.MaxGapMS)
	fmt.Fprintf(w, "  requests        %d answered, %d lost, %d inconsistent; tcp connection survived: %v\n", r.Requests, r.RequestsLost, r.Inconsistent, r.ConnSurvived)
	fmt.Fprintf(w, "  new connections %d ok, %d failed\n", r.NewConns, r.NewConnsFailed)
	fmt.Fprintf(w, "  frames          %d held at the fault, %d released by the survivor\n", r.HeldAtFault, r.ReleasedAfter)
	fmt.Fprintf(w, "  guest           counter %d -> %d, rebooted: %v\n", r.CounterBefore, r.CounterAfter, r.GuestRebooted)
	fmt.Fprintf(w, "  owner now       host %s (%s); the other copy: %s\n\n", r.Owner, r.OwnerState, r.LoserState)
}

// benchOpts are the bench command's shared flags.
type benchOpts struct {
	agentArgs  []string // extra agent flags for benchmark variants (--agent-arg)
	defineArgs []string // extra vm define flags for the bench's guests (--define-arg)
}

func (o *benchOpts) lab() bench.LabArgs {
	return bench.LabArgs{Agent: o.agentArgs, Define: o.defineArgs}
}

func runBench(ctx context.Context, o *benchOpts, fn func(context.Context, *bench.Session, bench.Env) (any, error)) error {
	env := bench.NewEnv("ftvmd " + strings.Join(os.Args[1:], " "))
	s, err := bench.OpenLab(ctx, os.Stderr, o.lab())
	if err != nil {
		return err
	}
	res, err := fn(ctx, s, env)
	if cerr := s.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return printSummary(res)
}

// printSummary prints a benchmark's JSON summary as the last line on stdout.
func printSummary(res any) error {
	line, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(line))
	return nil
}
