package netbuf

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/outputrule"
)

// fuzzMaxFrame is the relay's frame limit in FuzzRelay: small, so oversized
// datagrams are cheap to make.
const fuzzMaxFrame = 300

// FuzzRelay drives a relay with any sequence of guest datagrams (of any size: empty,
// shorter than an Ethernet header, longer than the limit), log growth, acks (true
// or lying) and frames from the network (2 bytes per op). Whatever the sequence: no
// guest frame reaches the network before an ack covers the log it was stamped
// with; the datagrams that are frames reach it intact, once, in order, once acked;
// the others never, each counted; frames from the network reach QEMU intact and in
// order.
func FuzzRelay(f *testing.F) {
	f.Add([]byte{0, 20, 1, 50, 0, 30, 2, 0, 0, 200, 2, 0})
	f.Add([]byte{0, 0, 0, 3, 0, 255, 1, 10, 2, 5, 3, 40, 3, 200})
	f.Add([]byte{1, 100, 0, 40, 4, 0, 0, 41, 2, 1, 1, 1, 2, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 120 {
			return
		}
		h := newHarness(t, outputrule.Protected, func(c *RelayConfig) { c.MaxFrame = fuzzMaxFrame })
		type guest struct {
			data  []byte
			stamp int64
		}
		var frames []guest // guest datagrams that are frames, in the order sent
		var oversized, truncated uint64
		var acked, sent int64 // the highest ack given, the highest offset sent
		var next int          // frames[next] is the next one the network must see
		var netIn [][]byte    // frames from the network, in the order sent
		var qemuNext int
		buf := make([]byte, DefaultMaxFrame)

		// drainNet reads what reached the network and checks it against the rule.
		drainNet := func(wait time.Duration) {
			t.Helper()
			for {
				_ = h.net.SetReadDeadline(time.Now().Add(wait))
				n, err := h.net.Read(buf)
				if err != nil {
					return
				}
				if next >= len(frames) || !bytes.Equal(buf[:n], frames[next].data) {
					t.Fatalf("the network got %d bytes that are not guest frame %d of %d", n, next, len(frames))
				}
				if frames[next].stamp > acked {
					t.Fatalf("guest frame %d stamped %d reached the network, acked only %d", next, frames[next].stamp, acked)
				}
				next++
			}
		}
		// drainQEMU reads what reached QEMU from the network.
		drainQEMU := func(wait time.Duration) {
			t.Helper()
			for {
				_ = h.qemu.local.SetReadDeadline(time.Now().Add(wait))
				n, err := h.qemu.local.Read(buf)
				if err != nil {
					return
				}
				if qemuNext >= len(netIn) || !bytes.Equal(buf[:n], netIn[qemuNext]) {
					t.Fatalf("QEMU got %d bytes that are not network frame %d of %d", n, qemuNext, len(netIn))
				}
				qemuNext++
			}
		}
		seq := uint64(0)
		for i := 0; i+1 < len(ops); i += 2 {
			arg := int(ops[i+1])
			switch ops[i] % 5 {
			case 0: // a guest datagram, stamped with the log size now
				size := arg * 3 / 2 // 0..382: some empty, short or too long
				d := make([]byte, size)
				for j := range d {
					d[j] = byte(seq) ^ byte(j)
				}
				if size >= 22 {
					binary.BigEndian.PutUint64(d[14:], seq)
				}
				seq++
				st := h.relay.Stats()
				before := st.GuestFrames + st.Oversized + st.Truncated
				if _, err := h.qemu.send.Write(d); err != nil {
					t.Fatal(err)
				}
				waitFor(t, "datagram taken", func() bool {
					st := h.relay.Stats()
					return st.GuestFrames+st.Oversized+st.Truncated > before
				})
				switch {
				case size > fuzzMaxFrame:
					oversized++
				case size < MinFrame:
					truncated++
				default:
					frames = append(frames, guest{d, h.log.Load()})
				}
			case 1: // the guest's log grows
				h.log.Add(int64(arg))
			case 2: // the log is sent and the backup acks part of it
				sent = h.log.Load()
				h.relay.Sent(sent)
				ack := sent - int64(arg%4)*int64(arg)
				h.relay.Ack(ack)
				acked = max(acked, ack)
			case 3: // a frame from the network
				d := make([]byte, MinFrame+arg)
				d[0], d[len(d)-1] = byte(len(netIn)), byte(arg)
				netIn = append(netIn, d)
				if _, err := h.net.Write(d); err != nil {
					t.Fatal(err)
				}
			case 4: // a lying ack: beyond what was sent
				h.relay.Ack(sent + 1 + int64(arg))
			}
			drainNet(0)
		}
		// Everything acked: every frame goes out, and nothing else.
		sent = h.log.Load()
		h.relay.Sent(sent)
		h.relay.Ack(sent)
		acked = max(acked, sent)
		waitFor(t, "all guest frames out", func() bool {
			drainNet(time.Millisecond)
			return next == len(frames)
		})
		drainNet(5 * time.Millisecond) // a frame sent twice would show now
		waitFor(t, "network frames in QEMU", func() bool {
			drainQEMU(time.Millisecond)
			return qemuNext == len(netIn)
		})
		st := h.relay.Stats()
		if st.Oversized != oversized || st.Truncated != truncated || st.GuestFrames != uint64(len(frames)) || st.Invariant != 0 || st.NetDrops != 0 {
			t.Fatalf("stats %+v: want %d oversized, %d truncated, %d frames", st, oversized, truncated, len(frames))
		}
	})
}
