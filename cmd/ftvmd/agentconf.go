package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ftvmd/ftvmd/agent"
	"github.com/ftvmd/ftvmd/conffile"
	"github.com/ftvmd/ftvmd/logspace"
	"github.com/ftvmd/ftvmd/metrics"
	"github.com/ftvmd/ftvmd/qemu"
	"github.com/ftvmd/ftvmd/throttle"
)

// defaultConfigFile is read when it exists and --config is not given.
const defaultConfigFile = "/etc/ftvmd/agent.toml"

// packagedFlushLib is where the Debian package installs the flush library.
const packagedFlushLib = "/usr/lib/ftvmd/libftflush.so"

// agentOpts are the agent's flags. Each is also a key of the config file
// (package conffile), so a new flag needs nothing more to be configurable.
type agentOpts struct {
	config                                                                                          string
	host, dir, listen, socket, flush, qemuBin, cpus, bridge, cgroupRoot, logLevel, shared, dataPath string
	hb, timeout, ackDelay, stallAfter, stallStepDown, qemuStuck                                     time.Duration
	checkInv, testKnobs                                                                             bool
	paceQueue, consoleKeep                                                                          int
	logRetention, unprotectedKeep, consoleMax                                                       string
	metricsListen, debugPprof                                                                       string

	origins map[string]conffile.Origin // keys the config file set
	file    string                     // the config file read ("" if none)
}

func (o *agentOpts) register(f *pflag.FlagSet) {
	hn, _ := os.Hostname()
	f.StringVar(&o.config, "config", defaultConfigFile, "config file: TOML, one key per flag (ftvmd agent config prints them all); flags given here override it; \"\" reads none")
	f.StringVar(&o.host, "host", hn, "this host's name (as in its certificate)")
	f.StringVar(&o.dir, "state-dir", defaultStateDir, "state directory: VM specs, logs, keys")
	f.StringVar(&o.listen, "listen", "", fmt.Sprintf("peer listener address (default :%d)", agent.DefaultPeerPort))
	f.StringVar(&o.socket, "control-socket", "", "control socket (default <state-dir>/ftvmd.sock)")
	f.StringVar(&o.flush, "flush-lib", defaultFlushLib(), "the log flush library (libftflush.so); unused when the QEMU engine writes its log as a stream (ftvmd's build)")
	f.StringVar(&o.qemuBin, "qemu", "", "QEMU binary (default: ftvmd's build in "+qemu.EngineDir+", else qemu-system-x86_64 on PATH)")
	f.StringVar(&o.cpus, "cpus", "", "cpuset for this host's QEMUs, e.g. 0 or 2-3 (default: any)")
	f.StringVar(&o.bridge, "bridge", "br0", "host bridge that VM taps join")
	f.StringVar(&o.shared, "shared-dir", "", "shared storage directory (both hosts) for failover epoch claims; empty disables failover")
	f.StringVar(&o.cgroupRoot, "cgroup-root", "/sys/fs/cgroup", "cgroup mount (empty disables cpusets and the throttle)")
	f.DurationVar(&o.hb, "heartbeat", 50*time.Millisecond, "heartbeat interval on the log channel")
	f.DurationVar(&o.timeout, "peer-timeout", time.Second, "silence after which the peer counts as lost")
	f.DurationVar(&o.stallAfter, "stall-after", agent.DefaultStallAfter, "a backup replay that makes no progress this long while it holds log beyond it is reported stalled")
	f.DurationVar(&o.stallStepDown, "stall-step-down", agent.DefaultStallStepDown, "a backup whose replay stays stalled this long steps down and its primary protects the VM again from a fresh start (0: only report stalls; at least --stall-after)")
	f.DurationVar(&o.qemuStuck, "qemu-unresponsive-after", agent.DefaultQEMUUnresponsiveAfter, "a VM's QEMU whose liveness probe (query-status, every second) stays unanswered this long is reported unresponsive (status, events, metrics); an unprotected primary starts no re-protection meanwhile (at least 2s)")
	f.DurationVar(&o.ackDelay, "test-ack-delay", 0, "TEST ONLY: delay every ack the backup sends")
	f.BoolVar(&o.checkInv, "check-invariant", false, "verify the output rule on every released frame")
	f.StringVar(&o.dataPath, "data-path", envOr("FTVMD_DATA_PATH", string(agent.DataPathRelay)),
		"how guest frames reach the bridge on VMs this agent starts: relay (every frame through the agent) or tap (QEMU on the tap, output held in the kernel) (env FTVMD_DATA_PATH)")
	_ = f.SetAnnotation("data-path", conffile.EnvAnnotation, []string{"FTVMD_DATA_PATH"})
	f.IntVar(&o.paceQueue, "pace-queue-bytes", throttle.DefaultPaceQueue, "bytes of frames from the network held while they are paced (backup over its lag bound); 0 turns pacing off")
	f.StringVar(&o.logRetention, "log-retention", "0", "rr log a backup keeps beyond what its replay needs: 0, all, a duration (2h) or a size (4GiB); the whole log from the boot while it is within it, nothing more after (a part of a log replays nothing without the state it starts from)")
	f.StringVar(&o.unprotectedKeep, "unprotected-log-keep", logspace.FormatSize(agent.DefaultUnprotectedLogKeep), "rr log a VM that nothing replays (run, a survivor after failover, unprotected) keeps behind its end: a size, or all")
	f.StringVar(&o.consoleMax, "console-max-bytes", logspace.FormatSize(agent.DefaultConsoleMaxBytes), "rotate a VM's console log past this size (0: never)")
	f.IntVar(&o.consoleKeep, "console-keep", agent.DefaultConsoleKeep, "rotated console logs kept (console.log.1 the newest)")
	f.StringVar(&o.logLevel, "log-level", "info", "debug|info|warn|error")
	f.StringVar(&o.metricsListen, "metrics-listen", "", "serve Prometheus metrics on this address (host:port; "+metrics.Path+"), e.g. 127.0.0.1:9464; empty: off")
	f.StringVar(&o.debugPprof, "debug-pprof", "", "serve Go's CPU/heap profiles (net/http/pprof, /debug/pprof/) on a loopback host:port or a unix socket path (relative: under --state-dir); empty: off")
	f.BoolVar(&o.testKnobs, "test-knobs", false, "TEST ONLY: enable test control operations")
	_ = f.MarkHidden("test-ack-delay")
	_ = f.MarkHidden("test-knobs")
}

