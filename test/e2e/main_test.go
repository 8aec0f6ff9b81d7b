// Package e2e holds the end-to-end tests: real QEMU guests on lab hosts made of network
// namespaces, real agents, a real client. They run when FTVMD_E2E=1 (test/run-tests.sh
// sets it after test/setup.sh has built everything) and fail if the lab cannot run.
package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

func needLab(t *testing.T) *lab.Lab {
	t.Helper()
	if os.Getenv("FTVMD_E2E") != "1" {
		t.Skip("end-to-end test: set FTVMD_E2E=1 (test/run-tests.sh does)")
	}
	repo, err := lab.FindRepo()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := lab.Up(ctx, repo, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t)
		}
		if err := l.Down(false); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return l
}

// drillLab brings up a fresh lab for one drill, its agents started with agentArgs,
// and takes it down (keeping the logs of a failed run) when the test ends.
func drillLab(ctx context.Context, t *testing.T, agentArgs ...string) *bench.Session {
	t.Helper()
	s, err := bench.Open(ctx, testWriter{t}, agentArgs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpLogs(t)
		}
		if err := s.Close(); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	return s
}

// protectGuest starts both agents, defines vm on host A (with defineFlags passed to
// `ftvmd vm define`), protects it with its backup on host B and waits until the guest
// is ready on the primary. It returns the lag bound.
func protectGuest(ctx context.Context, t *testing.T, l *lab.Lab, vm string, defineFlags ...string) time.Duration {
	t.Helper()
	return protectGuestFlags(ctx, t, l, vm, nil, defineFlags...)
}

// runGuest defines vm on host A, starts it unprotected (`ftvmd run`) and waits until
// the guest is ready. The agents must be up.
func runGuest(ctx context.Context, t *testing.T, l *lab.Lab, vm string) {
	t.Helper()
	if err := l.DefineGuest(ctx, lab.HostA, vm, ""); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Run(ctx, "a", "run", vm); err != nil {
		t.Fatal(err)
	} else {
		t.Log(strings.TrimSpace(out))
	}
	if err := lab.WaitConsole(ctx, lab.Console(lab.HostA, vm, "primary"), "ftguest ready", 4*time.Minute); err != nil {
		t.Fatal(err)
	}
}

// protectGuestFlags is protectGuest with protectFlags added to `ftvmd protect`.
func protectGuestFlags(ctx context.Context, t *testing.T, l *lab.Lab, vm string, protectFlags []string, defineFlags ...string) time.Duration {
	t.Helper()
	return protectGuestAgents(ctx, t, l, vm, nil, protectFlags, defineFlags...)
}

