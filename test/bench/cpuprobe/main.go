// Command cpuprobe measures where a protected CPU-bound guest's CPU goes on the lab,
// per guest instruction, for docs/benchmarks.md's "Where the lab's replay loses its
// CPU". It brings up a lab, runs the lab guest unprotected and then protected (with
// --keep-log), has it md5 for --secs in each phase, and reads before and after each
// phase every QEMU's and agent's per-thread counters (test/bench/taskstats.py) and
// the agents' instruction counts. It keeps the protected primary's run directory
// (whole log, console, record.json) so that `ftvmd rr check` can replay the very log
// the lab's backup replayed, offline and alone (test/bench/cpu-split.sh).
//
//	flock -w 3600 /run/ftvmd-e2e.queue go run ./test/bench/cpuprobe --out DIR [--secs 30] [--agent-arg=--qemu=...]
//
// It writes DIR/probe.json (per phase: wall, md5 commands, instructions logged and
// replayed, each process's CPU) and DIR/<phase>-{before,after}.json (the readings).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/bench"
	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

type agentArgs []string

func (a *agentArgs) String() string     { return strings.Join(*a, " ") }
func (a *agentArgs) Set(v string) error { *a = append(*a, v); return nil }

// phase is one side's figures.
type phase struct {
	Name      string             `json:"name"`
	WallS     float64            `json:"wall_s"`
	MD5s      int                `json:"md5_commands"`
	MB        int                `json:"md5_mb"`
	Load1     [2]float64         `json:"load1_before_after"`
	Logged    uint64             `json:"primary_icount_delta"`
	Replayed  uint64             `json:"backup_icount_delta,omitempty"`
	Throttled float64            `json:"throttled_s,omitempty"`
	LagMSEnd  float64            `json:"lag_ms_at_end,omitempty"`
	PIDs      map[string]int     `json:"pids"`
	CPUS      map[string]float64 `json:"cpu_s"` // per process, from the readings
	// BackupLifeCPUS and BackupLifeIcount: the backup QEMU's CPU since it started
	// and the instructions it had replayed at the phase's end, to compare with an
	// offline replay of the same log.
	BackupLifeCPUS    float64 `json:"backup_life_cpu_s,omitempty"`
	BackupLifeIcount  uint64  `json:"backup_life_icount,omitempty"`
	PrimaryLifeCPUS   float64 `json:"primary_life_cpu_s"`
	PrimaryLifeIcount uint64  `json:"primary_life_icount"`
}

func main() {
	var (
		out  = flag.String("out", "", "directory for the results (required)")
		secs = flag.Duration("secs", 30*time.Second, "md5 for this long in each phase")
		mb   = flag.Int("mb", 100, "MiB per md5 command")
		skip = flag.Bool("protected-only", false, "skip the unprotected phase")
		args agentArgs
	)
	flag.Var(&args, "agent-arg", "extra flag for the lab agents (repeatable)")
	flag.Parse()
	if *out == "" {
		fmt.Fprintln(os.Stderr, "cpuprobe: --out is required")
		os.Exit(2)
	}
	if err := run(*out, *secs, *mb, *skip, args); err != nil {
		slog.Error("cpuprobe", "err", err)
		os.Exit(1)
	}
}

const vm = "cpuprobe"

func run(out string, secs time.Duration, mb int, protectedOnly bool, args []string) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 9*time.Minute)
	defer cancel()
	s, err := bench.Open(ctx, os.Stderr, args...)
	if err != nil {
		return err
	}
	defer func() {
		if err := s.Close(); err != nil {
			slog.Error("lab down", "err", err)
		}
	}()
	var phases []phase
	if err := s.Lab.DefineGuest(ctx, lab.HostA, vm, ""); err != nil {
		return err
	}
	sides := []bool{false, true}
	if protectedOnly {
		sides = []bool{true}
	}
	for _, protected := range sides {
		p, err := side(ctx, s, out, protected, secs, mb)
		phases = append(phases, p)
		if err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(phases, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(out, "probe.json"), b, 0o644)
}

