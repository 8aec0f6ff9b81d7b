package e2e

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/journal"
	"github.com/ftvmd/ftvmd/lab"
)

// TestQEMUUnresponsive stops the QEMU of a VM that runs unprotected (SIGSTOP) for
// longer than the agent's --qemu-unresponsive-after: its status must say the QEMU
// does not answer (not before the threshold), `ftvmd status` and `ftvmd events` and
// the agent's log must say so, and all of it must clear once the QEMU runs again
// (SIGCONT), with the guest serving as before.
func TestQEMUUnresponsive(t *testing.T) {
	l := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	const (
		vm        = "wedge1"
		threshold = 3 * time.Second // shorter than the default to keep the test short
	)
	if err := l.StartAgent(ctx, lab.HostA, append(agentArgs(), "--qemu-unresponsive-after", threshold.String())...); err != nil {
		t.Fatal(err)
	}
	runGuest(ctx, t, l, vm)
	status := func() control.VMStatus {
		t.Helper()
		st, err := lab.Status(ctx, lab.HostA, vm)
		if err != nil {
			t.Fatal(err)
		}
		if st.State != "unprotected" {
			t.Fatalf("vm is %s (%s), want it running unprotected throughout", st.State, st.Detail)
		}
		return st
	}
	// waitFor polls the status until cond holds, failing after limit.
	waitFor := func(what string, limit time.Duration, cond func(control.VMStatus) bool) control.VMStatus {
		t.Helper()
		deadline := time.Now().Add(limit)
		for {
			st := status()
			if cond(st) {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within %s: %+v", what, limit, st)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	st := waitFor("a first probe answered", 30*time.Second, func(s control.VMStatus) bool { return !s.QEMULastAnswer.IsZero() })
	if st.QEMUUnresponsive || st.QEMUUnresponsives != 0 {
		t.Fatalf("a running QEMU reported unresponsive: %+v", st)
	}
	pid := st.PID
	if pid <= 0 {
		t.Fatalf("status names no QEMU pid: %+v", st)
	}
	logAt := agentLogSize(t)

	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	resumed := false
	resume := func() {
		if !resumed {
			resumed = true
			if err := syscall.Kill(pid, syscall.SIGCONT); err != nil {
				t.Errorf("resume qemu: %v", err)
			}
		}
	}
	defer resume()
	t.Logf("qemu (pid %d) stopped", pid)

	st = waitFor("reported unresponsive", threshold+20*time.Second, func(s control.VMStatus) bool { return s.QEMUUnresponsive })
	seen := time.Since(stopped)
	t.Logf("reported unresponsive %.1f s after the stop: since %s, last good probe %s",
		seen.Seconds(), st.QEMUSince.Format("15:04:05.000"), st.QEMULastAnswer.Format("15:04:05.000"))
	// The unanswered probe may have been sent just before the stop (it waits for a
	// QEMU that was running then): a probe's round trip of slack, no more.
	const slack = 200 * time.Millisecond
	if seen < threshold-slack || st.QEMUUnresponsiveSec < (threshold-slack).Seconds() {
		t.Fatalf("reported %s after the stop (%.1f s by the agent): before the %s threshold", seen, st.QEMUUnresponsiveSec, threshold)
	}
	if st.QEMUSince.Before(stopped.Add(-slack)) || st.QEMULastAnswer.After(stopped.Add(slack)) || st.QEMUUnresponsives != 1 {
		t.Fatalf("unresponsive state %+v, stopped at %s", st, stopped.Format("15:04:05.000"))
	}
	out, err := l.Run(ctx, "a", "status", vm)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ftvmd status while stopped:\n%s", out)
	if !strings.Contains(out, "NOT ANSWERING for") {
		t.Fatal("`ftvmd status` does not say the QEMU does not answer")
	}
	if !strings.Contains(agentLogSince(t, logAt), "qemu not answering") {
		t.Fatal("the agent's log does not say the QEMU does not answer")
	}

	resume()
	st = waitFor("answers again", 20*time.Second, func(s control.VMStatus) bool { return !s.QEMUUnresponsive })
	if st.QEMUUnresponsives != 1 || st.QEMULastAnswer.Before(stopped) || st.QEMUUnresponsiveSec != 0 {
		t.Fatalf("state after the answer: %+v", st)
	}
	if !strings.Contains(agentLogSince(t, logAt), "qemu answers again") {
		t.Fatal("the agent's log does not say the QEMU answers again")
	}
	out, err = l.Run(ctx, "a", "events", vm, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e journal.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("events line %q: %v", line, err)
		}
		if e.Kind == journal.KindQEMUUnresponsive || e.Kind == journal.KindQEMUAnswers {
			kinds = append(kinds, e.Kind)
			if e.Kind == journal.KindQEMUAnswers && e.DurationMS < float64((threshold-slack)/time.Millisecond) {
				t.Errorf("qemu-answers says it lasted %.0f ms, less than the threshold", e.DurationMS)
			}
		}
	}
	if strings.Join(kinds, " ") != "qemu-unresponsive qemu-answers" {
		t.Fatalf("events %v, want qemu-unresponsive then qemu-answers:\n%s", kinds, out)
	}

	// The guest runs on.
	c, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if resp, err := c.Do("ping", 30*time.Second); err != nil || resp != "pong" {
		t.Fatalf("ping after the resume: %q %v", resp, err)
	}
	if out, err := l.Run(ctx, "a", "stop", vm); err != nil {
		t.Fatal(err)
	} else {
		t.Log(strings.TrimSpace(out))
	}
}

// agentLogSize is how long host A's agent log is now (what came before is not this
// test's business).
func agentLogSize(t *testing.T) int64 {
	t.Helper()
	fi, err := os.Stat(lab.AgentLog(lab.HostA))
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// agentLogSince is host A's agent log from offset on.
func agentLogSince(t *testing.T, offset int64) string {
	t.Helper()
	b, err := os.ReadFile(lab.AgentLog(lab.HostA))
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(b)) < offset {
		return string(b)
	}
	return string(b[offset:])
}
