package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/agent"
	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/logspace"
	"github.com/ftvmd/ftvmd/metrics"
	"github.com/ftvmd/ftvmd/replay"
	"github.com/ftvmd/ftvmd/sdnotify"
	"github.com/ftvmd/ftvmd/vmspec"
)

const defaultStateDir = "/var/lib/ftvmd"

type globalOpts struct {
	socket string
}

func newRoot() *cobra.Command {
	g := &globalOpts{}
	root := &cobra.Command{
		Use:           "ftvmd",
		Short:         "Fault-tolerant VMs: a primary and a backup in virtual lockstep over QEMU record/replay",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&g.socket, "socket", envOr("FTVMD_SOCKET", filepath.Join(defaultStateDir, "ftvmd.sock")), "control socket of the local agent (env FTVMD_SOCKET)")
	root.AddCommand(
		newAgentCmd(),
		newVMCmd(g),
		newProtectCmd(g),
		newRunCmd(g),
		newStatusCmd(g),
		newUnprotectCmd(g),
		newStopCmd(g),
		newFailoverCmd(g),
		newVerifyCmd(g),
		newEventsCmd(g),
		newKeysCmd(),
		newLogCmd(),
		newRRCmd(),
		newBenchCmd(),
		newDrillCmd(),
		newChaosCmd(),
	)
	return root
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func call(ctx context.Context, g *globalOpts, req control.Request) (control.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	return control.Call(ctx, g.socket, req)
}

func newAgentCmd() *cobra.Command {
	o := &agentOpts{}
	c := &cobra.Command{
		Use:   "agent",
		Short: "Run the per-host daemon (as root)",
		Long: "Run the per-host daemon (as root). Settings come from the command line, then " +
			"the config file (--config, default " + defaultConfigFile + " if it exists; every flag " +
			"is a key: `ftvmd agent config` prints them all), then the defaults.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := o.load(agentFlags(cmd))
			if err != nil {
				return err
			}
			// A descriptor this process inherited (the lock of a flock(1) that
			// started it, a shell's pipe) must not leak into the QEMUs it starts,
			// which would hold it as long as the VM runs.
			if err := unix.CloseRange(3, math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC); err != nil {
				cfg.Logger.Warn("inherited descriptors stay open in child processes", "err", err)
			}
			// Under systemd (Type=notify) say when the agent serves and stops.
			n, err := sdnotify.FromEnv()
			if err != nil {
				cfg.Logger.Warn("readiness notification off", "err", err)
			}
			if n != nil {
				log := cfg.Logger
				cfg.Notify = func(lines ...string) {
					if err := n.Notify(lines...); err != nil {
						log.Warn("sd_notify", "err", err)
					}
				}
			}
			a, err := agent.New(cfg)
			if err != nil {
				return o.explain(err)
			}
			defer a.Close()
			return runAgent(cmd.Context(), a, o, cfg.Logger)
		},
	}
	o.register(c.Flags())
	c.AddCommand(newAgentConfigCmd(o, c))
	return c
}

