package agent

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/replay"
)

// notifyRecorder stands in for the replay's feed.
type notifyRecorder struct {
	mu    sync.Mutex
	limit int64
}

func (n *notifyRecorder) Notify(limit int64) {
	n.mu.Lock()
	n.limit = max(n.limit, limit)
	n.mu.Unlock()
}

// The backup acks only safe cut points, so every offset the primary sees acked (and
// releases output up to) is at or below the cut a go-live would use: stamp <= ack <=
// cut. A real rr log is streamed in frames of random sizes, which end mid-event.
func TestBackupAcksOnlySafeCutPoints(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "replay", "testdata", "seed.rr"))
	if err != nil {
		t.Fatal(err)
	}
	// The oracle: every safe cut point of the log, and how many event boundaries
	// are not safe (acks at those would be ahead of a go-live's cut).
	safe := map[int64]bool{replay.HeaderSize: true}
	unsafe := 0
	whole := replay.NewCutter(replay.HeaderSize, 0)
	whole.OnEvent(func(ev replay.Event) {
		if safeCut(ev.Kind) {
			safe[ev.End()] = true
		} else {
			unsafe++
		}
	})
	if _, err := whole.Write(data[replay.HeaderSize:]); err != nil {
		t.Fatal(err)
	}
	if unsafe == 0 {
		t.Fatal("the log has no event boundary that is not a safe cut point: the test proves nothing")
	}
	lastSafe := whole.Boundary()
	if !safe[lastSafe] {
		t.Fatalf("the log ends at %d, not a safe cut point", lastSafe)
	}
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 1))
		src := logging.NewMemLog(replay.HeaderSize)
		f, err := os.Create(filepath.Join(t.TempDir(), "log.rr"))
		if err != nil {
			t.Fatal(err)
		}
		feed := new(notifyRecorder)
		sink := newLogSink(f, feed, replay.HeaderSize, 0)
		link := logging.NewMemLink()
		snd := logging.NewSender(link.A(), src, logging.SenderConfig{StartOffset: replay.HeaderSize, MaxFrame: 1 + rng.IntN(300)})
		rcv := logging.NewReceiver(link.B(), sink, logging.ReceiverConfig{StartOffset: replay.HeaderSize, HeartbeatInterval: 5 * time.Millisecond})
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); _ = snd.Run(ctx) }()
		go func() { defer wg.Done(); _ = rcv.Run(ctx) }()

		// The primary publishes event boundaries (not necessarily safe ones).
		cut := replay.NewCutter(replay.HeaderSize, 0)
		for off := replay.HeaderSize; off < len(data); {
			end := min(len(data), off+1+rng.IntN(200))
			if err := src.Append(int64(off), data[off:end]); err != nil {
				t.Fatal(err)
			}
			if _, err := cut.Write(data[off:end]); err != nil {
				t.Fatal(err)
			}
			snd.Publish(cut.Boundary(), cut.Icount())
			off = end
		}
		deadline := time.After(10 * time.Second)
		for done := false; !done; {
			select {
			case a := <-snd.Acks():
				if !safe[a.Offset] {
					t.Fatalf("seed %d: ack %d is not a safe cut point of the log", seed, a.Offset)
				}
				if c := sink.points.last(); a.Offset > c {
					t.Fatalf("seed %d: ack %d beyond the go-live cut %d", seed, a.Offset, c)
				}
				done = a.Offset == lastSafe
			case <-deadline:
				t.Fatalf("seed %d: acks did not reach the last safe cut point (acked %d, held %d)", seed, snd.Stats().Acked, rcv.Held())
			}
		}
		cancel()
		wg.Wait()
		f.Close()
		if feed.limit != lastSafe {
			t.Fatalf("seed %d: feed limit %d, want the last safe cut %d", seed, feed.limit, lastSafe)
		}
	}
}
