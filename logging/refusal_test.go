package logging

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"
)

// fakePeer is a scripted far end: it records every message it reads and
// writes raw bytes.
type fakePeer struct {
	t    *testing.T
	conn net.Conn
	msgs chan Message // closed when the conn fails
}

func newFakePeer(t *testing.T, conn net.Conn) *fakePeer {
	p := &fakePeer{t: t, conn: conn, msgs: make(chan Message, 1<<16)}
	go func() {
		defer close(p.msgs)
		for {
			m, err := ReadMessage(conn)
			if err != nil {
				return
			}
			p.msgs <- m
		}
	}()
	t.Cleanup(func() { conn.Close() })
	return p
}

func (p *fakePeer) write(b []byte) {
	p.t.Helper()
	p.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := p.conn.Write(b); err != nil {
		p.t.Fatalf("fake peer write: %v", err)
	}
}

// drain returns every message until the conn closes.
func (p *fakePeer) drain() []Message {
	var out []Message
	for m := range p.msgs {
		out = append(out, m)
	}
	return out
}

func lastOfType(ms []Message, t MsgType) (Message, bool) {
	for i := len(ms) - 1; i >= 0; i-- {
		if ms[i].Type == t {
			return ms[i], true
		}
	}
	return Message{}, false
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = seed + byte(i*7)
	}
	return b
}

// TestReceiverRefusals feeds a real Receiver bad input from a fake primary.
// Each case is refused with its sentinel, the primary is told with an Error
// message, and the sink holds exactly the good frames before it.
func TestReceiverRefusals(t *testing.T) {
	const start = 12
	good1, good2 := pattern(100, 1), pattern(50, 9)
	frame := func(off int64, data []byte) []byte { return AppendFrame(nil, off, 0, data) }
	corrupt := frame(112, good2)
	corrupt[len(corrupt)-7] ^= 0x40 // flip a data bit

	badLen := frame(112, good2)
	binary.BigEndian.PutUint32(badLen[HeaderSize+8:], 49) // length field disagrees

	cases := []struct {
		name   string
		bad    []byte
		want   error
		held   int64
		prefix []byte // good frames written before bad
	}{
		{"checksum", corrupt, ErrChecksum, 112, frame(12, good1)},
		{"gap", frame(122, good2), ErrGap, 112, frame(12, good1)},
		{"stale", frame(112, good2), ErrStale, 162, append(frame(12, good1), frame(112, good2)...)},
		{"replay-first", frame(12, good1), ErrStale, 112, frame(12, good1)},
		{"oversized", []byte{byte(MsgFrame), 0xff, 0xff, 0xff, 0xff}, ErrTooLarge, 112, frame(12, good1)},
		{"oversized-ack-type", []byte{byte(MsgHeartbeat), 0, 0, 0, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9}, ErrProtocol, 12, nil},
		{"garbage", []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), ErrProtocol, 112, frame(12, good1)},
		{"unknown-type", []byte{0, 0, 0, 0, 0}, ErrProtocol, 12, nil},
		{"length-field", badLen, ErrProtocol, 112, frame(12, good1)},
		{"empty-frame", AppendMessage(nil, MsgFrame, make([]byte, FrameHeaderSize)), ErrProtocol, 12, nil},
		{"ack-from-primary", appendAck(nil, wireAck{Offset: 12}), ErrProtocol, 112, frame(12, good1)},
		{"hello-in-stream", AppendMessage(nil, MsgHello, []byte("{}")), ErrProtocol, 12, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			peer := newFakePeer(t, a)
			sink := NewMemLog(start)
			rcv := NewReceiver(b, sink, ReceiverConfig{StartOffset: start, PeerTimeout: 5 * time.Second, Logger: testLogger(t)})
			done := runAsync(func() error { return rcv.Run(context.Background()) })
			if tc.prefix != nil {
				peer.write(tc.prefix)
			}
			// The peer may hang up mid-write on refusal; that is fine.
			a.SetWriteDeadline(time.Now().Add(5 * time.Second))
			a.Write(tc.bad)
			err := waitErr(t, done, 10*time.Second, "receiver")
			if !errors.Is(err, tc.want) {
				t.Fatalf("Run: %v, want %v", err, tc.want)
			}
			t.Logf("refused: %v", err)
			if got := rcv.Held(); got != tc.held {
				t.Fatalf("held %d, want %d", got, tc.held)
			}
			if got := sink.End(); got != tc.held {
				t.Fatalf("sink ends at %d, want %d", got, tc.held)
			}
			msgs := peer.drain()
			m, ok := lastOfType(msgs, MsgError)
			if !ok {
				t.Fatalf("primary got no Error message; got %d messages", len(msgs))
			}
			t.Logf("primary was told: %s", m.Payload)
			if st := rcv.Stats(); st.Rejected == (Rejections{}) {
				t.Fatalf("no rejection counted: %+v", st)
			}
			// No ack may exceed what the sink holds.
			for _, m := range msgs {
				if m.Type == MsgAck {
					w, err := decodeAck(m.Payload)
					if err != nil || int64(w.Offset) > tc.held {
						t.Fatalf("bad ack %+v (%v), held %d", w, err, tc.held)
					}
				}
			}
		})
	}
}