func newVMCmd(g *globalOpts) *cobra.Command {
	vm := &cobra.Command{Use: "vm", Short: "Define VMs"}
	var s vmspec.Spec
	var shift int
	var specFile string
	var maxLogDisk string
	def := &cobra.Command{
		Use:   "define <name>",
		Short: "Validate and store a VM spec on the local agent",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if specFile != "" {
				var err error
				if s, err = readSpecFile(cmd, specFile); err != nil {
					return err
				}
			}
			s.Name = args[0]
			for _, p := range []*string{&s.Kernel, &s.Initrd, &s.Disk} {
				if *p != "" {
					if abs, err := filepath.Abs(*p); err == nil {
						*p = abs
					}
				}
			}
			if specFile == "" {
				s.IcountShift = &shift
				n, err := logspace.ParseSize(maxLogDisk)
				if err != nil {
					return fmt.Errorf("--max-log-disk: %w", err)
				}
				s.MaxLogDisk = n
			}
			s.Normalize()
			if err := s.Validate(); err != nil {
				return err
			}
			resp, err := call(cmd.Context(), g, control.Request{Op: control.OpDefine, Spec: &s})
			if err != nil {
				return err
			}
			fmt.Println(resp.Message)
			return nil
		},
	}
	f := def.Flags()
	f.IntVar(&s.MemoryMB, "memory", vmspec.DefaultMemoryMB, "guest memory in MiB")
	f.StringVar(&s.Kernel, "kernel", "", "guest kernel (must exist at the same path on both hosts)")
	f.StringVar(&s.Initrd, "initrd", "", "guest initrd")
	f.StringVar(&s.Disk, "disk", "", "qcow2 disk image on this host (copied to the backup at protect)")
	f.StringVar(&s.Append, "append", vmspec.DefaultAppend, "kernel command line")
	f.StringVar(&s.MAC, "mac", "52:54:00:12:34:56", "NIC MAC address")
	f.StringVar(&s.Bridge, "bridge", "", "host bridge the VM's tap joins on both hosts (default: the agent's --bridge)")
	f.StringVar(&specFile, "spec", "", "take the spec from this JSON file (as 'ftvmd vm import -o' writes it) instead of the flags")
	f.IntVar(&shift, "icount-shift", vmspec.DefaultIcountShift, "fixed QEMU icount shift (0-10)")
	f.IntVar(&s.LagBoundMS, "lag-bound-ms", vmspec.DefaultLagBoundMS, "backup lag above which the primary is slowed")
	f.StringArrayVar(&s.BackupHosts, "backup-host", nil, "agent address (host:port) of a host that may take the VM's backup when the host it is protected with is lost and does not come back; repeatable, tried in order")
	f.StringVar(&maxLogDisk, "max-log-disk", logspace.FormatSize(vmspec.DefaultMaxLogDisk), "disk space the VM's logs (rr log, console) may take on each host; checked against free space at protect and run")
	vm.AddCommand(def, newVMImportCmd(g))
	return vm
}

// readSpecFile reads a spec file for `vm define --spec`, which takes no other spec
// flags: a file and flags that disagree would leave the operator guessing.
func readSpecFile(cmd *cobra.Command, path string) (vmspec.Spec, error) {
	var clash []string
	cmd.Flags().Visit(func(f *pflag.Flag) {
		if f.Name != "spec" && f.Name != "socket" {
			clash = append(clash, "--"+f.Name)
		}
	})
	if len(clash) > 0 {
		return vmspec.Spec{}, fmt.Errorf("--spec takes the whole spec from %s: drop %s (or edit the file)", path, strings.Join(clash, ", "))
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return vmspec.Spec{}, fmt.Errorf("--spec: %w", err)
	}
	s, err := vmspec.Parse(b)
	var inv *vmspec.InvalidError
	if err != nil && !errors.As(err, &inv) {
		return vmspec.Spec{}, fmt.Errorf("--spec %s: %w", path, err)
	}
	// Validation problems are reported after the name argument is applied.
	return s, nil
}

func newProtectCmd(g *globalOpts) *cobra.Command {
	var backup string
	var keep, keepLog, force bool
	c := &cobra.Command{
		Use:   "protect <vm> --backup <host[:port]>",
		Short: "Start the VM here as primary with a backup in lockstep on another host",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// The disk copy can take minutes: show its progress from the agent's status.
			ctx, cancel := context.WithTimeout(cmd.Context(), 30*time.Minute)
			defer cancel()
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() { defer close(done); showCopyProgress(ctx, g, args[0], stop) }()
			resp, err := control.Call(ctx, g.socket, control.Request{Op: control.OpProtect, VM: args[0], Backup: backup, KeepDiskCopy: keep, KeepLog: keepLog, Force: force})
			close(stop)
			<-done
			if err != nil {
				return err
			}
			fmt.Println(resp.Message)
			return nil
		},
	}
	c.Flags().StringVar(&backup, "backup", "", "backup host's agent address (host or host:port)")
	c.Flags().BoolVar(&keep, "keep-disk-copy", false, "keep a copy of the disk as it is before recording, for 'ftvmd rr check' (implies --keep-log)")
	c.Flags().BoolVar(&keepLog, "keep-log", false, "keep the primary's whole rr log, for 'ftvmd rr check', instead of freeing what the backup acknowledged")
	c.Flags().BoolVar(&force, "force", false, forceHelp)
	return c
}

