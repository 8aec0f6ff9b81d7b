package logging

import (
	"sync"
	"testing"
	"time"
)

// cutSink is a Sink whose ack limit is the last multiple of step (past base) it
// holds: a stand-in for the backup's log sink, whose safe cut points lie inside
// frames, not at their ends.
type cutSink struct {
	*MemLog
	base, step int64

	mu     sync.Mutex
	limits map[int64]bool // every limit it ever reported
}

func (s *cutSink) AckLimit() int64 {
	end := s.End()
	lim := s.base + (end-s.base)/s.step*s.step
	s.mu.Lock()
	s.limits[lim] = true
	s.mu.Unlock()
	return lim
}

func (s *cutSink) wasLimit(off int64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.limits[off]
}

// An AckLimiter sink is acked only up to its limits, never up to the end of a frame
// that lies beyond them: the backup's acks are go-live cut points by construction.
func TestReceiverAcksOnlyUpToSinkLimit(t *testing.T) {
	const base, step, frame = 12, 1000, 700 // frames end mostly between limits
	src := NewMemLog(base)
	sink := &cutSink{MemLog: NewMemLog(base), base: base, step: step, limits: map[int64]bool{base: true}}
	p := runMemPair(t, src, SenderConfig{StartOffset: base, MaxFrame: frame}, sink, ReceiverConfig{StartOffset: base, HeartbeatInterval: 5 * time.Millisecond})
	defer p.stop(t)
	snd, rcv := p.snd, p.rcv

	data := make([]byte, 20*step+345)
	for i := range data {
		data[i] = byte(i)
	}
	total := base + int64(len(data))
	wantLast := base + (total-base)/step*step
	// Publish in uneven steps, as the primary's tail does.
	go func() {
		for off := 0; off < len(data); off += 333 {
			end := min(off+333, len(data))
			_ = src.Append(int64(base+off), data[off:end])
			snd.Publish(int64(base+end), uint64(end))
			time.Sleep(time.Millisecond)
		}
	}()
	acks := 0
	deadline := time.After(10 * time.Second)
	for {
		select {
		case a := <-snd.Acks():
			acks++
			if !sink.wasLimit(a.Offset) {
				t.Fatalf("ack %d is not a limit the sink reported (step %d from %d)", a.Offset, step, base)
			}
			if a.Offset > sink.End() {
				t.Fatalf("ack %d beyond what the sink holds (%d)", a.Offset, sink.End())
			}
			if a.Offset == wantLast {
				if h := rcv.Held(); h < total {
					continue // the tail is still arriving; acks must stay at wantLast
				}
				if st := rcv.Stats(); st.Acked != wantLast {
					t.Fatalf("receiver acked %d, want %d", st.Acked, wantLast)
				}
				t.Logf("%d acks, all at sink limits; held %d, acked %d", acks, rcv.Held(), wantLast)
				return
			}
		case <-deadline:
			t.Fatalf("no ack reached %d within 10s (acked %d, held %d)", wantLast, rcv.Stats().Acked, rcv.Held())
		}
	}
}

// With the test-only ack delay, the delayed acks respect the limit too.
func TestDelayedAcksRespectSinkLimit(t *testing.T) {
	const base, step = 12, 1000
	src := NewMemLog(base)
	sink := &cutSink{MemLog: NewMemLog(base), base: base, step: step, limits: map[int64]bool{base: true}}
	p := runMemPair(t, src, SenderConfig{StartOffset: base, MaxFrame: 700}, sink, ReceiverConfig{StartOffset: base, AckDelay: 20 * time.Millisecond})
	defer p.stop(t)
	snd := p.snd
	data := make([]byte, 5*step+10)
	_ = src.Append(base, data)
	snd.Publish(base+int64(len(data)), 1)
	want := int64(base + 5*step)
	waitFor(t, 5*time.Second, "acked the last limit", func() bool { return snd.Stats().Acked == want })
	time.Sleep(100 * time.Millisecond)
	if got := snd.Stats().Acked; got != want {
		t.Fatalf("acked %d, want %d (the sink's limit)", got, want)
	}
}
