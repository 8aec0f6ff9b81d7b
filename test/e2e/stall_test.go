package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/agent"
	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

// stallClockSlack is how much earlier than the test's clock the agent's stall clock
// may start: it starts at the last query-replay sample that saw the count move
// (polled every 10 ms while it moves), which can precede the SIGSTOP the test times
// from by a poll plus the scheduling of both. A step-down 6 ms "early" on a quiet lab
// (TestReplayStallStepsDown on tap, 2026-11-30 14:25 UTC) was this, not a threshold
// the agent ignored; the agent's own figure (ReplayStalledSec) is still checked
// against the threshold exactly.
const stallClockSlack = 100 * time.Millisecond

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
	// Report only: a stall that outlasts --stall-step-down makes the backup step
	// down (TestReplayStallStepsDown), and this one may last a while on a loaded lab.
	bound := protectGuestAgents(ctx, t, l, vm, []string{"--stall-step-down", "0"}, nil)
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
	if seen < after-stallClockSlack || b.ReplayStalledSec < after.Seconds() {
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

// TestReplayStallStepsDown stops the backup's replaying QEMU (SIGSTOP) and keeps it
// stopped past the agents' --stall-step-down (short here): the backup must step
// down without claiming (status failed, detail naming the sentinel, the stall and
// where: icount, log offset), its QEMU must go, the primary must carry on serving
// the guest's client unprotected and say why, and then protect the VM again by
// itself from a fresh start (protect-running): protected, a new backup replaying and
// caught up, the same guest (its request count went on), the stepped-down backup's
// evidence kept on host B.
func TestReplayStallStepsDown(t *testing.T) {
	l := needLab(t)
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	const vm = "stalldown"
	const stepDown = 6 * time.Second // the lab's --stall-after is the default, 3 s
	bound := protectGuestAgents(ctx, t, l, vm, []string{"--stall-step-down", stepDown.String()}, nil)
	if err := lab.WaitConsole(ctx, lab.Console(lab.HostB, vm, "backup"), "ftguest ready", 4*time.Minute); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, vm, bound, 2*time.Minute)
	booted := time.Now()

	c, err := lab.NewClient(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seq := func(what string) int {
		t.Helper()
		// "seq <n> <payload>" answers "ok <n> <the guest's request count> <payload>".
		resp, err := c.Do("seq 1 stalldown", 10*time.Second)
		if err != nil {
			t.Fatalf("the guest's client, %s: %v", what, err)
		}
		f := strings.Fields(resp)
		if len(f) != 4 || f[0] != "ok" {
			t.Fatalf("seq answered %q", resp)
		}
		n, err := strconv.Atoi(f[2])
		if err != nil {
			t.Fatalf("seq answered %q", resp)
		}
		return n
	}
	seq0 := seq("before the stall")

	b, err := lab.Status(ctx, lab.HostB, vm)
	if err != nil {
		t.Fatal(err)
	}
	qemu := b.PID
	if b.State != "replaying" || qemu <= 0 {
		t.Fatalf("backup before the stall: %+v", b)
	}
	if err := syscall.Kill(qemu, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	// Teardown kills the stopped QEMU (SIGKILL needs no SIGCONT); should the test
	// fail first, let it run again.
	defer func() {
		if err := syscall.Kill(qemu, syscall.SIGCONT); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Errorf("resume the replaying qemu: %v", err)
		}
	}()
	t.Logf("replaying qemu (pid %d) stopped", qemu)

	// The backup steps down once the stall has lasted the threshold: not before,
	// and soon after (the stall clock starts with the first log beyond the stop).
	// Meanwhile the guest serves its client, and the primary never halts.
	var p control.VMStatus
	sawUnprotected := false
	for {
		if time.Since(stopped) > stepDown+30*time.Second {
			t.Fatalf("no step-down %s after the replay was stopped (threshold %s): backup %s (%s)", time.Since(stopped).Round(time.Second), stepDown, b.State, b.Detail)
		}
		time.Sleep(100 * time.Millisecond)
		if b, err = lab.Status(ctx, lab.HostB, vm); err != nil {
			t.Fatalf("backup status: %v", err)
		}
		if p, err = lab.Status(ctx, lab.HostA, vm); err != nil {
			t.Fatalf("primary status: %v", err)
		}
		switch p.State {
		case "protected", "claiming", "syncing":
		case "unprotected":
			sawUnprotected = true
		default:
			t.Fatalf("primary %s (%s) while its backup stalled", p.State, p.Detail)
		}
		if b.State == "failed" {
			break
		}
		if b.State != "replaying" {
			t.Fatalf("backup %s (%s)", b.State, b.Detail)
		}
	}
	took := time.Since(stopped)
	t.Logf("backup stepped down %.1f s after the stop: %s", took.Seconds(), b.Detail)
	if took < stepDown-stallClockSlack {
		t.Fatalf("stepped down %s after the stop, before the %s threshold", took, stepDown)
	}
	for _, w := range []string{"stepped down: divergence sentinel: replay stalled", "icount ", "log offset "} {
		if !strings.Contains(b.Detail, w) {
			t.Errorf("backup detail %q does not say %q", b.Detail, w)
		}
	}
	if !b.ReplayStalled || b.ReplayStalledSec < stepDown.Seconds() || b.StepDownEvidence == "" {
		t.Errorf("stepped-down backup's status: stalled %v for %.1f s, evidence %q", b.ReplayStalled, b.ReplayStalledSec, b.StepDownEvidence)
	}
	stalledAt := b.ReplayStalledAtIcount
	seq("after the step-down")

	// Its QEMU goes (one live copy: the primary's).
	for deadline := time.Now().Add(30 * time.Second); syscall.Kill(qemu, 0) == nil; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the stepped-down backup's qemu (pid %d) still runs 30 s on", qemu)
		}
	}

	// The primary protects the VM again by itself: a new backup from a snapshot.
	var nb control.VMStatus
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(200 * time.Millisecond) {
		if p, err = lab.Status(ctx, lab.HostA, vm); err != nil {
			t.Fatalf("primary status: %v", err)
		}
		switch p.State {
		case "unprotected":
			sawUnprotected = true
			if !strings.Contains(p.Detail, "backup stepped down") || !strings.Contains(p.Detail, "divergence sentinel") {
				t.Fatalf("unprotected primary's detail %q does not say why", p.Detail)
			}
		case "claiming", "syncing", "protected":
		default:
			t.Fatalf("primary %s (%s) after its backup stepped down", p.State, p.Detail)
		}
		nb, err = lab.Status(ctx, lab.HostB, vm)
		if p.State == "protected" && err == nil && nb.State == "replaying" && nb.PID != qemu {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("not protected again 3 min after the step-down: primary %s (%s), backup %+v %v", p.State, p.Detail, nb, err)
		}
	}
	again := time.Since(stopped)
	if p.Sync == nil || !p.Sync.Auto {
		t.Errorf("the primary's protection is not its own re-protection: %+v", p.Sync)
	}
	waitCaughtUp(ctx, t, vm, bound, 2*time.Minute)
	if nb, err = lab.Status(ctx, lab.HostB, vm); err != nil || nb.State != "replaying" || nb.ReplayStalled || nb.ReplayStalls != 0 {
		t.Fatalf("new backup: %+v %v", nb, err)
	}
	if n := seq("protected again"); n <= seq0 {
		t.Fatalf("the guest's request count went from %d to %d: not the same guest", seq0, n)
	}

	// What the sentinel found is kept on host B for a look.
	kept := filepath.Join(lab.HostB.Dir, "run", vm+".backup.stepped-down")
	ev, err := os.ReadFile(filepath.Join(kept, "stepdown.json"))
	if err != nil {
		t.Fatal(err)
	}
	var found struct {
		Reason    string `json:"reason"`
		Icount    uint64 `json:"icount"`
		LogOffset int64  `json:"log_offset"`
	}
	if err := json.Unmarshal(ev, &found); err != nil {
		t.Fatal(err)
	}
	if found.Icount != stalledAt || found.LogOffset <= 0 || !strings.Contains(found.Reason, "replay stalled") {
		t.Errorf("evidence %s: want the stall at icount %d", ev, stalledAt)
	}
	if _, err := os.Stat(filepath.Join(kept, "log.rr")); err != nil {
		t.Errorf("the stepped-down backup's log was not kept: %v", err)
	}
	for h, want := range map[lab.Host]string{
		lab.HostA: "backup stepped down: its divergence sentinel found its replay is no protection",
		lab.HostB: "replay stalled past the step-down threshold: stepping down",
	} {
		log, err := os.ReadFile(lab.AgentLog(h))
		if err != nil {
			t.Fatal(err)
		}
		if n := strings.Count(string(log), want); n != 1 {
			t.Errorf("agent %s logged %q %d times, want once", h.Name, want, n)
		}
	}
	if !sawUnprotected {
		t.Logf("note: the primary's unprotected spell fell between two status reads")
	}
	t.Logf("stepped down %.1f s after the stop, protected again %.1f s after it; %s after boot; test took %s",
		took.Seconds(), again.Seconds(), time.Since(booted).Round(time.Second), time.Since(t0).Round(time.Second))
}