// showCopyProgress prints a progress bar of the initial disk copy until stop.
func showCopyProgress(ctx context.Context, g *globalOpts, vm string, stop <-chan struct{}) {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	shown := false
	for {
		select {
		case <-stop:
			if shown {
				fmt.Fprintln(os.Stderr)
			}
			return
		case <-t.C:
		}
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := control.Call(sctx, g.socket, control.Request{Op: control.OpStatus, VM: vm})
		cancel()
		if err != nil || len(resp.VMs) != 1 || resp.VMs[0].CopyTotal == 0 {
			continue
		}
		v := resp.VMs[0]
		const width = 30
		n := int(float64(width) * float64(v.CopyDone) / float64(v.CopyTotal))
		fmt.Fprintf(os.Stderr, "\rcopying disk to backup [%s%s] %5.1f%%  %s of %s%s  %.1f MB/s ",
			strings.Repeat("#", n), strings.Repeat(".", width-n), 100*float64(v.CopyDone)/float64(v.CopyTotal),
			size(v.CopyDone), size(v.CopyTotal), resumedNote(v.CopyResumed), v.CopyRate/1e6)
		shown = true
	}
}

func simpleVMCmd(g *globalOpts, use, short, op string) *cobra.Command {
	return &cobra.Command{
		Use: use + " <vm>", Short: short, Args: cobra.ExactArgs(1),
		ValidArgsFunction: completeVMs(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := call(cmd.Context(), g, control.Request{Op: op, VM: args[0]})
			if err != nil {
				return err
			}
			fmt.Println(resp.Message)
			return nil
		},
	}
}

// forceHelp is the --force of run and protect.
const forceHelp = "start even while another host owns the VM's latest epoch on shared storage (it may run there: its copy halts when it sees the new epoch), or storage cannot say who does"

func newRunCmd(g *globalOpts) *cobra.Command {
	var keep, keepLog, force bool
	c := &cobra.Command{
		Use: "run <vm>", Short: "Start the VM here unprotected (same engine, no backup)", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := call(cmd.Context(), g, control.Request{Op: control.OpRun, VM: args[0], KeepDiskCopy: keep, KeepLog: keepLog, Force: force})
			if err != nil {
				return err
			}
			fmt.Println(resp.Message)
			return nil
		},
	}
	c.Flags().BoolVar(&keep, "keep-disk-copy", false, "keep a copy of the disk as it is before recording, for 'ftvmd rr check' (implies --keep-log)")
	c.Flags().BoolVar(&keepLog, "keep-log", false, "keep the whole rr log, for 'ftvmd rr check', instead of only its last --unprotected-log-keep bytes")
	c.Flags().BoolVar(&force, "force", false, forceHelp)
	return c
}

func newUnprotectCmd(g *globalOpts) *cobra.Command {
	return simpleVMCmd(g, "unprotect", "Stop protecting the VM: its primary runs on alone", control.OpUnprotect)
}

func newFailoverCmd(g *globalOpts) *cobra.Command {
	return simpleVMCmd(g, "failover", "Planned switch: the backup takes over with no lost frame (run on the primary's host)", control.OpFailover)
}

func newVerifyCmd(g *globalOpts) *cobra.Command {
	return simpleVMCmd(g, "verify", "Check that both hosts' disk copies are identical at a quiesced point (run on the primary's host)", control.OpVerify)
}

func newStopCmd(g *globalOpts) *cobra.Command {
	return simpleVMCmd(g, "stop", "Stop the VM on this host", control.OpStop)
}

