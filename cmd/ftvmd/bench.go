package main

import "github.com/spf13/cobra"

func newBenchCmd() *cobra.Command {
	return &cobra.Command{Use: "bench", Short: "Benchmarks on the lab (see docs/benchmarks.md)"}
}
