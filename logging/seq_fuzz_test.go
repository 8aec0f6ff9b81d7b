package logging

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"
)

// seqStart is the log offset streams start at in these targets (the rr header's size).
const seqStart = 12

// FuzzSenderReceiver drives a Sender and a Receiver over a MemLink with a log
// written and published in the steps ops gives, with frame and window sizes from
// ops too, and sometimes breaks the link in the middle. Whatever the steps: what
// the backup holds is always the primary's log from the start, never other bytes;
// no ack reaches the primary for bytes the backup does not hold; the primary never
// counts more sent than published nor more acked than sent; and on a healthy link
// the backup ends up holding, and the primary sees acked, all that was published.
func FuzzSenderReceiver(f *testing.F) {
	f.Add([]byte("a small rr log"), []byte{0, 0, 5, 9})
	f.Add(bytes.Repeat([]byte{7}, 5000), []byte{3, 1, 200, 255, 17, 0, 90, 120})
	f.Add(bytes.Repeat([]byte("xyz"), 3000), []byte{1, 2, 255, 255, 255, 255, 1, 1})
	f.Add([]byte("broken link"), []byte{200, 0, 2, 0xfe, 4})
	f.Fuzz(func(t *testing.T, data, ops []byte) {
		if len(ops) < 2 || len(data) == 0 {
			return
		}
		maxFrame := 1 + int(ops[0])*8          // 1..2041 bytes
		window := int64(1+int(ops[1])%64) * 64 // 64..4096 bytes in flight
		breakAt := -1
		if ops[0]&0x80 != 0 && len(ops) > 2 {
			breakAt = int(ops[2]) % (len(ops) - 2)
		}
		steps := ops[2:]

		src, sink := NewMemLog(seqStart), NewMemLog(seqStart)
		link := NewMemLink()
		snd := NewSender(link.A(), src, SenderConfig{StartOffset: seqStart, MaxFrame: maxFrame, MaxInFlight: window,
			HeartbeatInterval: 20 * time.Millisecond, PeerTimeout: 5 * time.Second})
		rcv := NewReceiver(link.B(), sink, ReceiverConfig{StartOffset: seqStart,
			HeartbeatInterval: 20 * time.Millisecond, PeerTimeout: 5 * time.Second})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		sdone := runAsync(func() error { return snd.Run(ctx) })
		rdone := runAsync(func() error { return rcv.Run(ctx) })

		// The backup's log is a prefix of the primary's, and acks never pass it.
		// While the link runs, the sender's stats are read before the sink: the
		// backup's log only grows, so every ack the sender had seen by then must be
		// within what the sink holds a moment later (read the other way round, a
		// goroutine descheduled between the two reads sees an ack for bytes appended
		// after its read of the sink: a fuzz run at idle priority did). The receiver's
		// count equals the sink only when nothing moves (quiet).
		check := func(when string, quiet bool) {
			t.Helper()
			st := snd.Stats()
			held, want := sink.Bytes(), src.Bytes()
			if len(held) > len(want) || !bytes.Equal(held, want[:len(held)]) {
				t.Fatalf("%s: the backup holds %d bytes that are not the primary's log (%d bytes)", when, len(held), len(want))
			}
			if st.Sent > st.Published || st.Acked > st.Sent || st.Acked > seqStart+int64(len(held)) {
				t.Fatalf("%s: sender published %d sent %d acked %d, backup holds to %d", when, st.Published, st.Sent, st.Acked, seqStart+len(held))
			}
			r := rcv.Stats()
			if r.Acked > r.Held || (quiet && r.Held != seqStart+int64(len(held))) {
				t.Fatalf("%s: receiver held %d acked %d, sink ends at %d", when, r.Held, r.Acked, seqStart+len(held))
			}
		}
		rest := data
		var lastAck int64 = seqStart
		for i, n := range steps {
			if i == breakAt {
				link.Disconnect()
			}
			k := min(int(n), len(rest))
			if err := src.Append(src.End(), rest[:k]); err != nil {
				t.Fatal(err)
			}
			rest = rest[k:]
			snd.Publish(src.End(), uint64(i))
			select {
			case a := <-snd.Acks():
				if a.Offset < lastAck || a.Offset > src.End() {
					t.Fatalf("ack %d after %d, published %d", a.Offset, lastAck, src.End())
				}
				lastAck = a.Offset
			default:
			}
			check("streaming", false)
		}
		if breakAt >= 0 {
			cancel()
			waitErr(t, sdone, 10*time.Second, "sender")
			waitErr(t, rdone, 10*time.Second, "receiver")
			check("after the link broke", true)
			return
		}
		end := src.End()
		waitFor(t, 20*time.Second, "all published log held and acked", func() bool {
			return rcv.Held() == end && snd.Stats().Acked == end
		})
		check("done", true)
		cancel()
		if err := waitErr(t, sdone, 10*time.Second, "sender"); err != nil {
			t.Fatalf("sender: %v", err)
		}
		if err := waitErr(t, rdone, 10*time.Second, "receiver"); err != nil && !errors.Is(err, ErrPeerClosed) {
			t.Fatalf("receiver: %v", err)
		}
	})
}