func newStatusCmd(g *globalOpts) *cobra.Command {
	var asJSON, watch bool
	var interval time.Duration
	c := &cobra.Command{
		Use: "status [<vm>]", Short: "Show the VMs this host runs, its peers and what it counted", Args: cobra.MaximumNArgs(1),
		ValidArgsFunction: completeVMs(g),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := control.Request{Op: control.OpStatus}
			if len(args) == 1 {
				req.VM = args[0]
			}
			out := cmd.OutOrStdout()
			if watch {
				if interval <= 0 {
					return fmt.Errorf("--interval %s: must be positive", interval)
				}
				return watchStatus(cmd.Context(), g, req, out, interval, asJSON)
			}
			resp, err := call(cmd.Context(), g, req)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(resp)
			}
			printStatus(out, resp)
			return nil
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print the status as JSON (with --watch: one JSON document per line)")
	c.Flags().BoolVar(&watch, "watch", false, "show the status again every --interval until interrupted")
	c.Flags().DurationVar(&interval, "interval", 2*time.Second, "how often --watch refreshes")
	return c
}

// watchStatus shows the status every interval until ctx ends (Ctrl-C). On a
// terminal each refresh replaces the last; a failed call (an agent restarting) is
// shown and the watch goes on.
func watchStatus(ctx context.Context, g *globalOpts, req control.Request, w io.Writer, interval time.Duration, asJSON bool) error {
	clear := !asJSON && isTerminal(w)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		resp, err := call(ctx, g, req)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case asJSON && err != nil:
			b, _ := json.Marshal(control.Response{Host: resp.Host, Error: err.Error()})
			fmt.Fprintf(w, "%s\n", b)
		case asJSON:
			b, err := json.Marshal(resp)
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "%s\n", b)
		default:
			if clear {
				fmt.Fprint(w, "\033[H\033[2J")
			}
			fmt.Fprintf(w, "every %s: ftvmd status  %s\n\n", interval, time.Now().Format("2006-01-02 15:04:05"))
			if err != nil {
				fmt.Fprintf(w, "ftvmd: %v\n", err)
			} else {
				printStatus(w, resp)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// completeVMs completes a VM name from the local agent's status (cobra shell
// completion): no agent, no suggestions.
func completeVMs(g *globalOpts) func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		resp, err := control.Call(ctx, g.socket, control.Request{Op: control.OpStatus})
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		var names []cobra.Completion
		for _, v := range resp.VMs {
			names = append(names, cobra.CompletionWithDesc(v.Name, v.Role+", "+v.State))
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	}
}