// defaultFlushLib looks for libftflush.so beside the binary (a source build's
// build/), then where the Debian package puts it, then under /usr/local.
func defaultFlushLib() string {
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "libftflush.so")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	for _, p := range []string{packagedFlushLib, "/usr/local/lib/ftvmd/libftflush.so"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return packagedFlushLib
}

// load reads the config file (--config, or the default one if it exists) into the
// flags the command line did not set, and builds the agent's config.
func (o *agentOpts) load(f *pflag.FlagSet) (agent.Config, error) {
	path, explicit := o.config, f.Changed("config")
	if path != "" {
		if err := o.readFile(f, path); err != nil {
			if !explicit && errors.Is(err, fs.ErrNotExist) {
				path = "" // no default file: flags and defaults only
			} else {
				return agent.Config{}, err
			}
		}
	}
	o.file = path
	return o.build()
}

// readFile applies one config file to the flags.
func (o *agentOpts) readFile(f *pflag.FlagSet, path string) error {
	origins, err := conffile.Load(f, path, conffile.Options{Skip: notInFile})
	if err != nil {
		return err
	}
	o.origins = origins
	return nil
}

// build checks the values that have a fixed set of choices, naming where a bad one
// was set, and turns the flags into the agent's config.
func (o *agentOpts) build() (agent.Config, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(o.logLevel)); err != nil {
		return agent.Config{}, fmt.Errorf("%s %q: want debug, info, warn or error", o.where("log-level"), o.logLevel)
	}
	dp, err := agent.ParseDataPath(o.dataPath)
	if err != nil {
		return agent.Config{}, fmt.Errorf("%s: %w", o.where("data-path"), err)
	}
	ret, err := logspace.ParseRetention(o.logRetention)
	if err != nil {
		return agent.Config{}, fmt.Errorf("%s: %w", o.where("log-retention"), err)
	}
	keep, err := logspace.ParseKeep(o.unprotectedKeep)
	if err != nil {
		return agent.Config{}, fmt.Errorf("%s: %w", o.where("unprotected-log-keep"), err)
	}
	consoleMax, err := logspace.ParseSize(o.consoleMax)
	if err != nil {
		return agent.Config{}, fmt.Errorf("%s: %w", o.where("console-max-bytes"), err)
	}
	cfg := agent.DefaultConfig(o.host, o.dir)
	cfg.LogRetention, cfg.UnprotectedLogKeep = ret, keep
	cfg.ConsoleMaxBytes, cfg.ConsoleKeep = consoleMax, o.consoleKeep
	if o.listen != "" {
		cfg.Listen = o.listen
	}
	if o.socket != "" {
		cfg.Socket = o.socket
	}
	cfg.FlushLib, cfg.QEMU, cfg.CPUs, cfg.Bridge, cfg.CgroupRoot = o.flush, o.qemuBin, o.cpus, o.bridge, o.cgroupRoot
	cfg.SharedDir = o.shared
	cfg.DataPath = dp
	cfg.HeartbeatInterval, cfg.PeerTimeout = o.hb, o.timeout
	cfg.StallAfter, cfg.StallStepDown = o.stallAfter, o.stallStepDown
	cfg.QEMUUnresponsiveAfter = o.qemuStuck
	cfg.TestAckDelay, cfg.CheckInvariant, cfg.TestKnobs = o.ackDelay, o.checkInv, o.testKnobs
	cfg.PaceQueueBytes = o.paceQueue
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	if o.file != "" {
		cfg.Logger.Info("config file", "file", o.file, "keys", o.keys())
	}
	return cfg, nil
}