// cutLog is a backup's log that lets acks reach only its cut points: every multiple
// of cut bytes from the start (cut 0: every byte).
type cutLog struct {
	*MemLog
	cut int64
}

func (l cutLog) AckLimit() int64 {
	n := l.End() - seqStart
	if l.cut > 0 {
		n -= n % l.cut
	}
	return seqStart + n
}

// FuzzReceiver: whatever a primary (or an impostor past the handshake) sends, the
// backup's log holds only checksummed frames, in order, from the start offset on;
// every ack it sends is for bytes it holds, at a cut point its log allows
// (AckLimiter); and it stops with one of the errors its contract names.
func FuzzReceiver(f *testing.F) {
	f.Add(AppendFrame(AppendFrame(nil, seqStart, 0, []byte("first")), seqStart+5, 9, []byte("second")))
	f.Add(AppendFrame(nil, seqStart+1, 0, []byte("gap")))
	f.Add(AppendFrame(nil, seqStart-1, 0, []byte("stale")))
	f.Add(append(AppendFrame(nil, seqStart, 0, []byte("ok")), appendHeartbeat(nil, time.Unix(5, 0))...))
	f.Add(append(appendHeartbeat(nil, time.Unix(5, 0)), appendReason(nil, MsgBye, "done")...))
	bad := AppendFrame(nil, seqStart, 0, []byte("crc"))
	bad[len(bad)-1] ^= 1
	f.Add(bad)
	f.Add(appendAck(nil, wireAck{Offset: 12}))
	f.Fuzz(func(t *testing.T, stream []byte) {
		a, b := net.Pipe()
		cut := int64(0)
		if len(stream) > 0 {
			cut = int64(stream[len(stream)-1] % 8)
		}
		sink := cutLog{NewMemLog(seqStart), cut}
		rcv := NewReceiver(b, sink, ReceiverConfig{StartOffset: seqStart, HeartbeatInterval: 20 * time.Millisecond, PeerTimeout: 2 * time.Second})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := runAsync(func() error { return rcv.Run(ctx) })
		// The fake primary reads the backup's messages: acks, and a final Bye/Error.
		acks := runAsync(func() error {
			for {
				m, err := ReadMessage(a)
				if err != nil {
					return nil
				}
				if m.Type != MsgAck {
					continue
				}
				w, err := decodeAck(m.Payload)
				if err != nil {
					return err
				}
				if end := sink.End(); int64(w.Offset) > end || w.Offset < seqStart {
					return errors.New("ack for bytes the backup does not hold")
				}
				if cut > 0 && (int64(w.Offset)-seqStart)%cut != 0 {
					return fmt.Errorf("ack for %d, not a cut point (every %d bytes)", w.Offset, cut)
				}
			}
		})
		_ = a.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = a.Write(stream)
		a.Close()
		err := waitErr(t, done, 10*time.Second, "receiver")
		if aerr := waitErr(t, acks, 10*time.Second, "ack reader"); aerr != nil {
			t.Fatal(aerr)
		}
		// The stream was cut after its last byte: Run must have stopped with a reason.
		// ErrPeerSilent: a receiver starved of CPU past its PeerTimeout (a fuzz run
		// at idle priority was, for 4 s) finds its peer silent before it reads the
		// end of the stream; what it holds is checked below all the same.
		documented := []error{ErrProtocol, ErrChecksum, ErrGap, ErrStale, ErrPeerClosed, ErrPeerRefused, ErrPeerSilent, io.EOF, io.ErrUnexpectedEOF, io.ErrClosedPipe}
		known := false
		for _, d := range documented {
			known = known || errors.Is(err, d)
		}
		if !known {
			t.Fatalf("receiver stopped with %v", err)
		}
		// Replay the stream: the sink holds exactly the valid frames up to the first refusal.
		want := []byte{}
		r := bytes.NewReader(stream)
		for off := int64(seqStart); ; {
			m, err := ReadMessage(r)
			if err == nil && m.Type == MsgHeartbeat {
				continue
			}
			if err != nil || m.Type != MsgFrame {
				break
			}
			fr, err := DecodeFrame(m.Payload)
			if err != nil || fr.Offset != off || fr.Verify() != nil {
				break
			}
			want = append(want, fr.Data...)
			off = fr.End()
		}
		// A receiver that found its peer silent stopped before the end: it holds a
		// prefix of those frames, never other bytes.
		got := sink.Bytes()
		if errors.Is(err, ErrPeerSilent) && len(got) <= len(want) {
			want = want[:len(got)]
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("backup holds %q, want %q (stopped with %v)", got, want, err)
		}
		if rcv.Held() != seqStart+int64(len(got)) {
			t.Fatalf("Held %d, sink ends at %d", rcv.Held(), seqStart+len(got))
		}
	})
}