func printStatus(w io.Writer, resp control.Response) {
	if len(resp.VMs) == 0 {
		fmt.Fprintf(w, "host %s: no VMs\n", resp.Host)
	}
	counters := map[string]control.VMCounters{}
	for _, c := range resp.Counters {
		counters[c.Name] = c
	}
	for _, v := range resp.VMs {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "vm\t%s\t(host %s)\n", v.Name, resp.Host)
		fmt.Fprintf(tw, "role\t%s\tstate %s\n", v.Role, v.State)
		if v.Peer != "" {
			fmt.Fprintf(tw, "peer\t%s\n", v.Peer)
		}
		if v.Detail != "" {
			fmt.Fprintf(tw, "detail\t%s\n", v.Detail)
		}
		if v.Forced != "" {
			fmt.Fprintf(tw, "forced\tstarted with --force: %s\n", v.Forced)
		}
		if v.EpochCheck != "" {
			fmt.Fprintf(tw, "epoch check\t%s\n", v.EpochCheck)
		}
		if l := qemuLine(v); l != "" {
			fmt.Fprintf(tw, "qemu\t%s\n", l)
		}
		if v.Divergence != "" {
			fmt.Fprintf(tw, "DIVERGED\t%s\n", v.Divergence)
		} else if v.ConsoleChecked > 0 {
			fmt.Fprintf(tw, "sentinel\tconsole matches the primary's for %s\n", size(v.ConsoleChecked))
		}
		if v.StepDownEvidence != "" {
			fmt.Fprintf(tw, "evidence\t%s (the sentinel's step-down: what it found, where; the log and console beside it)\n", v.StepDownEvidence)
		}
		switch {
		case v.Divergence != "":
		case v.Role == "backup" && v.NICFrames > 0:
			fmt.Fprintf(tw, "sentinel\tNIC: %d frames match the primary's, %d not compared, of %d the replay sent\n", v.NICChecked, v.NICSkipped, v.NICFrames)
		case v.Role == "primary" && v.NICFrames > 0:
			fmt.Fprintf(tw, "sentinel\tNIC: digests of %d frames sent to the backup, %d dropped\n", v.NICFrames, v.NICDropped)
		}
		fmt.Fprintf(tw, "uptime\t%s\tqemu pid %d\n", time.Since(v.StartedAt).Round(time.Second), v.PID)
		if v.DataPath != "" {
			fmt.Fprintf(tw, "data path\t%s\n", v.DataPath)
		}
		if v.Engine != "" {
			fmt.Fprintf(tw, "engine\t%s\n", v.Engine)
		}
		if v.EngineWarning != "" {
			fmt.Fprintf(tw, "warning\t%s\n", v.EngineWarning)
		}
		if v.Epoch > 0 {
			fmt.Fprintf(tw, "epoch\t%d", v.Epoch)
			if v.FailoverClaimMS > 0 || v.FailoverGoLiveMS > 0 {
				fmt.Fprintf(tw, "  (last failover: claim %.0f ms, go-live %.0f ms)", v.FailoverClaimMS, v.FailoverGoLiveMS)
			}
			fmt.Fprintln(tw)
		}
		if v.Disk != "" {
			fmt.Fprintf(tw, "disk\t%s", v.Disk)
			if v.CopyTotal > 0 {
				fmt.Fprintf(tw, "  (copied to backup: %s of %s%s, %.1f MB/s)", size(v.CopyDone), size(v.CopyTotal), resumedNote(v.CopyResumed), v.CopyRate/1e6)
			}
			fmt.Fprintln(tw)
		}
		if y := v.Sync; y != nil {
			fmt.Fprintf(tw, "protection\t%s\n", syncLine(*y))
		}
		if v.Role == "primary" {
			fmt.Fprintf(tw, "log\twritten %s  sent %s  acked %s  replayed %s\n", size(v.LogWritten), size(v.LogSent), size(v.LogAcked), size(v.LogReplayed))
			fmt.Fprintf(tw, "icount\tprimary %d  backup %d\n", v.Icount, v.BackupIcount)
			fmt.Fprintf(tw, "backup lag\t%.1f ms  %s  work %.1f ms (bound %d ms)%s\n", v.LagMS, size(v.LagBytes), v.WorkLagMS, v.LagBoundMS, map[bool]string{true: "  BEHIND", false: ""}[v.BackupBehind])
			if v.ReplayStallReported {
				fmt.Fprintf(tw, "backup replay\t%s\n", stallText(v))
			}
			fmt.Fprintf(tw, "log bandwidth\t%s/s (%.2f Mbit/s)\n", size(int64(v.LogBandwidth)), v.LogBandwidth*8/1e6)
			throttle := "off"
			if v.ThrottleQuota < 1 {
				throttle = fmt.Sprintf("ON: %.0f%% of a CPU", v.ThrottleQuota*100)
				if v.ThrottleAtFloor && v.LagMS > float64(v.LagBoundMS) {
					throttle += " (its floor, and the backup still falls behind: the backup's host is short of CPU for the replay)"
				}
			}
			if v.ThrottleErrors > 0 {
				throttle += fmt.Sprintf("; %d failures to set the quota", v.ThrottleErrors)
			}
			fmt.Fprintf(tw, "throttle\t%s  (throttled %.1f s in all)\n", throttle, v.ThrottledSec)
			fmt.Fprintf(tw, "net pacing\t%s\n", pacingLine(v))
			fmt.Fprintf(tw, "output\theld %d frames / %s, oldest %.1f ms; released %d; added delay avg %.2f ms max %.2f ms p50 %.2f ms p99 %.2f ms; backpressure %d\n",
				v.HeldFrames, size(v.HeldBytes), v.OldestHeldMS, v.Released, v.AddedDelayMS, v.MaxDelayMS, v.AddedDelayP50MS, v.AddedDelayP99MS, v.Backpressure)
		} else {
			fmt.Fprintf(tw, "log\treceived %s  acked %s  fed to qemu %s\n", size(v.LogWritten), size(v.LogAcked), size(v.LogReplayed))
			fmt.Fprintf(tw, "icount\treplayed %d\n", v.Icount)
			fmt.Fprintf(tw, "replay\t%s\n", stallText(v))
			fmt.Fprintf(tw, "emitted frames\t%d (replay must emit none)\n", v.EmittedFrames)
		}
		if c, ok := counters[v.Name]; ok && c != (control.VMCounters{Name: c.Name}) {
			fmt.Fprintf(tw, "on this host\t%s\n", countersLine(c))
		}
		printLogSpace(tw, v)
		tw.Flush()
		fmt.Fprintln(w)
	}
	printPeers(w, resp.Peers)
}