func side(ctx context.Context, s *bench.Session, out string, protected bool, secs time.Duration, mb int) (phase, error) {
	p := phase{Name: "unprotected", MB: mb, PIDs: map[string]int{}, CPUS: map[string]float64{}}
	args := []string{"run", vm}
	if protected {
		p.Name = "protected"
		args = []string{"protect", vm, "--backup", lab.HostB.Peer(), "--keep-log"}
	}
	if _, err := s.Lab.Run(ctx, "a", args...); err != nil {
		return p, err
	}
	if err := lab.WaitConsole(ctx, lab.Console(lab.HostA, vm, "primary"), "ftguest ready", 5*time.Minute); err != nil {
		return p, err
	}
	if protected {
		if err := s.WaitCaughtUp(ctx, vm, 3*time.Minute); err != nil {
			return p, err
		}
		if err := s.WaitSettled(ctx, vm, 5*time.Minute); err != nil {
			return p, err
		}
	}
	c, err := lab.NewClient(ctx, 30*time.Second)
	if err != nil {
		return p, err
	}
	defer c.Close()
	md5 := func() error {
		r, err := c.Do(fmt.Sprintf("md5 %d", mb), 10*time.Minute)
		if err != nil || !strings.HasPrefix(r, "md5 ") {
			return fmt.Errorf("md5 in guest: %q %w", r, err)
		}
		return nil
	}
	if !protected {
		if err := md5(); err != nil { // warm up, as bench cpu does
			return p, err
		}
	}
	stA, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		return p, err
	}
	p.PIDs["primary_qemu"] = stA.PID
	p.PIDs["agent_a"] = s.Lab.AgentPID(lab.HostA)
	p.PIDs["agent_b"] = s.Lab.AgentPID(lab.HostB)
	var stB control.VMStatus
	if protected {
		if stB, err = lab.Status(ctx, lab.HostB, vm); err != nil {
			return p, err
		}
		p.PIDs["backup_qemu"] = stB.PID
		for _, r := range []struct {
			name string
			pid  int
		}{{"primary", stA.PID}, {"backup", stB.PID}} {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", r.pid)); err == nil {
				_ = os.WriteFile(filepath.Join(out, r.name+"-cmdline.txt"), []byte(strings.ReplaceAll(string(b), "\x00", "\n")), 0o644)
			}
		}
	}
	before := filepath.Join(out, p.Name+"-before.json")
	if err := snap(before, p.PIDs); err != nil {
		return p, err
	}
	p.Load1[0] = load1()
	t0 := time.Now()
	for time.Since(t0) < secs {
		if err := md5(); err != nil {
			return p, err
		}
		p.MD5s++
	}
	p.WallS = time.Since(t0).Seconds()
	after := filepath.Join(out, p.Name+"-after.json")
	if err := snap(after, p.PIDs); err != nil {
		return p, err
	}
	p.Load1[1] = load1()
	stA1, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		return p, err
	}
	p.Logged = stA1.Icount - stA.Icount
	p.PrimaryLifeIcount = stA1.Icount
	if protected {
		stB1, err := lab.Status(ctx, lab.HostB, vm)
		if err != nil {
			return p, err
		}
		p.Replayed = stB1.Icount - stB.Icount
		p.BackupLifeIcount = stB1.Icount
		p.Throttled = stA1.ThrottledSec - stA.ThrottledSec
		p.LagMSEnd = stA1.LagMS
	}
	if err := cpuFromReadings(&p, before, after); err != nil {
		return p, err
	}
	if _, err := s.Lab.Run(ctx, "a", "stop", vm); err != nil {
		return p, err
	}
	time.Sleep(time.Second)
	if protected {
		// The whole log, console and record.json, for rr check.
		src := filepath.Join(lab.HostA.Dir, "run", vm+".primary")
		dst := filepath.Join(out, "primary-run")
		if o, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
			return p, fmt.Errorf("copy %s: %v: %s", src, err, o)
		}
	}
	return p, nil
}

func snap(path string, pids map[string]int) error {
	a := []string{"test/bench/taskstats.py", "snap"}
	for _, pid := range pids {
		a = append(a, fmt.Sprint(pid))
	}
	b, err := exec.Command("python3", a...).Output()
	if err != nil {
		return fmt.Errorf("taskstats: %w", err)
	}
	return os.WriteFile(path, b, 0o644)
}

// reading is the part of a taskstats.py reading used here: each process's CPU
// (utime+stime, its dead threads included).
type reading struct {
	CPU map[string]float64 `json:"cpu_s"`
}

func readReading(path string) (reading, error) {
	var r reading
	b, err := os.ReadFile(path)
	if err != nil {
		return r, err
	}
	return r, json.Unmarshal(b, &r)
}

func cpuFromReadings(p *phase, before, after string) error {
	a, err := readReading(before)
	if err != nil {
		return err
	}
	b, err := readReading(after)
	if err != nil {
		return err
	}
	sum := func(r reading, pid int) float64 { return r.CPU[fmt.Sprint(pid)] }
	for name, pid := range p.PIDs {
		if _, ok := b.CPU[fmt.Sprint(pid)]; !ok {
			return errors.New("no reading of " + name)
		}
		p.CPUS[name] = sum(b, pid) - sum(a, pid)
	}
	p.PrimaryLifeCPUS = sum(b, p.PIDs["primary_qemu"])
	if pid, ok := p.PIDs["backup_qemu"]; ok {
		p.BackupLifeCPUS = sum(b, pid)
	}
	return nil
}

func load1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	var l float64
	fmt.Sscan(string(b), &l)
	return l
}