// FuzzSender: whatever a backup (or an impostor) answers, the primary never counts
// an ack beyond what it sent (an ack for unsent bytes ends the channel with
// ErrAckBeyondSent), acks it hands on never go backwards, and it stops with a
// documented error.
func FuzzSender(f *testing.F) {
	f.Add(appendAck(appendAck(nil, wireAck{Offset: 20}), wireAck{Offset: 15}), uint16(100))
	f.Add(appendAck(nil, wireAck{Offset: 1 << 40}), uint16(10))
	f.Add(appendAck(nil, wireAck{Offset: 30, HasStall: true, Stall: ReplayStall{For: 5, Beyond: 3, Episodes: 1}}), uint16(40))
	f.Add(append(appendHeartbeat(nil, time.Unix(1, 0)), appendReason(nil, MsgError, "no")...), uint16(0))
	f.Add(AppendFrame(nil, 12, 0, []byte("frames go the other way")), uint16(9))
	f.Fuzz(func(t *testing.T, stream []byte, published uint16) {
		a, b := net.Pipe()
		src := NewMemLog(seqStart)
		_ = src.Append(seqStart, make([]byte, published))
		snd := NewSender(a, src, SenderConfig{StartOffset: seqStart, MaxFrame: 64, HeartbeatInterval: 20 * time.Millisecond, PeerTimeout: 2 * time.Second})
		snd.Publish(src.End(), 1)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := runAsync(func() error { return snd.Run(ctx) })
		// The fake backup drains frames while it answers.
		drained := runAsync(func() error { _, _ = io.Copy(io.Discard, b); return nil })
		_ = b.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = b.Write(stream)
		b.Close()
		var last int64 = seqStart
		for stopped := false; !stopped; {
			select {
			case a := <-snd.Acks():
				if a.Offset < last {
					t.Fatalf("ack went back from %d to %d", last, a.Offset)
				}
				last = a.Offset
			case err := <-done:
				stopped = true
				documented := []error{ErrProtocol, ErrAckBeyondSent, ErrPeerClosed, ErrPeerRefused, io.EOF, io.ErrUnexpectedEOF, io.ErrClosedPipe}
				known := false
				for _, d := range documented {
					known = known || errors.Is(err, d)
				}
				if !known {
					t.Fatalf("sender stopped with %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("sender did not stop")
			}
		}
		waitErr(t, drained, 5*time.Second, "drain")
		if st := snd.Stats(); st.Acked > st.Sent || st.Sent > st.Published || st.Published != src.End() {
			t.Fatalf("sender stats %+v (published %d)", st, src.End())
		}
	})
}