// countersLine is what the agent counted for a VM (control.VMCounters).
func countersLine(c control.VMCounters) string {
	s := fmt.Sprintf("failovers %d, re-protections %d, epoch claims won %d lost %d failed %d",
		c.Failovers, c.Reprotections, c.ClaimsWon, c.ClaimsLost, c.ClaimsFailed)
	if c.LastGoLiveMS > 0 {
		s += fmt.Sprintf(", last go-live %.0f ms", c.LastGoLiveMS)
	}
	return s
}

// printPeers shows the peer agents: up while a log channel with them is open.
func printPeers(w io.Writer, peers []control.PeerStatus) {
	if len(peers) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, p := range peers {
		if !p.Up {
			fmt.Fprintf(tw, "peer %s\tDOWN since %s (no log channel open)\n", p.Host, p.Since.Format("2006-01-02 15:04:05"))
			continue
		}
		line := fmt.Sprintf("up, %d log channel(s), last heard %.0f ms ago", p.Channels, p.LastHeardMS)
		if p.RTTMS > 0 {
			line += fmt.Sprintf(", rtt %.2f ms", p.RTTMS)
		}
		fmt.Fprintf(tw, "peer %s\t%s\n", p.Host, line)
	}
	tw.Flush()
}

// printLogSpace shows what the VM's logs take on disk and what its rr log keeps.
func printLogSpace(w io.Writer, v control.VMStatus) {
	if v.LogDiskLimit == 0 {
		return // an agent from before bounded logs
	}
	fmt.Fprintf(w, "log disk\t%s on disk of %s limit (files %s, rr log freed %s; fs free %s)\n",
		size(v.LogDiskBytes), size(v.LogDiskLimit), size(v.LogFileBytes), size(v.LogFreed), size(v.LogFSFree))
	if v.LogKeeps != "" {
		fmt.Fprintf(w, "log keeps\t%s\n", v.LogKeeps)
	}
	if v.ConsoleRotations > 0 {
		fmt.Fprintf(w, "console\trotated %d times\n", v.ConsoleRotations)
	}
	if v.LogFreeError != "" {
		fmt.Fprintf(w, "log freeing\tNOT POSSIBLE: %s\n", v.LogFreeError)
	}
	if v.LogDiskAlarm != "" {
		fmt.Fprintf(w, "log disk alarm\t%s\n", v.LogDiskAlarm)
	}
}

// qemuLine says whether the VM's QEMU answers the agent's liveness probe ("" when
// the agent reports nothing about it).
func qemuLine(v control.VMStatus) string {
	stamp := func(t time.Time) string { return t.Local().Format("15:04:05") }
	if v.QEMUUnresponsive {
		s := fmt.Sprintf("NOT ANSWERING for %.1f s (since %s", v.QEMUUnresponsiveSec, stamp(v.QEMUSince))
		if v.QEMULastAnswer.IsZero() {
			s += "; no probe answered yet)"
		} else {
			s += "; last good probe " + stamp(v.QEMULastAnswer) + ")"
		}
		if v.QEMUProbeError != "" {
			s += ": " + v.QEMUProbeError
		}
		return s + "; the VM is wedged (see docs/operator-guide.md)"
	}
	if v.QEMULastAnswer.IsZero() && v.QEMUUnresponsives == 0 {
		return ""
	}
	return fmt.Sprintf("answering (unresponsive episodes so far: %d)", v.QEMUUnresponsives)
}

