package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

// TestBoundedLogs: a protected guest takes a bulk client->guest stream (each byte
// is logged on its way in). The rr log files on both hosts grow by hundreds of MiB
// while the space they take on disk stays bounded: the primary frees what the
// backup acknowledged, the backup what it fed its replay. The consoles stay
// identical, and a kill of the primary under a second stream still fails over:
// the backup goes live from its freed log, the stream and the client's connection
// carry on and the guest's counter continues.
func TestBoundedLogs(t *testing.T) {
	l := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	t0 := time.Now()
	const vm = "bounded1"
	bound := protectGuest(ctx, t, l, vm)
	pcon, bcon := lab.Console(lab.HostA, vm, "primary"), lab.Console(lab.HostB, vm, "backup")
	if err := lab.WaitConsole(ctx, bcon, "ftguest ready", 4*time.Minute); err != nil {
		t.Fatal(err)
	}
	waitCaughtUp(ctx, t, vm, bound, 2*time.Minute)
	t.Logf("protected and caught up after %s", time.Since(t0).Round(time.Second))

	// Phase 1: stream into the guest for streamFor (or until the primary's log
	// file has grown by growth); sample both hosts every second.
	const (
		streamFor = 45 * time.Second
		growth    = 512 << 20
		// onDisk bounds what a log may take on disk: what the backup has not
		// acknowledged (the sender keeps at most 8 MiB in flight; pacing holds the
		// lag near its bound) plus what a check interval (0.5 s) writes, and the
		// console. Without freeing the log takes all it has written.
		onDisk = 64 << 20
		// minGrowth: less log than this in streamFor says the machine is too
		// loaded for the test to show anything.
		minGrowth = 32 << 20
	)
	start, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		t.Fatal(err)
	}
	bulkCtx, stopBulk := context.WithCancelCause(ctx)
	errEnough := errors.New("enough log written")
	done := make(chan error, 1)
	go func() { // owned: stopBulk ends it, and the test waits on done
		tr, err := bench.DrivePut(bulkCtx, bench.LabTarget(), 3*time.Minute)
		t.Logf("phase 1 stream: %d bytes to the guest", tr.ToGuestBytes)
		done <- err
	}()
	var maxA, maxB int64
	var p, b control.VMStatus
	deadline := time.Now().Add(streamFor)
	for {
		time.Sleep(time.Second)
		p, b = mustStatus(ctx, t, lab.HostA, vm), mustStatus(ctx, t, lab.HostB, vm)
		if p.State != "protected" || b.State != "replaying" {
			t.Fatalf("a copy stopped: primary %s (%s), backup %s (%s)", p.State, p.Detail, b.State, b.Detail)
		}
		maxA, maxB = max(maxA, p.LogDiskBytes), max(maxB, b.LogDiskBytes)
		t.Logf("primary: log %d MiB written, %d KiB on disk, freed %d MiB | backup: %d MiB received, %d KiB on disk, freed %d MiB | lag %.0f ms",
			p.LogWritten>>20, p.LogDiskBytes>>10, p.LogFreed>>20, b.LogWritten>>20, b.LogDiskBytes>>10, b.LogFreed>>20, p.LagMS)
		if p.LogWritten-start.LogWritten >= growth || time.Now().After(deadline) {
			break
		}
	}
	if g := p.LogWritten - start.LogWritten; g < minGrowth {
		t.Fatalf("the stream wrote only %d MiB of log in %s: too little to judge (load on the machine?)", g>>20, streamFor)
	}
	stopBulk(errEnough)
	if err := <-done; err != nil && !errors.Is(err, errEnough) {
		t.Fatalf("phase 1 stream: %v", err)
	}
	for _, s := range []struct {
		host    string
		st      control.VMStatus
		maxDisk int64
	}{{"primary", p, maxA}, {"backup", b, maxB}} {
		t.Logf("%s: log files %d KiB, at most %d KiB on disk, rr log freed %d KiB; keeps %q", s.host, s.st.LogFileBytes>>10, s.maxDisk>>10, s.st.LogFreed>>10, s.st.LogKeeps)
		if s.st.LogFreeError != "" || s.st.LogDiskAlarm != "" || s.st.LogLimitPaused {
			t.Fatalf("%s: free error %q, alarm %q, paused %v", s.host, s.st.LogFreeError, s.st.LogDiskAlarm, s.st.LogLimitPaused)
		}
		if s.maxDisk > onDisk {
			t.Fatalf("%s: logs took %d MiB on disk, more than %d MiB", s.host, s.maxDisk>>20, onDisk>>20)
		}
		if s.st.LogFileBytes < 8*s.maxDisk || s.st.LogFreed < s.st.LogFileBytes-onDisk {
			t.Fatalf("%s: log files of %d MiB, at most %d MiB on disk, %d MiB freed: the files did not outgrow what they take",
				s.host, s.st.LogFileBytes>>20, s.maxDisk>>20, s.st.LogFreed>>20)
		}
	}

	// The consoles: identical once the backup has replayed the stream.
	waitCaughtUp(ctx, t, vm, bound, time.Minute)
	sameConsoles(ctx, t, pcon, bcon)

	// Phase 2: a second stream on its own connection, a client holding another,
	// and the primary's host killed in the middle: the backup goes live from what
	// its freed log still holds.
	c, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	before := counter(t, c)
	bulkCtx, stopBulk = context.WithCancelCause(ctx)
	go func() { // owned, as above
		tr, err := bench.DrivePut(bulkCtx, bench.LabTarget(), 3*time.Minute)
		t.Logf("phase 2 stream: %d bytes to the guest", tr.ToGuestBytes)
		done <- err
	}()
	time.Sleep(4 * time.Second)
	pre := mustStatus(ctx, t, lab.HostB, vm)
	if pre.LogFreed == 0 {
		t.Fatal("the backup freed nothing before the failover")
	}
	tKill := time.Now()
	if err := bench.KillHost(lab.NSA); err != nil {
		t.Fatal(err)
	}
	var live control.VMStatus
	for {
		time.Sleep(100 * time.Millisecond)
		st, err := lab.Status(ctx, lab.HostB, vm)
		if err == nil && st.Role == "primary" && st.State == "unprotected" {
			live = st
			break
		}
		if err == nil && (st.State == "failed" || st.State == "halted") {
			t.Fatalf("backup %s: %s", st.State, st.Detail)
		}
		if time.Since(tKill) > time.Minute {
			t.Fatalf("the backup did not go live within a minute of the kill (last: %+v, %v)", st, err)
		}
	}
	t.Logf("live on B %s after the kill (claim %.0f ms, go-live %.0f ms); the backup had freed %d MiB of %d MiB received",
		time.Since(tKill).Round(time.Millisecond), live.FailoverClaimMS, live.FailoverGoLiveMS, pre.LogFreed>>20, pre.LogWritten>>20)
	time.Sleep(4 * time.Second)
	stopBulk(errEnough)
	if err := <-done; err != nil && !errors.Is(err, errEnough) {
		t.Fatalf("the stream did not survive the failover: %v", err)
	}
	after := counter(t, c)
	if after <= before {
		t.Fatalf("guest counter %d -> %d across the failover: the guest lost its memory", before, after)
	}
	st := mustStatus(ctx, t, lab.HostB, vm)
	t.Logf("survivor: counter %d -> %d; log %d MiB written, %d KiB on disk; keeps %q", before, after, st.LogWritten>>20, st.LogDiskBytes>>10, st.LogKeeps)
	if !strings.Contains(st.LogKeeps, "nothing replays it") {
		t.Fatalf("the survivor's log keeps %q", st.LogKeeps)
	}
	t.Logf("test took %s", time.Since(t0).Round(time.Second))
}

