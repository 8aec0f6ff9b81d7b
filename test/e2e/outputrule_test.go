package e2e

import (
	"context"
	"fmt"
	"sort"

	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

// TestOutputRule: a client on host C talks TCP to the protected guest through the
// bridge. The agents run with --check-invariant, so every frame released is checked
// against the backup's ack; the test fails on any breach. Then the backup delays its
// acks by D: the client's round trip must grow by at least D, and fall back after.
func TestOutputRule(t *testing.T) {
	l := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const vm = "guest2"
	bound := protectGuest(ctx, t, l, vm)
	checkDataPath(ctx, t, lab.HostA, vm)
	checkDataPath(ctx, t, lab.HostB, vm)
	waitCaughtUp(ctx, t, vm, bound, 2*time.Minute)

	c, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seq := 0
	var lastCount int
	round := func(n int) []float64 {
		var rtts []float64
		for i := 0; i < n; i++ {
			seq++
			payload := fmt.Sprintf("p%d", seq)
			t0 := time.Now()
			resp, err := c.Do(fmt.Sprintf("seq %d %s", seq, payload), 30*time.Second)
			if err != nil {
				t.Fatalf("request %d: %v", seq, err)
			}
			rtts = append(rtts, float64(time.Since(t0))/float64(time.Millisecond))
			var gotSeq, count int
			var gotPayload string
			if _, err := fmt.Sscanf(resp, "ok %d %d %s", &gotSeq, &count, &gotPayload); err != nil || gotSeq != seq || gotPayload != payload {
				t.Fatalf("request %d: bad response %q", seq, resp)
			}
			if count <= lastCount {
				t.Fatalf("request %d: guest request count went from %d to %d", seq, lastCount, count)
			}
			lastCount = count
		}
		return rtts
	}
	base := median(round(50))
	// New connections too: each one's handshake is output held by the rule.
	for i := 0; i < 5; i++ {
		c2, err := lab.NewClient(ctx, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := c2.Do("ping", 10*time.Second); err != nil || resp != "pong" {
			t.Fatalf("new connection %d: %q %v", i, resp, err)
		}
		c2.Close()
	}

	const delay = 300 * time.Millisecond
	setAckDelay(ctx, t, vm, delay)
	delayed := median(round(10))
	setAckDelay(ctx, t, vm, 0)
	time.Sleep(time.Second)
	after := median(round(30))
	t.Logf("round trip p50: %.1f ms, with acks delayed %v: %.1f ms, after: %.1f ms", base, delay, delayed, after)
	if delayed < base+float64(delay/time.Millisecond) {
		t.Fatalf("acks delayed by %v but the round trip only grew from %.1f to %.1f ms: output was not held", delay, base, delayed)
	}
	if after > base+float64(delay/time.Millisecond)/2 {
		t.Fatalf("round trip did not fall back after the delay was removed: %.1f ms (base %.1f)", after, base)
	}

	p, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		t.Fatal(err)
	}
	b, err := lab.Status(ctx, lab.HostB, vm)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("primary: released %d frames, added delay avg %.2f ms max %.2f ms, held %d", p.Released, p.AddedDelayMS, p.MaxDelayMS, p.HeldFrames)
	if p.InvariantFails != 0 {
		t.Fatalf("%d frames would have been released before the backup acked their log", p.InvariantFails)
	}
	if p.Released < 100 {
		t.Fatalf("only %d frames released", p.Released)
	}
	if p.NetErrors != 0 {
		t.Fatalf("%d network errors on the primary", p.NetErrors)
	}
	if b.EmittedFrames != 0 {
		t.Fatalf("the replaying QEMU emitted %d frames", b.EmittedFrames)
	}
	if p.State != "protected" || b.State != "replaying" {
		t.Fatalf("states: primary %s, backup %s", p.State, b.State)
	}
}

func setAckDelay(ctx context.Context, t *testing.T, vm string, d time.Duration) {
	t.Helper()
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := control.Call(cctx, lab.HostB.Socket, control.Request{Op: control.OpTestAckDelay, VM: vm, AckDelayMS: int(d / time.Millisecond)}); err != nil {
		t.Fatal(err)
	}
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
