package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/ftvmd/ftvmd/agent"
	"github.com/ftvmd/ftvmd/logspace"
)

// agentCmdFor registers the agent's flags on a fresh flag set and parses args, as
// the agent command does before RunE.
func agentCmdFor(t *testing.T, args ...string) (*agentOpts, *pflag.FlagSet) {
	t.Helper()
	o := &agentOpts{}
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	o.register(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	return o, fs
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "agent.toml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestAgentConfigFileAndFlags: the file sets what the command line does not give;
// the command line wins; every setting reaches agent.Config.
func TestAgentConfigFileAndFlags(t *testing.T) {
	p := writeFile(t, `
host = "hostA"
state-dir = "/srv/ftvmd"
listen = "10.0.0.1:7801"
bridge = "br9"
cpus = "1"
heartbeat = "20ms"
peer-timeout = "2s"
pace-queue-bytes = 4194304
check-invariant = true
log-level = "debug"
data-path = "tap"
shared-dir = "/mnt/shared"
qemu = "/usr/bin/qemu-system-x86_64"
log-retention = "2h"
unprotected-log-keep = "all"
console-max-bytes = "1MiB"
console-keep = 2
`)
	t.Setenv("FTVMD_DATA_PATH", "")
	o, fs := agentCmdFor(t, "--config", p, "--bridge", "cli0", "--peer-timeout", "3s")
	cfg, err := o.load(fs)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Bridge != "cli0" || cfg.PeerTimeout != 3*time.Second {
		t.Errorf("bridge %q peer-timeout %s: the command line must win", cfg.Bridge, cfg.PeerTimeout)
	}
	if cfg.Host != "hostA" || cfg.StateDir != "/srv/ftvmd" || cfg.Listen != "10.0.0.1:7801" || cfg.CPUs != "1" ||
		cfg.HeartbeatInterval != 20*time.Millisecond || cfg.PaceQueueBytes != 4194304 || !cfg.CheckInvariant ||
		cfg.DataPath != agent.DataPathTap || cfg.SharedDir != "/mnt/shared" || cfg.QEMU != "/usr/bin/qemu-system-x86_64" {
		t.Errorf("settings from the file did not reach the config: %+v", cfg)
	}
	if cfg.LogRetention != (logspace.Retention{Age: 2 * time.Hour}) || cfg.UnprotectedLogKeep != -1 ||
		cfg.ConsoleMaxBytes != 1<<20 || cfg.ConsoleKeep != 2 {
		t.Errorf("log space settings from the file did not reach the config: retention %+v keep %d console %d x%d",
			cfg.LogRetention, cfg.UnprotectedLogKeep, cfg.ConsoleMaxBytes, cfg.ConsoleKeep)
	}
	if cfg.Socket != "/srv/ftvmd/ftvmd.sock" {
		t.Errorf("control socket %q: the default follows the state dir the file set", cfg.Socket)
	}
	if !cfg.Logger.Enabled(t.Context(), -4) {
		t.Error("log-level debug from the file not applied")
	}
}

func TestAgentConfigMissingFiles(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.toml")
	// The default file may be absent: flags and defaults apply.
	o, fs := agentCmdFor(t)
	o.config = missing // as if the default path did not exist
	if _, err := o.load(fs); err != nil {
		t.Fatalf("absent default config file: %v", err)
	}
	// A file named on the command line must exist.
	o, fs = agentCmdFor(t, "--config", missing)
	if _, err := o.load(fs); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("absent --config file: err = %v", err)
	}
	// --config "" reads none, whatever exists at the default path.
	o, fs = agentCmdFor(t, "--config", "")
	if _, err := o.load(fs); err != nil || o.file != "" {
		t.Fatalf("--config '': err %v file %q", err, o.file)
	}
}

func TestAgentConfigBadValuesNamed(t *testing.T) {
	cases := []struct{ src, want string }{
		{"bridge = \"br0\"\nlog-level = \"loud\"\n", `agent.toml:2: log-level "loud": want debug, info, warn or error`},
		{"data-path = \"wire\"\n", `agent.toml:1: data-path: data path "wire"`},
		{"hearbeat = \"1s\"\n", `agent.toml:1: hearbeat: unknown key (did you mean "heartbeat"?)`},
		{"socket = \"/x\"\n", "agent.toml:1: socket: unknown key"},
		{"config = \"/x\"\n", "agent.toml:1: config: cannot be set in the config file"},
		{"log-retention = \"forever\"\n", `agent.toml:1: log-retention: retention "forever"`},
		{"unprotected-log-keep = \"lots\"\n", `agent.toml:1: unprotected-log-keep: "lots": want a size`},
		{"console-max-bytes = \"big\"\n", `agent.toml:1: console-max-bytes: not a size`},
	}
	for _, c := range cases {
		t.Setenv("FTVMD_DATA_PATH", "")
		p := writeFile(t, c.src)
		o, fs := agentCmdFor(t, "--config", p)
		_, err := o.load(fs)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: err = %v, want it to contain %q", c.src, err, c.want)
		}
	}
	// A bad value on the command line is named as a flag.
	o, fs := agentCmdFor(t, "--config", "", "--log-level", "loud")
	if _, err := o.load(fs); err == nil || !strings.HasPrefix(err.Error(), `--log-level "loud"`) {
		t.Errorf("err = %v", err)
	}
}

// TestAgentConfigCommand: `ftvmd agent config` writes a key for every agent flag
// operators set (commented out, at its default) and --check reads a file as the
// agent does.
func TestAgentConfigCommand(t *testing.T) {
	var out bytes.Buffer
	root := newRoot()
	root.SetOut(&out)
	root.SetArgs([]string{"agent", "config"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	agentCmd, _, _ := newRoot().Find([]string{"agent"})
	n := 0
	agentFlags(agentCmd).VisitAll(func(f *pflag.Flag) {
		if f.Hidden || f.Name == "config" || f.Name == "help" {
			return
		}
		n++
		if !strings.Contains(out.String(), "\n#"+f.Name+" = ") {
			t.Errorf("agent config lacks a key for --%s", f.Name)
		}
	})
	if n < 15 {
		t.Errorf("only %d agent flags seen", n)
	}
	if strings.Contains(out.String(), "\n#socket = ") {
		t.Error("the CLI's --socket is not an agent setting")
	}

	// The printed file passes --check as it is and with every key uncommented.
	var un strings.Builder
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "#") && strings.Contains(l, " = ") {
			l = l[1:]
		}
		un.WriteString(l + "\n")
	}
	for name, content := range map[string]string{"commented": out.String(), "uncommented": un.String()} {
		p := writeFile(t, content)
		var res bytes.Buffer
		root := newRoot()
		root.SetOut(&res)
		root.SetArgs([]string{"agent", "config", "--check", p})
		if err := root.Execute(); err != nil {
			t.Errorf("%s defaults file: %v", name, err)
		} else if !strings.Contains(res.String(), ": ok (") {
			t.Errorf("%s: %q", name, res.String())
		}
	}
	p := writeFile(t, "peer-timeout = \"60ms\"\n")
	root = newRoot()
	root.SetOut(&bytes.Buffer{})
	root.SetArgs([]string{"agent", "config", "--check", p})
	if err := root.Execute(); err == nil || !strings.Contains(err.Error(), "peer timeout (60ms) must be at least 3 heartbeat") ||
		!strings.Contains(err.Error(), p) {
		t.Errorf("--check of an inconsistent file: err = %v", err)
	}
}
