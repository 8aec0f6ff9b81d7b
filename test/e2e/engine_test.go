package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/lab"
)

// distributionQEMU is Debian's QEMU, which ftvmd still supports (with a warning).
const distributionQEMU = "/usr/bin/qemu-system-x86_64"

// TestEngines checks which QEMU the agents run and that protection works on both:
// the default agents run ftvmd's own build (the rest of this suite runs on it), and a
// smoke run protects the guest on the distribution's QEMU, whose status carries the
// warning. A primary on one engine and a backup on the other are refused at protect.
func TestEngines(t *testing.T) {
	if _, err := os.Stat(distributionQEMU); err != nil {
		t.Fatalf("the distribution's QEMU is missing (%v): test/setup.sh installs qemu-system-x86", err)
	}
	l := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	// Mixed engines: the backup host refuses the primary's log. Host A runs the
	// build under test (ftvmd's, or FTVMD_E2E_QEMU's).
	if err := l.StartAgent(ctx, lab.HostA, agentArgs()...); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(ctx, lab.HostB, "--qemu", distributionQEMU); err != nil {
		t.Fatal(err)
	}
	if err := l.DefineGuest(ctx, lab.HostA, "mixed", ""); err != nil {
		t.Fatal(err)
	}
	out, err := l.Run(ctx, "a", "protect", "mixed", "--backup", lab.HostB.Peer())
	if err == nil || !strings.Contains(out, "engine mismatch") {
		t.Fatalf("protect across two QEMU builds: err %v, output %q; want a refusal naming the engine mismatch", err, out)
	}
	t.Logf("mixed engines refused: %s", strings.TrimSpace(out))
	if _, err := l.Run(ctx, "a", "stop", "mixed"); err != nil {
		t.Logf("stop mixed: %v", err)
	}
	l.StopAgent(lab.HostA)
	l.StopAgent(lab.HostB)

	// The distribution's engine on both hosts: protected, in lockstep, with a warning.
	for _, h := range []lab.Host{lab.HostA, lab.HostB} {
		if err := l.StartAgent(ctx, h, "--qemu", distributionQEMU); err != nil {
			t.Fatal(err)
		}
	}
	const vm = "stock"
	if err := l.DefineGuest(ctx, lab.HostA, vm, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Run(ctx, "a", "protect", vm, "--backup", lab.HostB.Peer()); err != nil {
		t.Fatal(err)
	}
	bcon := lab.Console(lab.HostB, vm, "backup")
	if err := lab.WaitConsole(ctx, bcon, "ftguest ready", 4*time.Minute); err != nil {
		t.Fatal(err)
	}
	for _, h := range []lab.Host{lab.HostA, lab.HostB} {
		st, err := lab.Status(ctx, h, vm)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(st.Engine, "distribution QEMU 7.2") || !strings.Contains(st.EngineWarning, "qemu/engine/build.sh") {
			t.Fatalf("host %s: engine %q, warning %q; want the distribution's QEMU with a warning", h.Name, st.Engine, st.EngineWarning)
		}
	}
	out, err = l.Run(ctx, "a", "status", vm)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "warning") || !strings.Contains(out, "distribution QEMU") {
		t.Fatalf("ftvmd status does not show the engine and its warning:\n%s", out)
	}
	// A few seconds of lockstep: same console bytes, the backup's icount moving.
	c, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first, err := lab.Status(ctx, lab.HostB, vm)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		if resp, err := c.Do("ping", 30*time.Second); err != nil || resp != "pong" {
			t.Fatalf("ping %d: %q %v", i, resp, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
	checkConsolePrefix(t, lab.Console(lab.HostA, vm, "primary"), bcon)
	last, err := lab.Status(ctx, lab.HostB, vm)
	if err != nil {
		t.Fatal(err)
	}
	if last.State != "replaying" || last.Icount <= first.Icount {
		t.Fatalf("backup on the distribution's QEMU: state %s, icount %d -> %d", last.State, first.Icount, last.Icount)
	}
}