// stallText describes the backup's replay stall state (control.VMStatus.ReplayStalled).
func stallText(v control.VMStatus) string {
	if !v.ReplayStalled {
		return fmt.Sprintf("no stall (stalls so far: %d)", v.ReplayStalls)
	}
	s := fmt.Sprintf("REPLAY STALLED for %.1f s at icount %d (log held beyond it: %s; stalls so far: %d)",
		v.ReplayStalledSec, v.ReplayStalledAtIcount, size(v.ReplayStalledLogBeyond), v.ReplayStalls)
	if v.ReplayStalledWaiting != "" {
		s += "; waiting: " + v.ReplayStalledWaiting
	}
	return s
}

// pacingLine says whether the frames from the network are paced, at what rate, and
// what pacing has cost so far.
func pacingLine(v control.VMStatus) string {
	state := "off"
	if v.PacingActive {
		state = fmt.Sprintf("ON: %s/s (%.2f Mbit/s), %s waiting", size(int64(v.PaceRateBps)), v.PaceRateBps*8/1e6, size(v.PaceQueueBytes))
	}
	s := fmt.Sprintf("%s  (paced %.1f s in all, %d frames held, %d dropped)", state, v.PacedSec, v.PacedFrames, v.PaceDrops)
	if v.PaceErrors > 0 {
		s += fmt.Sprintf("; %d failures to apply the rate", v.PaceErrors)
	}
	return s
}

func size(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.2f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func newKeysCmd() *cobra.Command {
	k := &cobra.Command{Use: "keys", Short: "Make the TLS keys agents use to authenticate each other"}
	var caDir, name string
	initCmd := &cobra.Command{
		Use: "init --ca <dir>", Short: "Create a new certificate authority for a pair of hosts",
		RunE: func(*cobra.Command, []string) error {
			if err := logging.InitCA(caDir, name); err != nil {
				return err
			}
			fmt.Printf("CA created in %s (keep ca.key secret; copy only host keys to hosts)\n", caDir)
			return nil
		},
	}
	initCmd.Flags().StringVar(&caDir, "ca", "", "directory for ca.crt and ca.key")
	initCmd.Flags().StringVar(&name, "name", "ftvmd", "CA name")
	_ = initCmd.MarkFlagRequired("ca")
	var out string
	var ips []string
	var days int
	issue := &cobra.Command{
		Use: "issue <host> --ca <dir> --out <dir>", Short: "Issue a host certificate signed by the CA", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			var parsed []net.IP
			for _, s := range ips {
				ip := net.ParseIP(s)
				if ip == nil {
					return fmt.Errorf("--ip %q: not an IP address", s)
				}
				parsed = append(parsed, ip)
			}
			if days <= 0 {
				return fmt.Errorf("--days %d: must be positive", days)
			}
			if err := logging.IssueHostFor(caDir, out, args[0], parsed, time.Duration(days)*24*time.Hour); err != nil {
				return err
			}
			fmt.Printf("host certificate for %s written to %s\n", args[0], out)
			return nil
		},
	}
	issue.Flags().StringVar(&caDir, "ca", "", "CA directory")
	issue.Flags().StringVar(&out, "out", "", "output directory (the agent's <state-dir>/keys)")
	issue.Flags().StringSliceVar(&ips, "ip", nil, "IP addresses the peer dials this host at")
	issue.Flags().IntVar(&days, "days", int(logging.DefaultHostValidity/(24*time.Hour)), "days the certificate is valid (the agent warns 30 days before the end)")
	_ = issue.MarkFlagRequired("ca")
	_ = issue.MarkFlagRequired("out")
	k.AddCommand(initCmd, issue)
	return k
}

