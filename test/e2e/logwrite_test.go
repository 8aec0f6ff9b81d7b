package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
	"github.com/ftvmd/ftvmd/qemu"
)

// TestLogWriteFailureStopsOutput: host A's run directory (the primary's rr log among
// it) is a small tmpfs. A client keeps requesting from the protected guest while the
// test fills the file system. ftvmd's QEMU stops the VM on the failed log write and
// reports it over QMP; the primary must stop output at once (nothing released after,
// no frame released ahead of its log) and say why in status, never "protected"; the
// backup then takes over from the log it holds, and the VM serves again.
func TestLogWriteFailureStopsOutput(t *testing.T) {
	l := needLab(t)
	eng, err := qemu.DetectEngine(context.Background(), os.Getenv("FTVMD_E2E_QEMU"))
	if err != nil {
		t.Fatal(err)
	}
	if !eng.LogStream {
		t.Skipf("the lab's QEMU (%s) does not report a failed log write: build ftvmd's engine (qemu/engine/build.sh) or set FTVMD_E2E_QEMU", eng.Name)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	run := filepath.Join(lab.HostA.Dir, "run")
	if err := os.MkdirAll(run, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "ftvmd-e2e-run", run).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs on %s: %v: %s", run, err, out)
	}
	t.Cleanup(func() {
		// Lazy: the agents may still have files open; the lab goes down after.
		if out, err := exec.Command("umount", "-l", run).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", run, err, out)
		}
	})
	free := func() int64 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(run, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * st.Bsize
	}

	const vm = "guest1"
	// The VM's logs may take no more than the tmpfs holds, or protect refuses. The
	// primary keeps its whole log (--keep-log): freeing what the backup acknowledged
	// would give QEMU room on the full file system, which is what bounded logs are
	// for (TestBoundedLogs), and this test needs its log write to fail.
	bound := protectGuestFlags(ctx, t, l, vm, []string{"--keep-log"}, "--max-log-disk", "32MiB")
	waitCaughtUp(ctx, t, vm, bound, 2*time.Minute)
	c, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Requests until one fails: each answer is output the primary released.
	type answer struct {
		n  int
		at time.Time
	}
	answers := make(chan answer, 1<<16)
	reqErr := make(chan error, 1)
	go func() { // owned: ends at the first failed request (the connection closes with the test)
		for i := 1; ; i++ {
			resp, err := c.Do(fmt.Sprintf("seq %d x", i), 5*time.Second)
			if err != nil || !strings.HasPrefix(resp, "ok ") {
				reqErr <- fmt.Errorf("request %d: %q %v", i, resp, err)
				return
			}
			answers <- answer{i, time.Now()}
		}
	}()
	time.Sleep(time.Second) // the guest answers while protected
	before := len(answers)
	if before == 0 {
		t.Fatal("no answer in 1 s while protected")
	}
	room := free()
	// Leave the log little room: with requests flowing it fills within seconds.
	filler := filepath.Join(run, "filler")
	if err := os.WriteFile(filler, make([]byte, max(room-(64<<10), 0)), 0o600); err != nil {
		t.Fatal(err)
	}
	filled := time.Now()
	t.Logf("%d answers while protected; filled %s of the primary's file system, %d bytes left", before, fmtBytes(room), free())

	var st control.VMStatus
	deadline := time.Now().Add(time.Minute)
	for {
		if st, err = lab.Status(ctx, lab.HostA, vm); err != nil {
			t.Fatal(err)
		}
		if st.State != "protected" && st.State != "starting" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("primary still %s a minute after its log's file system filled (%d bytes free)", st.State, free())
		}
		time.Sleep(50 * time.Millisecond)
	}
	seen := time.Now()
	t.Logf("primary %s %s after the fill: %s", st.State, seen.Sub(filled).Round(time.Millisecond), st.Detail)
	if st.State != "failed" || !strings.Contains(st.Detail, "rr log write failed: No space left on device; output stopped") {
		t.Errorf("primary state %q detail %q, want failed with the log write failure", st.State, st.Detail)
	}
	if !strings.Contains(st.Detail, "the backup takes over") {
		t.Errorf("primary detail %q: want the backup to take over", st.Detail)
	}

	// The failed primary releases nothing more: its relay's count of released
	// frames stays where it was when it reported the failure. (The client may be
	// answered again, by the backup once it is live.)
	released := st.Released
	// The backup takes over: it claims the next epoch and goes live.
	var live control.VMStatus
	deadline = time.Now().Add(2 * time.Minute)
	for {
		live, err = lab.Status(ctx, lab.HostB, vm)
		if err == nil && live.Role == "primary" && live.State == "unprotected" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the backup did not go live within 2 min of the primary's failure: %+v %v", live, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("backup live %s after the primary's failure: epoch %d, %s", time.Since(seen).Round(time.Millisecond), live.Epoch, live.Detail)
	select {
	case err := <-reqErr:
		t.Logf("client: %v", err)
	default:
	}
	n := 0
drain:
	for {
		select {
		case <-answers:
			n++
		default:
			break drain
		}
	}
	t.Logf("client: %d answers in all", n)
	c2, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		t.Fatalf("the VM does not serve after the backup went live: %v", err)
	}
	defer c2.Close()
	if resp, err := c2.Do("ping", 10*time.Second); err != nil || resp != "pong" {
		t.Fatalf("ping after the failover: %q %v", resp, err)
	}

	p, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		t.Fatal(err)
	}
	if p.Released != released {
		t.Errorf("the failed primary released %d frames after it reported the failure", p.Released-released)
	}
	if p.InvariantFails != 0 {
		t.Errorf("%d frames would have been released before the backup acked their log", p.InvariantFails)
	}
	if p.State == "protected" {
		t.Errorf("primary reports protected after its log failed")
	}
	// QEMU's own output is on the full file system; the agent's log is not.
	alog, _ := os.ReadFile(lab.AgentLog(lab.HostA))
	if !strings.Contains(string(alog), "qemu could not write the rr log") {
		t.Errorf("agent A's log does not report QEMU's event REPLAY_WRITE_ERROR")
	}
}

func fmtBytes(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }
