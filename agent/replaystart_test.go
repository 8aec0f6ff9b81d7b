package agent

import (
	"context"
	"testing"
	"time"
)

// TestAwaitReplayStart: going live waits for a replaying QEMU whose start has not
// ended (cancelling it would kill the VM's only copy), returns at once when it has
// ended or never began, and waits no longer than the grace or the go-live's context.
func TestAwaitReplayStart(t *testing.T) {
	old := replayStartGrace
	t.Cleanup(func() { replayStartGrace = old })
	replayStartGrace = 5 * time.Second

	t.Run("no start yet", func(t *testing.T) {
		b := &backup{log: testLogger(t)}
		if took := timed(func() { b.awaitReplayStart(context.Background()) }); took > time.Second {
			t.Fatalf("waited %s with no start to wait for", took)
		}
	})
	t.Run("start ended", func(t *testing.T) {
		done := make(chan struct{})
		close(done)
		b := &backup{log: testLogger(t), qemuStartDone: done}
		if took := timed(func() { b.awaitReplayStart(context.Background()) }); took > time.Second {
			t.Fatalf("waited %s for a start that had ended", took)
		}
	})
	t.Run("start ends while waiting", func(t *testing.T) {
		done := make(chan struct{})
		b := &backup{log: testLogger(t), qemuStartDone: done}
		const after = 300 * time.Millisecond
		time.AfterFunc(after, func() { close(done) })
		took := timed(func() { b.awaitReplayStart(context.Background()) })
		if took < after || took > replayStartGrace/2 {
			t.Fatalf("returned after %s; the start ended after %s (grace %s)", took, after, replayStartGrace)
		}
	})
	t.Run("grace runs out", func(t *testing.T) {
		replayStartGrace = 200 * time.Millisecond
		t.Cleanup(func() { replayStartGrace = 5 * time.Second })
		b := &backup{log: testLogger(t), qemuStartDone: make(chan struct{})}
		took := timed(func() { b.awaitReplayStart(context.Background()) })
		if took < replayStartGrace || took > 10*replayStartGrace {
			t.Fatalf("returned after %s with a grace of %s", took, replayStartGrace)
		}
	})
	t.Run("go-live cancelled", func(t *testing.T) {
		b := &backup{log: testLogger(t), qemuStartDone: make(chan struct{})}
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		if took := timed(func() { b.awaitReplayStart(ctx) }); took > replayStartGrace/2 {
			t.Fatalf("returned after %s, long after its context ended", took)
		}
	})
}

func timed(f func()) time.Duration {
	t0 := time.Now()
	f()
	return time.Since(t0)
}
