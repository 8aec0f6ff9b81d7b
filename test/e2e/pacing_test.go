package e2e

import (
	"context"
	"fmt"
	"hash/crc32"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
	"github.com/ftvmd/ftvmd/throttle"
)

// TestPacingBoundsLag drives a bulk client->guest stream into a guest protected
// while it ran (runThenProtectWith) for 40 s: every frame the guest receives is logged, so this is the load a CPU quota
// cannot slow and the pacing of network input is for. It runs on the data path the
// suite runs on (FTVMD_DATA_PATH, relay when unset): on the relay path the agent
// holds the paced frames, on the tap path a tbf qdisc on the tap does.
// FTVMD_DATA_PATH=both (with -run TestPacingBoundsLag alone: the other tests'
// agents know no such path) runs both, each on a fresh lab. On the tap path the
// stream is faster (the frames do not pass the agent) and the lab's two cores are
// busier: of three paced tap runs on 2026-11-30 one failed (p99 286 ms at
// 171 Mbit/s, its peaks with the CPU quota at its floor); after the pacer left the
// ack loop (session 13) the tap runs passed (p99 152 ms on 2026-12-01 02:50 UTC,
// 147.6 ms at 119 Mbit/s in the session-14 suite at 05:41 UTC, contended).
// The primary's status, read
// every 200 ms, must show the backup's lag p99 within the bound plus one controller
// step (see below), never over the bound for 2 s, and pacing only after
// the lag passed the bound (and whenever it stayed over it); every byte sent must
// reach the guest (its crc32 reply to each put).
//
// FTVMD_E2E_PACING=off runs the same load as a control, with pacing turned off
// (agents with --pace-queue-bytes=0, the CPU quota alone): it checks that nothing
// is paced and the bytes, and only reports the lag, for comparison.
func TestPacingBoundsLag(t *testing.T) {
	paths := []string{wantDataPath()}
	if paths[0] == "both" {
		paths = []string{"relay", "tap"}
	}
	for _, path := range paths {
		t.Run(path, func(t *testing.T) { testPacingBoundsLag(t, path) })
	}
}

