package throttle

import (
	"encoding/binary"
	"math"
	"testing"
	"time"
)

// FuzzPacer drives a Pacer with any sequence of frames, lag samples, clock steps,
// Next calls and releases (2 bytes per op). Whatever the sequence: frames leave in
// the order they came, each once, and dropped ones never; what is held is counted
// right and stays within the queue bound; unpaced, held frames go at once; paced,
// the rate is a real number at or above the floor, a frame that must wait is told
// a positive wait, and while the rate holds no more leaves than the rate allows
// plus a short burst and one frame.
func FuzzPacer(f *testing.F) {
	f.Add(uint16(2000), uint16(1000), []byte{0, 50, 2, 40, 0, 70, 0, 70, 1, 0, 3, 10, 1, 0})
	f.Add(uint16(0), uint16(0), []byte{0, 255, 3, 100, 2, 255, 0, 255, 0, 255, 0, 255, 3, 1, 1, 0, 2, 0, 3, 255, 1, 0})
	f.Add(uint16(300), uint16(1), []byte{2, 30, 0, 10, 0, 10, 0, 10, 4, 0, 1, 0, 2, 1, 3, 200, 2, 1})
	f.Fuzz(func(t *testing.T, queue, minRate uint16, ops []byte) {
		cfg := PacerConfig{Bound: 100 * time.Millisecond, QueueBytes: int(queue), MinRate: float64(minRate)}
		p, err := NewPacer(cfg)
		if err != nil {
			t.Fatal(err)
		}
		_ = cfg.validate() // the defaults the pacer applies
		now := time.Unix(1_700_000_000, 0)
		var offered, dropped, sent uint64
		var expect []uint64 // frames not dropped and not out yet, in the order they came
		held := map[uint64]int{}
		heldBytes := 0
		maxFrame := 0
		// The current stretch of unchanged pacing: its start, its rate, bytes out since.
		segStart, segActive, segRate, segBytes := now, p.Active(), p.Rate(), 0.0

		out := func(fr []byte, how string) {
			t.Helper()
			if len(fr) < 8 {
				t.Fatalf("%s: frame of %d bytes", how, len(fr))
			}
			seq := binary.BigEndian.Uint64(fr)
			if len(expect) == 0 || seq != expect[0] {
				t.Fatalf("%s: frame %d left, want the next of %v (order)", how, seq, expect)
			}
			expect = expect[1:]
			sent++
			if n, ok := held[seq]; ok {
				heldBytes -= n
				delete(held, seq)
			}
			segBytes += float64(len(fr))
		}
		check := func(i int) {
			t.Helper()
			st := p.Stats()
			if st.QueueFrames != len(held) || st.QueueBytes != heldBytes || st.QueueBytes > cfg.QueueBytes || st.Drops != dropped {
				t.Fatalf("op %d: stats %+v, want %d frames %d bytes held (limit %d), %d drops", i, st, len(held), heldBytes, cfg.QueueBytes, dropped)
			}
			if sent+uint64(len(held))+dropped != offered || len(expect) != len(held) {
				t.Fatalf("op %d: %d out + %d held + %d dropped != %d offered", i, sent, len(held), dropped, offered)
			}
			if p.Active() {
				r := p.Rate()
				if math.IsNaN(r) || math.IsInf(r, 0) || r < cfg.MinRate {
					t.Fatalf("op %d: paced at rate %v (floor %v)", i, r, cfg.MinRate)
				}
			} else if p.Rate() != 0 {
				t.Fatalf("op %d: unpaced with rate %v", i, p.Rate())
			}
			if segActive {
				limit := segRate*(now.Sub(segStart)+2*paceBurst).Seconds() + float64(maxFrame)
				if segBytes > limit+1e-6 {
					t.Fatalf("op %d: %v bytes left in %v at %v bytes/s (limit %v)", i, segBytes, now.Sub(segStart), segRate, limit)
				}
			}
			if p.Active() != segActive || p.Rate() != segRate {
				segStart, segActive, segRate, segBytes = now, p.Active(), p.Rate(), 0
			}
		}
		for i := 0; i+1 < len(ops); i += 2 {
			arg := ops[i+1]
			switch ops[i] % 5 {
			case 0: // a frame from the network: its sequence number, then padding
				fr := make([]byte, 8+int(arg)*20)
				binary.BigEndian.PutUint64(fr, offered)
				maxFrame = max(maxFrame, len(fr))
				seq := offered
				offered++
				expect = append(expect, seq)
				switch v := p.Offer(fr, now); v {
				case Send:
					out(fr, "Offer")
				case Held:
					held[seq] = len(fr)
					heldBytes += len(fr)
					binary.BigEndian.PutUint64(fr, math.MaxUint64) // the pacer must have kept a copy
				case Dropped:
					dropped++
					expect = expect[:len(expect)-1] // it never leaves
				default:
					t.Fatalf("Offer: verdict %v", v)
				}
			case 1: // the paced loop sends what may go
				for {
					fr, wait := p.Next(now)
					if fr == nil {
						if len(held) > 0 && wait <= 0 {
							t.Fatalf("op %d: %d frames held, Next says wait %v", i, len(held), wait)
						}
						if len(held) == 0 && wait != 0 {
							t.Fatalf("op %d: nothing held, Next says wait %v", i, wait)
						}
						if !p.Active() && len(held) > 0 {
							t.Fatalf("op %d: unpaced, yet %d frames wait", i, len(held))
						}
						break
					}
					out(fr, "Next")
				}
			case 2:
				p.Observe(Sample{Lag: time.Duration(arg) * 5 * time.Millisecond}, now)
			case 3:
				now = now.Add(time.Duration(arg) * time.Millisecond)
			case 4:
				p.Release()
			}
			check(i)
		}
	})
}