// where names a setting for an error: the flag, or the file line that set it.
func (o *agentOpts) where(name string) string {
	if at, ok := o.origins[name]; ok {
		return fmt.Sprintf("%s: %s", at, name)
	}
	return "--" + name
}

// keys lists the keys the config file set, sorted.
func (o *agentOpts) keys() string {
	ks := make([]string, 0, len(o.origins))
	for k := range o.origins {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return strings.Join(ks, ",")
}

// explain adds the config file to an error about the settings when one was read:
// the agent's checks name settings, not where they came from.
func (o *agentOpts) explain(err error) error {
	if o.file == "" || len(o.origins) == 0 {
		return err
	}
	return fmt.Errorf("%w (settings from the command line and %s)", err, o.file)
}

// agentConfigHeader opens the file `ftvmd agent config` writes.
const agentConfigHeader = `ftvmd agent settings (TOML). Every key is an ` + "`ftvmd agent`" + ` flag without its
dashes: a flag given on the command line overrides the key here. The lines
commented out show each setting at its default; uncomment one to change it.
Check a file with: ftvmd agent config --check /etc/ftvmd/agent.toml`

// agentFlags are the flags a config file may set: the agent's own, not the
// CLI's global ones (--socket) nor --help.
func agentFlags(agentCmd *cobra.Command) *pflag.FlagSet {
	return agentCmd.LocalNonPersistentFlags()
}

// notInFile are agent flags the config file cannot set.
var notInFile = []string{"config", "help"}

func newAgentConfigCmd(o *agentOpts, agentCmd *cobra.Command) *cobra.Command {
	var check string
	c := &cobra.Command{
		Use:   "config [--check FILE]",
		Short: "Print a config file with every agent setting at its default, or check one",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if check != "" {
				if err := o.readFile(agentFlags(agentCmd), check); err != nil {
					return err
				}
				o.file = check
				cfg, err := o.build()
				if err != nil {
					return err
				}
				if err := cfg.Validate(); err != nil {
					return o.explain(err)
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s: ok (%d keys set: %s)\n", check, len(o.origins), o.keys())
				return nil
			}
			return conffile.WriteDefaults(cmd.OutOrStdout(), agentFlags(agentCmd), agentConfigHeader, notInFile, machineDefaults)
		},
	}
	c.Flags().StringVar(&check, "check", "", "check this config file as the agent would read it, and exit")
	return c
}

// machineDefaults are the settings whose default depends on the machine (or the
// environment) `ftvmd agent config` runs on: the file shows what they mean instead.
var machineDefaults = map[string]conffile.Default{
	"host":      {Value: "hostA", Note: "this machine's hostname"},
	"flush-lib": {Value: packagedFlushLib, Note: "libftflush.so beside the ftvmd binary, else " + packagedFlushLib},
	"data-path": {Value: string(agent.DataPathRelay), Note: string(agent.DataPathRelay) + ", or $FTVMD_DATA_PATH when set (which also overrides this file)"},
}