func testPacingBoundsLag(t *testing.T, dataPath string) {
	l := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	const vm = "pace1"
	controlRun := os.Getenv("FTVMD_E2E_PACING") == "off"
	agentArgs := []string{"--data-path=" + dataPath, fmt.Sprintf("--pace-queue-bytes=%d", throttle.DefaultPaceQueue)}
	if controlRun {
		agentArgs = append(agentArgs, "--pace-queue-bytes=0")
		t.Log("control run: pacing off, the CPU quota alone")
	}
	bound := runThenProtectWith(ctx, t, l, vm, agentArgs)
	if st, err := lab.Status(ctx, lab.HostA, vm); err != nil {
		t.Fatal(err)
	} else if st.DataPath != dataPath || st.PacingEnabled == controlRun {
		t.Fatalf("primary on data path %q with pacing enabled %v, want %q and %v", st.DataPath, st.PacingEnabled, dataPath, !controlRun)
	}
	waitCaughtUp(ctx, t, vm, bound, 2*time.Minute)
	before, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		t.Fatal(err)
	}

	c, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const streamFor = 40 * time.Second
	type result struct {
		bytes, chunks int64
		err           error
	}
	done := make(chan result, 1)
	stop := make(chan struct{})
	start := time.Now()
	go func() { // owned by this test: it ends when stop closes or a put fails
		var r result
		for {
			select {
			case <-stop:
				done <- r
				return
			default:
			}
			n, err := putChunk(c, r.chunks)
			if err != nil {
				r.err = err
				done <- r
				return
			}
			r.bytes += n
			r.chunks++
		}
	}()

	var lags []float64
	var trace []string // one line per sample, logged at the end
	var over, runOver, maxRunOver int
	var last control.VMStatus
	var res result
	finished := false
	tick := time.NewTicker(sampleEvery)
	defer tick.Stop()
	timeout := time.After(streamFor)
	for !finished {
		select {
		case <-timeout:
			close(stop)
			timeout = nil
			continue
		case res = <-done:
			finished = true
			continue
		case <-tick.C:
		}
		p, err := lab.Status(ctx, lab.HostA, vm)
		if err != nil {
			t.Fatalf("primary status: %v", err)
		}
		b, err := lab.Status(ctx, lab.HostB, vm)
		if err != nil {
			t.Fatalf("backup status: %v", err)
		}
		if p.State != "protected" || b.State != "replaying" {
			t.Fatalf("a copy stopped: primary %s (%s), backup %s (%s)", p.State, p.Detail, b.State, b.Detail)
		}
		if b.EmittedFrames != 0 {
			t.Fatalf("the replaying QEMU emitted %d frames", b.EmittedFrames)
		}
		if timeout == nil {
			continue // the stream is ending: its last put is not the load under test
		}
		lags = append(lags, p.LagMS)
		trace = append(trace, fmt.Sprintf("t=%5.1fs lag %7.1f ms (%7d B) work %6.1f ms | log w %6.1f a %6.1f r %6.1f MiB | quota %.2f | pace %-5v %6.0f kB/s q %6d B held %6d drop %d | net drops %d",
			time.Since(start).Seconds(), p.LagMS, p.LagBytes, p.WorkLagMS, mib(p.LogWritten), mib(p.LogAcked), mib(p.LogReplayed),
			p.ThrottleQuota, p.PacingActive, p.PaceRateBps/1e3, p.PaceQueueBytes, p.PacedFrames, p.PaceDrops, p.NetErrors))
		if time.Duration(p.LagMS*float64(time.Millisecond)) > bound {
			over++
			runOver++
			maxRunOver = max(maxRunOver, runOver)
		} else {
			runOver = 0
		}
		last = p
	}
	elapsed := time.Since(start)
	if res.err != nil {
		t.Fatalf("stream failed after %d chunks (%d bytes): %v", res.chunks, res.bytes, res.err)
	}
	if len(lags) < int(streamFor/(400*time.Millisecond)) {
		t.Fatalf("only %d status samples in %v", len(lags), streamFor)
	}
	after, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		t.Fatal(err)
	}
	sorted := append([]float64(nil), lags...)
	sort.Float64s(sorted)
	p50, p99, maxLag := sorted[len(sorted)/2], sorted[len(sorted)*99/100], sorted[len(sorted)-1]
	paced := after.PacedSec - before.PacedSec
	engaged := after.PaceEngaged - before.PaceEngaged
	t.Logf("stream: %d bytes in %d puts of %d bytes, %v, %.1f Mbit/s, every crc32 matched",
		res.bytes, res.chunks, putSize, elapsed.Round(time.Millisecond), float64(res.bytes)*8/1e6/elapsed.Seconds())
	t.Logf("lag over %d samples: p50 %.1f ms, p99 %.1f ms, max %.1f ms; %d samples over the bound %v (longest run %d)",
		len(lags), p50, p99, maxLag, over, bound, maxRunOver)
	t.Logf("pacing (%s path): engaged %d times (last at lag %.1f ms), paced %.1f s, %d frames held, %d dropped, %d failures to apply; throttled %.1f s; log %.1f MiB",
		dataPath, engaged, after.PaceEngagedLagMS, paced, after.PacedFrames-before.PacedFrames, after.PaceDrops-before.PaceDrops,
		after.PaceErrors, after.ThrottledSec-before.ThrottledSec, float64(after.LogWritten-before.LogWritten)/(1<<20))
	if over == 0 && engaged == 0 && !before.PacingActive {
		t.Logf("the load never pushed the lag over the bound %v on the %s path: pacing was not exercised (only its staying off is checked)", bound, dataPath)
	}
	t.Logf("last sample while streaming: lag %.1f ms, pacing %v at %.0f B/s, %d B waiting", last.LagMS, last.PacingActive, last.PaceRateBps, last.PaceQueueBytes)

	t.Logf("samples:\n%s", strings.Join(trace, "\n"))
	if res.bytes == 0 {
		t.Fatal("no bytes reached the guest")
	}
	if after.PaceErrors > 0 {
		t.Fatalf("%d failures to apply the paced rate on the %s path (the agent's log says why)", after.PaceErrors, dataPath)
	}
	if controlRun {
		if paced > 0 || engaged > 0 || after.PacedFrames > 0 {
			t.Fatalf("pacing off, yet paced %.1f s (engaged %d, %d frames held)", paced, engaged, after.PacedFrames)
		}
		t.Logf("control run: lag p99 %.1f ms against the bound %v, not checked", p99, bound)
		return
	}
	// Pacing only after the lag passed the bound: the agent's own record of the lag
	// that engaged it must be over the bound (the 200 ms samples can miss a spike).
	// Pacing may have engaged before the stream (a lag spike while the backup
	// caught up) and stayed on: then no engagement falls in the window.
	if paced > 0 && ((engaged == 0 && !before.PacingActive) || time.Duration(after.PaceEngagedLagMS*float64(time.Millisecond)) <= bound) {
		t.Fatalf("paced %.1f s, but engaged %d times, last at lag %.1f ms (bound %v)", paced, engaged, after.PaceEngagedLagMS, bound)
	}
	// And whenever the lag stayed over the bound (two samples in a row, 200 ms
	// apart, more than the pacer's 100 ms cadence), pacing must have engaged.
	if maxRunOver >= 2 && engaged == 0 && !before.PacingActive {
		t.Fatalf("lag over the bound for %d samples in a row, yet pacing never engaged", maxRunOver)
	}
	// The lag p99 must stay within the bound plus one controller step. Pacing
	// engages only once the lag passed the bound, and the pacer and the throttle
	// decide every 100 ms; and no cut in input shortens a moment in which the replay
	// reports no progress: the age lag then grows by up to 1 ms per ms (seen in the
	// lab while paced: 0 -> ~50 -> 100-150 ms -> 0 over 0.6-0.8 s, again and again,
	// the peaks no lower at a paced 1.3 MB/s than at 13 MB/s). Measured on
	// 2026-11-30 with the 100 ms bound, paced: p99 111, 129, 138, 147 ms; control
	// runs with pacing off (FTVMD_E2E_PACING=off), each in the same lab session as
	// a paced one: p99 730 ms and 5.6 s.
	// A replay that stops cannot be paced back within the bound: when the backup
	// reported a stall, the failure says so (the stall is the bug, issue 12).
	var stalled string
	if n := after.ReplayStalls - before.ReplayStalls; n > 0 {
		stalled = fmt.Sprintf("; the backup's replay stalled %d times meanwhile (its stall detector), which no pacing can hold within a bound", n)
	}
	if limit := bound + controllerStep; time.Duration(p99*float64(time.Millisecond)) > limit {
		t.Fatalf("lag p99 %.1f ms over %v (the bound %v plus one controller step)%s", p99, limit, bound, stalled)
	}
	// And no long excursion: as TestLockstep, a moment over the bound is allowed, 2 s
	// is not.
	if longest := time.Duration(maxRunOver) * sampleEvery; longest > 2*time.Second {
		t.Fatalf("lag over the bound %v for %v in a row%s", bound, longest, stalled)
	}
}