// TestSenderRefusesLyingAck: an ack beyond anything sent ends Run with
// ErrAckBeyondSent and is never counted as acked; regressions are ignored.
func TestSenderRefusesLyingAck(t *testing.T) {
	a, b := net.Pipe()
	peer := newFakePeer(t, b)
	src := NewMemLog(12)
	src.Append(12, pattern(1000, 3))
	snd := NewSender(a, src, SenderConfig{StartOffset: 12, PeerTimeout: 5 * time.Second, Logger: testLogger(t)})
	done := runAsync(func() error { return snd.Run(context.Background()) })
	snd.Publish(1012, 77)

	// Wait for the frame, ack part of it, then regress, then lie.
	for m := range peer.msgs {
		if m.Type == MsgFrame {
			f, err := DecodeFrame(m.Payload)
			if err != nil || f.Verify() != nil || f.Offset != 12 || f.End() != 1012 || f.Icount != 77 {
				t.Fatalf("frame %+v err %v", f, err)
			}
			break
		}
	}
	peer.write(appendAck(nil, wireAck{Offset: 500}))
	peer.write(appendAck(nil, wireAck{Offset: 100}))
	waitFor(t, 5*time.Second, "regression counted", func() bool { return snd.Stats().AckRegressions == 1 })
	if got := snd.Stats().Acked; got != 500 {
		t.Fatalf("acked %d after regression, want 500", got)
	}
	peer.write(appendAck(nil, wireAck{Offset: 1013}))
	err := waitErr(t, done, 5*time.Second, "sender")
	if !errors.Is(err, ErrAckBeyondSent) {
		t.Fatalf("Run: %v, want ErrAckBeyondSent", err)
	}
	if got := snd.Stats().Acked; got != 500 {
		t.Fatalf("lying ack was counted: acked %d", got)
	}
	if _, ok := lastOfType(peer.drain(), MsgError); !ok {
		t.Fatal("backup was not told why")
	}
}

// TestSenderRefusesBadInput: garbage and wrong message types from the
// backup are protocol errors.
func TestSenderRefusesBadInput(t *testing.T) {
	for name, bad := range map[string][]byte{
		"frame-from-backup": AppendFrame(nil, 12, 0, []byte("x")),
		"garbage":           []byte("\xff\xfe garbage"),
		"oversized":         {byte(MsgAck), 0x7f, 0xff, 0xff, 0xff},
		"short-ack":         AppendMessage(nil, MsgAck, make([]byte, 8)),
	} {
		t.Run(name, func(t *testing.T) {
			a, b := net.Pipe()
			peer := newFakePeer(t, b)
			snd := NewSender(a, NewMemLog(12), SenderConfig{StartOffset: 12, PeerTimeout: 5 * time.Second, Logger: testLogger(t)})
			done := runAsync(func() error { return snd.Run(context.Background()) })
			b.SetWriteDeadline(time.Now().Add(5 * time.Second))
			b.Write(bad)
			if err := waitErr(t, done, 5*time.Second, "sender"); !errors.Is(err, ErrProtocol) {
				t.Fatalf("Run: %v, want ErrProtocol", err)
			}
			peer.drain()
		})
	}
}