func newLogCmd() *cobra.Command {
	l := &cobra.Command{Use: "log", Short: "Inspect rr logs"}
	l.AddCommand(&cobra.Command{
		Use: "inspect <file>", Short: "Parse an rr log and count its events", Args: cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if err := checkWhole(args[0]); err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			s, err := replay.Summarize(f)
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			counts := map[string]uint64{}
			for k, n := range s.Counts {
				if n > 0 {
					counts[replay.Kind(k).String()] = n
				}
			}
			out := struct {
				Version   string            `json:"version"`
				Finished  bool              `json:"finished"`
				Events    uint64            `json:"events"`
				Icount    uint64            `json:"icount"`
				Bytes     int64             `json:"bytes"`
				Boundary  int64             `json:"boundary"`
				SawEnd    bool              `json:"saw_end"`
				Truncated bool              `json:"truncated"`
				Counts    map[string]uint64 `json:"counts"`
			}{fmt.Sprintf("%#08x", s.Version), s.Finished, s.Events, s.Icount, s.Bytes, s.Boundary, s.SawEnd, s.Truncated, counts}
			b, _ := json.MarshalIndent(out, "", "  ")
			fmt.Println(string(b))
			return nil
		},
	})
	l.AddCommand(newLogEventsCmd())
	return l
}

// runAgent runs the agent and, when o sets them, its metrics server (--metrics-listen)
// and its profiles server (--debug-pprof) beside it until the agent stops. An
// address that cannot be bound fails the start; a server that fails later is
// logged and the agent runs on.
func runAgent(ctx context.Context, a *agent.Agent, o *agentOpts, log *slog.Logger) error {
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	if o.metricsListen != "" {
		ln, err := net.Listen("tcp", o.metricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		wg.Go(func() {
			if err := metrics.Serve(sctx, ln, a, log); err != nil {
				log.Error("metrics server stopped; the agent runs on", "err", err)
			}
		})
	}
	if o.debugPprof != "" {
		ln, err := pprofListen(o.debugPprof, o.dir)
		if err != nil {
			return err
		}
		wg.Go(func() { servePprof(sctx, ln, log) })
	}
	return a.Run(ctx)
}

// resumedNote says how much of a disk copy the backup held from an interrupted one.
func resumedNote(resumed int64) string {
	if resumed <= 0 {
		return ""
	}
	return fmt.Sprintf(" (%s resumed)", size(resumed))
}

// checkWhole refuses an rr log whose prefix was freed (bounded logs): read from its
// start, the zeros of the hole would parse as events.
func checkWhole(path string) error {
	n, err := logspace.FreedPrefix(path)
	if err != nil {
		return err
	}
	if n > 0 {
		return fmt.Errorf("%s: its first %s were freed once no reader needed them (bounded logs): it cannot be read from its start; keep a VM's whole log with run/protect --keep-log", path, size(n))
	}
	return nil
}

// syncLine describes a protection of a running VM for ftvmd status: its phase,
// the guest's pause and the parts; after a failover, the window of vulnerability.
func syncLine(y control.SyncStatus) string {
	s := fmt.Sprintf("from a running state with %s: %s", y.Backup, y.Phase)
	switch y.Phase {
	case "copying":
		s += fmt.Sprintf(" %.0f %%", y.Percent)
	case "failed":
		s += ": " + y.Error
	}
	if y.PauseMS > 0 {
		s += fmt.Sprintf("; pause %.0f ms", y.PauseMS)
	}
	if y.CopyMS > 0 {
		s += fmt.Sprintf(", snapshot %.0f ms, copy %.1f s (%s)", y.SnapshotMS, y.CopyMS/1000, size(y.BaseBytes))
	}
	if y.CatchUpMS > 0 {
		s += fmt.Sprintf(", catch-up %.1f s", y.CatchUpMS/1000)
	}
	if y.Auto {
		s += "; automatic re-protection"
		if y.WindowMS > 0 {
			s += fmt.Sprintf(": window of vulnerability %.1f s (failover %.1f s, waiting for a host %.1f s)", y.WindowMS/1000, y.FailoverMS/1000, y.WaitMS/1000)
		}
	}
	return s
}
