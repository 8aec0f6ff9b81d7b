package logging

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestAckStallEncoding: the stall report extends the Ack without moving the fields
// an older primary reads, round-trips, and any other Ack length is refused.
func TestAckStallEncoding(t *testing.T) {
	base := wireAck{Offset: 1 << 40, Replayed: 123456789, SentNano: 987654321}
	stalled := base
	stalled.HasStall = true
	stalled.Stall = ReplayStall{For: 12300 * time.Millisecond, AtIcount: 4242, Beyond: 5 << 20, Episodes: 3}

	plain := appendAck(nil, base)
	ext := appendAck(nil, stalled)
	if len(plain) != HeaderSize+AckSize || len(ext) != HeaderSize+AckStallSize {
		t.Fatalf("encoded lengths %d and %d, want %d and %d", len(plain), len(ext), HeaderSize+AckSize, HeaderSize+AckStallSize)
	}
	// The first AckSize payload bytes are exactly the plain ack's.
	if !bytes.Equal(ext[HeaderSize:HeaderSize+AckSize], plain[HeaderSize:]) {
		t.Fatal("the extended ack moved the plain ack's fields")
	}
	// The layout doc.go promises: four big-endian u64 after the plain fields.
	p := ext[HeaderSize:]
	for i, want := range []uint64{uint64(stalled.Stall.For), stalled.Stall.AtIcount, uint64(stalled.Stall.Beyond), stalled.Stall.Episodes} {
		if got := binary.BigEndian.Uint64(p[AckSize+8*i:]); got != want {
			t.Fatalf("stall field %d is %d on the wire, want %d", i, got, want)
		}
	}

	for _, tc := range []struct {
		name string
		in   wireAck
		want wireAck
	}{
		{"plain", base, base},
		{"stalled", stalled, stalled},
		{"not-stalled-with-history", wireAck{Offset: 12, HasStall: true, Stall: ReplayStall{Episodes: 7}}, wireAck{Offset: 12, HasStall: true, Stall: ReplayStall{Episodes: 7}}},
		// Negative values cannot be sent; they go out as 0 ("not stalled", nothing beyond).
		{"negative", wireAck{HasStall: true, Stall: ReplayStall{For: -time.Second, Beyond: -1}}, wireAck{HasStall: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ReadMessage(bytes.NewReader(appendAck(nil, tc.in)))
			if err != nil {
				t.Fatal(err)
			}
			got, err := decodeAck(m.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("decoded %+v, want %+v", got, tc.want)
			}
			if got.Stall.Stalled() != (tc.want.Stall.For > 0) {
				t.Fatalf("Stalled() = %v for %+v", got.Stall.Stalled(), got.Stall)
			}
		})
	}

	t.Run("saturates", func(t *testing.T) {
		p := append([]byte(nil), ext[HeaderSize:]...)
		binary.BigEndian.PutUint64(p[AckSize:], math.MaxUint64)
		binary.BigEndian.PutUint64(p[AckSize+16:], math.MaxUint64)
		got, err := decodeAck(p)
		if err != nil {
			t.Fatal(err)
		}
		if got.Stall.For != math.MaxInt64 || got.Stall.Beyond != math.MaxInt64 {
			t.Fatalf("out-of-range fields decoded as %+v, want saturated", got.Stall)
		}
	})

	for _, n := range []int{AckSize - 1, AckSize + 1, AckStallSize - 1, AckStallSize + 1} {
		raw := AppendMessage(nil, MsgAck, make([]byte, n))
		m, err := ReadMessage(bytes.NewReader(raw))
		if err == nil {
			_, err = decodeAck(m.Payload)
		}
		if !errors.Is(err, ErrProtocol) {
			t.Fatalf("ack payload of %d bytes: %v, want ErrProtocol", n, err)
		}
	}
}

// TestStallReports: with StallReports the backup's stall report reaches the
// primary at once when the replay stalls and when it recovers (the heartbeat is an
// hour, so only the prompt ack can deliver it). Without it the backup sends plain
// acks, which an older primary accepts, whatever SetStall says.
func TestStallReports(t *testing.T) {
	const start = 12
	path := filepath.Join(t.TempDir(), "rr.log")
	if err := os.WriteFile(path, make([]byte, start+100), 0o600); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	t.Run("reported", func(t *testing.T) {
		p := runMemPair(t, src, SenderConfig{StartOffset: start, HeartbeatInterval: time.Hour,
			PeerTimeout: 4 * time.Hour, Logger: testLogger(t).With("side", "primary")},
			NewMemLog(start), ReceiverConfig{StartOffset: start, StallReports: true,
				HeartbeatInterval: time.Hour, PeerTimeout: 4 * time.Hour, Logger: testLogger(t).With("side", "backup")})
		snd, rcv, sdone, rdone := p.snd, p.rcv, p.sdone, p.rdone
		snd.Publish(start+100, 300)

		timeout := time.After(20 * time.Second)
		next := func(what string, ok func(Ack) bool) Ack {
			t.Helper()
			for {
				select {
				case a := <-snd.Acks():
					if ok(a) {
						return a
					}
				case err := <-sdone:
					t.Fatalf("sender stopped: %v", err)
				case err := <-rdone:
					t.Fatalf("receiver stopped: %v", err)
				case <-timeout:
					t.Fatalf("never acked: %s; sender %+v", what, snd.Stats())
				}
			}
		}
		a := next("the frame", func(a Ack) bool { return a.Offset == start+100 })
		if !a.StallReported || a.Stall.Stalled() {
			t.Fatalf("first ack %+v: want a report saying not stalled", a)
		}
		stall := ReplayStall{For: 3 * time.Second, AtIcount: 150, Beyond: 50, Episodes: 1}
		rcv.SetStall(stall)
		a = next("the stall", func(a Ack) bool { return a.Stall.Stalled() })
		if a.Stall != stall || !a.StallReported {
			t.Fatalf("stall arrived as %+v, want %+v", a.Stall, stall)
		}
		if st := snd.Stats(); st.Stall != stall || !st.StallReported {
			t.Fatalf("sender stats %+v, want the stall", st)
		}
		rcv.SetStall(ReplayStall{Episodes: 1})
		a = next("the recovery", func(a Ack) bool { return !a.Stall.Stalled() })
		if a.Stall.Episodes != 1 {
			t.Fatalf("recovery reported as %+v: the episode count was lost", a.Stall)
		}
		p.stop(t)
	})

	t.Run("not-asked", func(t *testing.T) {
		a, b := net.Pipe()
		peer := newFakePeer(t, a)
		rcv := NewReceiver(b, NewMemLog(start), ReceiverConfig{StartOffset: start,
			HeartbeatInterval: 5 * time.Millisecond, PeerTimeout: 5 * time.Second, Logger: testLogger(t)})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		done := runAsync(func() error { return rcv.Run(ctx) })
		rcv.SetStall(ReplayStall{For: time.Minute, AtIcount: 1, Beyond: 1, Episodes: 1})
		deadline := time.After(10 * time.Second)
		for acks := 0; acks < 5; {
			select {
			case m, ok := <-peer.msgs:
				if !ok {
					t.Fatalf("receiver hung up: %v", <-done)
				}
				if m.Type != MsgAck {
					continue
				}
				if len(m.Payload) != AckSize {
					t.Fatalf("ack of %d bytes to a primary that did not ask for stall reports", len(m.Payload))
				}
				acks++
			case <-deadline:
				t.Fatal("no acks")
			}
		}
		cancel()
		if err := waitErr(t, done, 5*time.Second, "receiver"); err != nil {
			t.Fatalf("Run: %v", err)
		}
	})
}
