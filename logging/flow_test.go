package logging

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// zeroSource claims to hold any amount of data (zeros).
type zeroSource struct{}

func (zeroSource) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	return len(p), nil
}

// publish100MB publishes 100 MB in 4 KiB steps and returns the slowest call.
func publish100MB(s *Sender) (slowest, total time.Duration) {
	t0 := time.Now()
	for b := int64(12 + 4096); b <= 12+100<<20; b += 4096 {
		c0 := time.Now()
		s.Publish(b, uint64(b))
		slowest = max(slowest, time.Since(c0))
	}
	return slowest, time.Since(t0)
}

// TestMaxInFlight: a backup that reads but never acks. Publishing 100 MB
// never blocks; the sender stops at exactly MaxInFlight and reports Behind.
func TestMaxInFlight(t *testing.T) {
	const window = 1 << 20
	a, b := net.Pipe()
	peer := newFakePeer(t, b)
	snd := NewSender(a, zeroSource{}, SenderConfig{
		StartOffset: 12, MaxInFlight: window, PeerTimeout: 2 * time.Second, Logger: testLogger(t),
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAsync(func() error { return snd.Run(ctx) })

	// Keep the sender from declaring us silent, without acking.
	hbCtx, hbStop := context.WithCancel(context.Background())
	hbDone := runAsync(func() error {
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-hbCtx.Done():
				return nil
			case <-tk.C:
				b.SetWriteDeadline(time.Now().Add(time.Second))
				if _, err := b.Write(appendHeartbeat(nil, time.Now())); err != nil {
					return err
				}
			}
		}
	})

	slowest, total := publish100MB(snd)
	t.Logf("100 MB published in %s, slowest Publish %s", total, slowest)
	if slowest > time.Second { // generous: a blocked Publish would hang, not be slow
		t.Fatalf("a Publish call took %s", slowest)
	}
	waitFor(t, 10*time.Second, "window full", func() bool {
		st := snd.Stats()
		return st.Sent == 12+window && st.Behind
	})
	// Still full, never beyond, and the frames on the wire add up to it.
	st := snd.Stats()
	if st.Sent != 12+window || !st.Behind || st.Published != 12+100<<20 || st.BytesSent != window {
		t.Fatalf("stats %+v", st)
	}
	var bytes int64
	waitFor(t, 5*time.Second, "frames read", func() bool {
		for {
			select {
			case m := <-peer.msgs:
				if m.Type == MsgFrame {
					f, err := DecodeFrame(m.Payload)
					if err != nil {
						t.Fatal(err)
					}
					if f.Offset != 12+bytes {
						t.Fatalf("frame at %d, want %d", f.Offset, 12+bytes)
					}
					bytes += int64(len(f.Data))
				}
				continue
			default:
			}
			return bytes == window
		}
	})

	// An ack opens the window again by exactly the acked amount.
	hbStop()
	if err := <-hbDone; err != nil {
		t.Fatalf("heartbeats: %v", err)
	}
	b.Write(appendAck(nil, wireAck{Offset: 12 + window/2}))
	waitFor(t, 5*time.Second, "window reopened", func() bool { return snd.Stats().Sent == 12+window+window/2 })
	if !snd.Stats().Behind {
		t.Fatal("not Behind with 99 MB unsent")
	}
	cancel()
	if err := waitErr(t, done, 5*time.Second, "sender"); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// TestPublishNeverBlocksOnStuckPeer: a backup that reads nothing at all
// (the sender's write is stuck). Publish still returns at once, and Run
// gives up with ErrPeerSilent after PeerTimeout.
func TestPublishNeverBlocksOnStuckPeer(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	snd := NewSender(a, zeroSource{}, SenderConfig{StartOffset: 12, PeerTimeout: 300 * time.Millisecond, Logger: testLogger(t)})
	t0 := time.Now()
	done := runAsync(func() error { return snd.Run(context.Background()) })
	slowest, _ := publish100MB(snd)
	if slowest > time.Second { // generous: a blocked Publish would hang, not be slow
		t.Fatalf("a Publish call took %s", slowest)
	}
	err := waitErr(t, done, 10*time.Second, "sender")
	if !errors.Is(err, ErrPeerSilent) {
		t.Fatalf("Run: %v, want ErrPeerSilent", err)
	}
	if e := time.Since(t0); e < 300*time.Millisecond {
		t.Fatalf("gave up after %s, before the timeout", e)
	}
}

// TestPeerSilent: each side declares the other silent after PeerTimeout,
// not before.
func TestPeerSilent(t *testing.T) {
	const timeout = 300 * time.Millisecond
	t.Run("sender", func(t *testing.T) {
		a, b := net.Pipe()
		newFakePeer(t, b) // reads, never writes
		snd := NewSender(a, NewMemLog(12), SenderConfig{StartOffset: 12, PeerTimeout: timeout, Logger: testLogger(t)})
		t0 := time.Now()
		err := waitErr(t, runAsync(func() error { return snd.Run(context.Background()) }), 10*time.Second, "sender")
		if !errors.Is(err, ErrPeerSilent) {
			t.Fatalf("Run: %v, want ErrPeerSilent", err)
		}
		if e := time.Since(t0); e < timeout {
			t.Fatalf("silent after %s, before the %s timeout", e, timeout)
		}
		if snd.Stats().Heartbeats == 0 {
			t.Fatal("no heartbeats sent while idle")
		}
	})
	t.Run("receiver-partition", func(t *testing.T) {
		// Real sender and receiver; the primary's packets are lost.
		t0 := time.Now()
		p := runMemPair(t, NewMemLog(12), SenderConfig{StartOffset: 12, PeerTimeout: 5 * time.Second},
			NewMemLog(12), ReceiverConfig{StartOffset: 12, PeerTimeout: timeout})
		l, snd, rcv, sdone, rdone := p.link, p.snd, p.rcv, p.sdone, p.rdone
		waitFor(t, 5*time.Second, "first ack", func() bool { return !snd.Stats().LastAckAt.IsZero() })
		waitFor(t, 5*time.Second, "a heartbeat at the backup", func() bool { return rcv.Stats().LastPeerMsgAt.After(t0) })
		l.Drop(SideA, true)
		err := waitErr(t, rdone, 10*time.Second, "receiver")
		if !errors.Is(err, ErrPeerSilent) {
			t.Fatalf("receiver Run: %v, want ErrPeerSilent", err)
		}
		// Measured from the last message the backup actually got.
		if e := time.Since(rcv.Stats().LastPeerMsgAt); e < timeout {
			t.Fatalf("silent %s after the last message, before the %s timeout", e, timeout)
		}
		// The receiver told the primary why before hanging up.
		if err := waitErr(t, sdone, 10*time.Second, "sender"); !errors.Is(err, ErrPeerRefused) {
			t.Fatalf("sender Run: %v, want ErrPeerRefused", err)
		}
	})
	t.Run("disconnect", func(t *testing.T) {
		p := runEmptyPair(t, 12, ReceiverConfig{})
		l, snd, sdone, rdone := p.link, p.snd, p.sdone, p.rdone
		waitFor(t, 5*time.Second, "first ack", func() bool { return !snd.Stats().LastAckAt.IsZero() })
		l.Disconnect()
		for _, ch := range []<-chan error{sdone, rdone} {
			if err := waitErr(t, ch, 5*time.Second, "Run"); err == nil {
				t.Fatal("Run returned nil after a disconnect")
			}
		}
	})
}

// TestAckDelay: with AckDelay, no ack covers a frame earlier than AckDelay
// after it was sent, while periodic acks keep flowing with the old offset.
func TestAckDelay(t *testing.T) {
	const delay = 200 * time.Millisecond
	a, b := net.Pipe()
	peer := newFakePeer(t, a)
	rcv := NewReceiver(b, NewMemLog(12), ReceiverConfig{
		StartOffset: 12, HeartbeatInterval: 20 * time.Millisecond, PeerTimeout: 5 * time.Second,
		AckDelay: delay, Logger: testLogger(t),
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := runAsync(func() error { return rcv.Run(ctx) })

	sentAt := map[int64]time.Time{}
	off := int64(12)
	for i := range 3 {
		data := pattern(100+i, byte(i))
		sentAt[off+int64(len(data))] = time.Now() // before the write, so before receipt
		peer.write(AppendFrame(nil, off, 0, data))
		off += int64(len(data))
		time.Sleep(30 * time.Millisecond)
	}
	var oldAcks int
	deadline := time.After(10 * time.Second)
	for acked := int64(12); acked < off; {
		select {
		case m, ok := <-peer.msgs:
			if !ok {
				t.Fatalf("receiver hung up: %v", <-done)
			}
			if m.Type != MsgAck {
				continue
			}
			w, err := decodeAck(m.Payload)
			if err != nil {
				t.Fatal(err)
			}
			now, o := time.Now(), int64(w.Offset)
			if o == 12 {
				oldAcks++
			}
			for end, at := range sentAt {
				if o >= end && now.Sub(at) < delay {
					t.Fatalf("ack for %d arrived %s after its frame, before AckDelay %s", o, now.Sub(at), delay)
				}
			}
			acked = o
		case <-deadline:
			t.Fatal("acks never reached the end")
		}
	}
	if oldAcks == 0 {
		t.Fatal("no periodic acks while the delay held the new offset")
	}
	cancel()
	if err := waitErr(t, done, 5*time.Second, "receiver"); err != nil {
		t.Fatalf("Run: %v", err)
	}
}