// protectGuestAgents is protectGuestFlags with agentExtra added to both agents' flags.
func protectGuestAgents(ctx context.Context, t *testing.T, l *lab.Lab, vm string, agentExtra, protectFlags []string, defineFlags ...string) time.Duration {
	t.Helper()
	for _, h := range []lab.Host{lab.HostA, lab.HostB} {
		if err := l.StartAgent(ctx, h, append(agentArgs(), agentExtra...)...); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.DefineGuest(ctx, lab.HostA, vm, "", defineFlags...); err != nil {
		t.Fatal(err)
	}
	if out, err := l.Run(ctx, "a", append([]string{"protect", vm, "--backup", lab.HostB.Peer()}, protectFlags...)...); err != nil {
		t.Fatal(err)
	} else {
		t.Log(strings.TrimSpace(out))
	}
	if err := lab.WaitConsole(ctx, lab.Console(lab.HostA, vm, "primary"), "ftguest ready", 4*time.Minute); err != nil {
		t.Fatal(err)
	}
	st, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(st.LagBoundMS) * time.Millisecond
}

// wantDataPath is the data path the agents run on: FTVMD_DATA_PATH, which the lab's
// agents read as their --data-path default (relay, the agents' default, when unset).
func wantDataPath() string {
	if d := os.Getenv("FTVMD_DATA_PATH"); d != "" {
		return d
	}
	return "relay"
}

// otherDataPath is the data path the suite does not run on, which
// TestProtectRunningOtherPath covers.
func otherDataPath() string {
	if wantDataPath() == "relay" {
		return "tap"
	}
	return "relay"
}

// checkDataPath fails the test unless the VM's copy on h runs on wantDataPath.
func checkDataPath(ctx context.Context, t *testing.T, h lab.Host, vm string) {
	t.Helper()
	st, err := lab.Status(ctx, h, vm)
	if err != nil {
		t.Fatal(err)
	}
	if st.DataPath != wantDataPath() {
		t.Fatalf("%s on host %s runs on data path %q, want %q", vm, h.Name, st.DataPath, wantDataPath())
	}
}

// agentArgs are extra `ftvmd agent` flags for the agents protectGuest starts, the drills pass to drillLab,
// TestRRCheck records on and TestEngines runs on host A:
// FTVMD_E2E_QEMU runs the guests on another QEMU build (one not installed yet).
func agentArgs() []string {
	if q := os.Getenv("FTVMD_E2E_QEMU"); q != "" {
		return []string{"--qemu", q}
	}
	return nil
}

// dumpLogs keeps what a failed run needs for a diagnosis.
func dumpLogs(t *testing.T) {
	out := os.Getenv("FTVMD_E2E_ARTIFACTS")
	if out == "" {
		return
	}
	dst := filepath.Join(out, strings.ReplaceAll(t.Name(), "/", "_"))
	_ = os.MkdirAll(dst, 0o755)
	for _, h := range lab.Hypervisors { // host d's files exist only if a test used it
		if b, err := os.ReadFile(lab.AgentLog(h)); err == nil {
			_ = os.WriteFile(filepath.Join(dst, "agent-"+h.Name+".log"), b, 0o644)
			tail := string(b)
			if len(tail) > 3000 {
				tail = tail[len(tail)-3000:]
			}
			t.Logf("agent %s log tail:\n%s", h.Name, tail)
		}
		matches, _ := filepath.Glob(filepath.Join(h.Dir, "run", "*", "console.log"))
		for _, m := range matches {
			b, _ := os.ReadFile(m)
			_ = os.WriteFile(filepath.Join(dst, h.Name+"-"+filepath.Base(filepath.Dir(m))+"-console.log"), b, 0o644)
		}
		// QEMU's own stderr (<run dir>/<vm>.log): an aborted QEMU says why only
		// there, and the next lab purges the run directories.
		matches, _ = filepath.Glob(filepath.Join(h.Dir, "run", "*", "*.log"))
		for _, m := range matches {
			if filepath.Base(m) == "console.log" {
				continue
			}
			b, _ := os.ReadFile(m)
			if tail := b[max(0, len(b)-2000):]; len(tail) > 0 {
				t.Logf("%s on host %s (tail):\n%s", m, h.Name, tail)
			}
			_ = os.WriteFile(filepath.Join(dst, h.Name+"-"+filepath.Base(filepath.Dir(m))+"-qemu-"+filepath.Base(m)), b, 0o644)
		}
	}
}

// waitBackupDiverged waits up to 30 s until host b's backup of vm has failed with
// a divergence report (its sentinel stepped it down) and returns its status.
func waitBackupDiverged(ctx context.Context, t *testing.T, vm string) control.VMStatus {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, err := lab.Status(ctx, lab.HostB, vm)
		if err == nil && b.Divergence != "" && b.State == "failed" {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("the sentinel did not fire within 30 s: %+v %v", b, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// waitSteppedDownPrimary waits until host a's primary of vm has run on
// unprotected after its backup stepped down, and returns the detail it gave.
// The primary protects the VM again by itself about 2 s later (its re-protection
// after a sentinel step-down), so the unprotected state may have passed between
// two polls on a loaded lab: the agent's own lifecycle line in its log says it
// too. The line must name the vm, be logged at since or later (the log outlives
// a test), and contain every string of want.
func waitSteppedDownPrimary(ctx context.Context, t *testing.T, vm string, since time.Time, want ...string) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		p, err := lab.Status(ctx, lab.HostA, vm)
		if err == nil && p.State == "unprotected" {
			return p.Detail
		}
		if b, rerr := os.ReadFile(lab.AgentLog(lab.HostA)); rerr == nil {
			for _, line := range strings.Split(string(b), "\n") {
				if !strings.Contains(line, "msg=lifecycle") || !strings.Contains(line, "vm="+vm+" ") ||
					!strings.Contains(line, "to=unprotected") {
					continue
				}
				ts, _, _ := strings.Cut(strings.TrimPrefix(line, "time="), " ")
				at, perr := time.Parse(time.RFC3339Nano, ts)
				ok := perr == nil && !at.Before(since.Add(-time.Millisecond))
				for _, w := range want {
					ok = ok && strings.Contains(line, w)
				}
				if ok {
					return line
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("primary not unprotected 30 s after the backup stepped down: %+v %v", p, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkLiveOnB checks a drill that moved the VM from host a to host b: no answered
// request lost or wrong, the client's TCP connection kept, the guest not rebooted
// (its counter carried on), and the VM live (unprotected) on b.
func checkLiveOnB(t *testing.T, rep bench.DrillReport) {
	t.Helper()
	if rep.RequestsLost != 0 || rep.Inconsistent != 0 {
		t.Errorf("requests lost %d, inconsistent %d", rep.RequestsLost, rep.Inconsistent)
	}
	if !rep.ConnSurvived {
		t.Error("the client's TCP connection did not survive")
	}
	if rep.GuestRebooted || rep.CounterAfter <= rep.CounterBefore {
		t.Errorf("guest counter %d -> %d: the guest rebooted or lost its memory", rep.CounterBefore, rep.CounterAfter)
	}
	if rep.Owner != "b" || rep.OwnerState != "unprotected" {
		t.Errorf("the VM runs on %s as %q, want live (unprotected) on b", rep.Owner, rep.OwnerState)
	}
}
