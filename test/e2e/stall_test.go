package e2e

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/agent"
	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

// TestReplayStallReported stops the backup's replaying QEMU (SIGSTOP) while the
// primary runs on: its instruction count freezes while log keeps arriving, as in the
// stall seen in the field. Both agents must say so while it lasts (status on both
// sides, `ftvmd status` on the primary, a WARN in each log), not before the
// threshold, never for the idle guest before it, and clear it once the replay runs
// again, counting one episode.
func TestReplayStallReported(t *testing.T) {
	l := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	const vm = "guest1"
	bound := protectGuest(ctx, t, l, vm)
	if err := lab.WaitConsole(ctx, lab.Console(lab.HostB, vm, "backup"), "ftguest ready", 4*time.Minute); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, vm, bound, 2*time.Minute)
	after := agent.DefaultStallAfter // the lab's agents run with the default

	both := func() (p, b control.VMStatus) {
		t.Helper()
		p, err := lab.Status(ctx, lab.HostA, vm)
		if err != nil {
			t.Fatalf("primary status: %v", err)
		}
		b, err = lab.Status(ctx, lab.HostB, vm)
		if err != nil {
			t.Fatalf("backup status: %v", err)
		}
		if p.State != "protected" || b.State != "replaying" {
			t.Fatalf("a copy stopped: primary %s (%s), backup %s (%s)", p.State, p.Detail, b.State, b.Detail)
		}
		if !p.ReplayStallReported || !b.ReplayStallReported {
			t.Fatalf("stall state not reported: primary %v, backup %v", p.ReplayStallReported, b.ReplayStallReported)
		}
		return p, b
	}

	// An idle guest: its replay waits for log most of the time, and is never stalled.
	for end := time.Now().Add(3 * after); time.Now().Before(end); time.Sleep(200 * time.Millisecond) {
		if p, b := both(); p.ReplayStalls+b.ReplayStalls != 0 || p.ReplayStalled || b.ReplayStalled {
			t.Fatalf("idle guest reported stalled: primary %+v, backup %+v", p, b)
		}
	}

	_, b := both()
	qemu := b.PID
	if qemu <= 0 {
		t.Fatalf("backup status names no QEMU pid: %+v", b)
	}
	if err := syscall.Kill(qemu, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := syscall.Kill(qemu, syscall.SIGCONT); err != nil {
				t.Errorf("resume the replaying qemu: %v", err)
			}
		}
	}
	defer resume()
	t.Logf("replaying qemu (pid %d) stopped", qemu)

	// The idle guest's log keeps coming; after the threshold both sides must say so,
	// soon after: the log fed since the stop waits unread in the FIFO, so the backup
	// does not take the stopped QEMU's pending read(2) for a drained replay
	// (Feed.Unread), and the stall clock starts with the first log beyond it.
	var p control.VMStatus
	for {
		if time.Since(stopped) > after+10*time.Second {
			t.Fatalf("no stall reported %s after the replay was stopped (threshold %s): backup %+v", time.Since(stopped).Round(time.Second), after, b)
		}
		time.Sleep(100 * time.Millisecond)
		p, b = both()
		if b.ReplayStalled {
			break
		}
		if p.ReplayStalled {
			t.Fatalf("the primary reports a stall the backup does not: %+v", p)
		}
	}
	seen := time.Since(stopped)
	t.Logf("backup reported the stall %.1f s after the stop: %.1f s at icount %d, %d bytes held beyond",
		seen.Seconds(), b.ReplayStalledSec, b.ReplayStalledAtIcount, b.ReplayStalledLogBeyond)
	if seen < after || b.ReplayStalledSec < after.Seconds() {
		t.Fatalf("stall reported %s after the stop, stalled for %.1f s: before the %s threshold", seen, b.ReplayStalledSec, after)
	}
	if b.ReplayStalls != 1 || b.ReplayStalledLogBeyond <= 0 || b.ReplayStalledAtIcount != b.Icount {
		t.Fatalf("backup stall state: %+v", b)
	}
	// The primary hears it on the next acks.
	for deadline := time.Now().Add(5 * time.Second); !p.ReplayStalled; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("primary never showed the backup's stall: %+v", p)
		}
		p, _ = both()
	}
	if p.ReplayStalledAtIcount != b.ReplayStalledAtIcount || p.ReplayStalls != 1 {
		t.Fatalf("primary shows stall at icount %d (%d stalls), backup at %d", p.ReplayStalledAtIcount, p.ReplayStalls, b.ReplayStalledAtIcount)
	}
	// It keeps counting while it lasts.
	time.Sleep(time.Second)
	p2, _ := both()
	if !p2.ReplayStalled || p2.ReplayStalledSec <= p.ReplayStalledSec {
		t.Fatalf("stall length not growing on the primary: %.1f s then %.1f s", p.ReplayStalledSec, p2.ReplayStalledSec)
	}
	out, err := l.Run(ctx, "a", "status", vm)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ftvmd status on the primary:\n%s", out)
	if !strings.Contains(out, "REPLAY STALLED for") {
		t.Fatal("`ftvmd status` on the primary does not show the stall")
	}

	resume()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(100 * time.Millisecond) {
		p, b = both()
		if !p.ReplayStalled && !b.ReplayStalled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stall not cleared a minute after the replay resumed: primary %v, backup %v", p.ReplayStalled, b.ReplayStalled)
		}
	}
	if p.ReplayStalls != 1 || b.ReplayStalls != 1 {
		t.Fatalf("episodes counted: primary %d, backup %d, want 1", p.ReplayStalls, b.ReplayStalls)
	}
	waitCaughtUp(ctx, t, vm, bound, 2*time.Minute)

	for h, want := range map[lab.Host][]string{
		lab.HostA: {`msg="backup replay stalled"`, `msg="backup replay progressing again"`},
		lab.HostB: {`msg="replay stalled"`, `msg="replay progressing again"`},
	} {
		log, err := os.ReadFile(lab.AgentLog(h))
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if n := strings.Count(string(log), w); n != 1 {
				t.Errorf("agent %s logged %s %d times, want once", h.Name, w, n)
			}
		}
	}
}