func mustStatus(ctx context.Context, t *testing.T, h lab.Host, vm string) control.VMStatus {
	t.Helper()
	st, err := lab.Status(ctx, h, vm)
	if err != nil {
		t.Fatalf("status on %s: %v", h.Name, err)
	}
	return st
}

// counter reads the guest's console counter over the client's connection.
func counter(t *testing.T, c *lab.Client) int {
	t.Helper()
	resp, err := c.Do("counter", 20*time.Second)
	if err != nil {
		t.Fatalf("counter: %v", err)
	}
	var n int
	if _, err := fmt.Sscanf(resp, "counter %d", &n); err != nil {
		t.Fatalf("counter answer %q: %v", resp, err)
	}
	return n
}

// sameConsoles waits until the backup's console equals the primary's (the backup
// replays what the primary printed a moment later), and fails if it never does or
// one is not a prefix of the other.
func sameConsoles(ctx context.Context, t *testing.T, pcon, bcon string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		checkConsolePrefix(t, pcon, bcon)
		pb, err1 := os.ReadFile(pcon)
		bb, err2 := os.ReadFile(bcon)
		if err1 != nil || err2 != nil {
			t.Fatal(errors.Join(err1, err2))
		}
		if bytes.Equal(pb, bb) {
			t.Logf("consoles identical: %d bytes", len(pb))
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("consoles still differ after 20 s: primary %d bytes, backup %d", len(pb), len(bb))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