// controllerStep is the period at which the primary's throttle and pacer act on the
// lag (agent.throttleEvery), and sampleEvery how often the test reads the status.
const (
	controllerStep = 100 * time.Millisecond
	sampleEvery    = 200 * time.Millisecond
)

// putSize is one put's payload: 8 MiB, a few hundred ms at the stream's rate, so the
// stream ends soon after it is told to.
const putSize = 8 << 20

// putChunk sends one put of putSize bytes whose content depends on the chunk number
// and checks the guest's byte count and crc32 against what was sent.
func putChunk(c *lab.Client, chunk int64) (int64, error) {
	_ = c.Conn.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := fmt.Fprintf(c.Conn, "put %d\n", putSize); err != nil {
		return 0, fmt.Errorf("put %d: %w", chunk, err)
	}
	buf := make([]byte, 64<<10)
	h := crc32.NewIEEE()
	for off := 0; off < putSize; off += len(buf) {
		for i := range buf {
			x := int64(off + i)
			buf[i] = byte(x*13 + x>>9 + chunk*31)
		}
		h.Write(buf)
		if _, err := c.Conn.Write(buf); err != nil {
			return 0, fmt.Errorf("put %d at byte %d: %w", chunk, off, err)
		}
	}
	got, err := c.ReadLine()
	if err != nil {
		return 0, fmt.Errorf("put %d: reply: %w", chunk, err)
	}
	if want := fmt.Sprintf("got %d %08x", putSize, h.Sum32()); strings.TrimSpace(got) != want {
		return 0, fmt.Errorf("put %d: guest replied %q, want %q", chunk, got, want)
	}
	return putSize, nil
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// runThenProtectWith starts the guest unprotected on A (both agents with extra
// flags), waits for its service, then protects it while it runs, as a survivor's
// re-protection after a failover or an operator's `protect` of a running VM do.
// Pacing must hold for such a VM as for one protected from its start (the agents
// once paced only the latter). It returns the VM's lag bound.
func runThenProtectWith(ctx context.Context, t *testing.T, l *lab.Lab, vm string, agentArgs []string) time.Duration {
	t.Helper()
	for _, h := range []lab.Host{lab.HostA, lab.HostB} {
		if err := l.StartAgent(ctx, h, agentArgs...); err != nil {
			t.Fatal(err)
		}
	}
	runGuest(ctx, t, l, vm)
	if out, err := l.Run(ctx, "a", "protect", vm, "--backup", lab.HostB.Peer()); err != nil {
		t.Fatal(err)
	} else {
		t.Log(strings.TrimSpace(out))
	}
	st, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		t.Fatal(err)
	}
	return time.Duration(st.LagBoundMS) * time.Millisecond
}
