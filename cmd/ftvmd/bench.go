package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ftvmd/ftvmd/bench"
)

// Benchmarks run on the lab (they bring it up and down themselves). Progress goes to
// stderr; the last line on stdout is the JSON summary for docs/benchmarks.md.
func newBenchCmd() *cobra.Command {
	b := &cobra.Command{Use: "bench", Short: "Benchmarks on the lab (see docs/benchmarks.md); the last output line is JSON"}
	var dur time.Duration
	var busy bool
	lag := &cobra.Command{
		Use: "lag", Short: "Backup lag and log bandwidth of a protected guest, idle or busy",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(cmd.Context(), func(ctx context.Context, s *bench.Session, env bench.Env) (any, error) {
				return bench.Lag(ctx, s, env, dur, busy)
			})
		},
	}
	lag.Flags().DurationVar(&dur, "duration", 60*time.Second, "sampling time after the backup caught up")
	lag.Flags().BoolVar(&busy, "busy", false, "run a CPU-bound loop in the guest")
	var mb, runs int
	cpu := &cobra.Command{
		Use: "cpu", Short: "A CPU-bound task in the guest, unprotected vs protected, in one run",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(cmd.Context(), func(ctx context.Context, s *bench.Session, env bench.Env) (any, error) {
				return bench.CPU(ctx, s, env, mb, runs)
			})
		},
	}
	cpu.Flags().IntVar(&mb, "mb", 30, "MiB to md5 in the guest")
	cpu.Flags().IntVar(&runs, "runs", 3, "runs each way")
	b.AddCommand(lag, cpu)
	return b
}

func runBench(ctx context.Context, fn func(context.Context, *bench.Session, bench.Env) (any, error)) error {
	env := bench.NewEnv("ftvmd " + strings.Join(os.Args[1:], " "))
	s, err := bench.Open(ctx, os.Stderr)
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
	line, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(line))
	return nil
}
