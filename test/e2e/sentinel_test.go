package e2e

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

// TestDivergenceSentinel: the backup compares its replay's console with the
// primary's (running checksums sent with the log). On a healthy pair the consoles
// match as they grow (no false alarm); then a test knob makes the backup's sentinel
// read one byte of its replay's console flipped, as if the replay had diverged: the
// backup must report it (status and a WARN naming the icount and log offset), step
// down without claiming, and the VM must run on unprotected on the primary, whose
// status says why.
func TestDivergenceSentinel(t *testing.T) {
	l := needLab(t)
	// It takes about a minute and a half (mostly the guest's boot); the deadline
	// leaves room for a loaded host.
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	const vm = "sentinel"
	t0 := time.Now()
	bound := protectGuest(ctx, t, l, vm)
	waitCaughtUp(ctx, t, vm, bound, time.Minute)

	// Healthy: the checked length grows (the guest writes a console line a second)
	// and nothing differs.
	checked := func() control.VMStatus {
		st, err := lab.Status(ctx, lab.HostB, vm)
		if err != nil {
			t.Fatal(err)
		}
		if st.Divergence != "" {
			t.Fatalf("divergence on a healthy pair: %s", st.Divergence)
		}
		return st
	}
	deadline := time.Now().Add(30 * time.Second)
	first := checked()
	for first.ConsoleChecked == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the sentinel checked no console byte within 30 s")
		}
		time.Sleep(250 * time.Millisecond)
		first = checked()
	}
	time.Sleep(3 * time.Second)
	later := checked()
	if later.ConsoleChecked <= first.ConsoleChecked {
		t.Fatalf("console checked %d bytes, then %d 3 s later: not growing", first.ConsoleChecked, later.ConsoleChecked)
	}
	t.Logf("consoles match: %d bytes checked, then %d", first.ConsoleChecked, later.ConsoleChecked)

	// Force a divergence.
	cctx, ccancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := control.Call(cctx, lab.HostB.Socket, control.Request{Op: control.OpTestDiverge, VM: vm})
	ccancel()
	if err != nil {
		t.Fatal(err)
	}
	forced := time.Now()
	b := waitBackupDiverged(ctx, t, vm)
	t.Logf("sentinel fired %s after the flip: %s", time.Since(forced).Round(time.Millisecond), b.Divergence)
	if !strings.Contains(b.Divergence, "icount") || !strings.Contains(b.Divergence, "log offset") {
		t.Errorf("the divergence report does not say where: %s", b.Divergence)
	}

	// The primary carries on unprotected and says why; nothing was claimed by the
	// backup (the primary won the next epoch itself).
	detail := waitSteppedDownPrimary(ctx, t, vm, t0, "backup stepped down", "diverged")
	if !strings.Contains(detail, "backup stepped down") || !strings.Contains(detail, "diverged") {
		t.Errorf("primary detail %q does not say the backup's replay diverged", detail)
	}
	c, err := lab.NewClient(ctx, 30*time.Second)
	if err != nil {
		t.Fatalf("the VM does not serve after its backup stepped down: %v", err)
	}
	defer c.Close()
	if resp, err := c.Do("ping", 10*time.Second); err != nil || resp != "pong" {
		t.Fatalf("ping: %q %v", resp, err)
	}
	blog, _ := os.ReadFile(lab.AgentLog(lab.HostB))
	if !strings.Contains(string(blog), `msg="replay diverged"`) || !strings.Contains(string(blog), "log_offset=") {
		t.Errorf("agent B's log has no WARN for the divergence with its log offset")
	}
	t.Logf("test took %s", time.Since(t0).Round(time.Second))
}
