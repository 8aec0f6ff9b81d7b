package agent

import (
	"testing"
	"time"
)

// FuzzStallDetector checks the stall detector against its definition, on any
// sequence of samples (4 bytes each: time step, count move, log ahead or not,
// positions). Sample i belongs to a still stretch that began at sample j, the
// earliest from which every sample has log beyond its count and the same count as
// sample i. The replay is stalled at i exactly when that stretch has lasted the
// threshold (At[i]-At[j] >= after); the detector reports entering and clearing
// exactly at the edges, its length, where it stopped, and counts the episodes.
func FuzzStallDetector(f *testing.F) {
	f.Add(uint8(29), []byte{10, 1, 1, 0, 10, 0, 1, 0, 10, 0, 1, 0, 10, 0, 1, 0, 10, 2, 1, 0})
	f.Add(uint8(0), []byte{255, 0, 1, 3, 255, 0, 1, 4, 0, 0, 0, 5, 255, 0, 1, 6, 255, 0, 1, 7})
	f.Add(uint8(5), []byte{1, 3, 1, 1, 20, 0, 1, 1, 0, 0, 1, 1, 20, 3, 1, 2, 20, 0, 1, 2})
	f.Fuzz(func(t *testing.T, afterB uint8, ops []byte) {
		after := time.Duration(afterB) * 100 * time.Millisecond
		d := newStallDetector(after)
		if after <= 0 {
			after = DefaultStallAfter
		}
		type obs struct {
			at     time.Time
			icount uint64
			ahead  bool
		}
		var seen []obs
		now := time.Unix(1_700_000_000, 0)
		var icount uint64 = 1000
		stalled, runStart, episodes := false, 0, uint64(0)
		var atIcount uint64
		var atPos int64
		for i := 0; i+3 < len(ops); i += 4 {
			now = now.Add(time.Duration(ops[i]) * 50 * time.Millisecond)
			if ops[i+1]%3 == 0 && ops[i+1] > 0 {
				icount += uint64(ops[i+1])
			}
			ahead := ops[i+2]&1 == 1
			logIcount := icount - uint64(ops[i+2]>>1&1) // at or below the count
			if ahead {
				logIcount = icount + 1 + uint64(ops[i+2]>>1)
			}
			pos := int64(ops[i+3]) * 10
			held := pos + int64(ops[i+3]>>4)*7 - 20
			s := replaySample{At: now, Icount: icount, LogIcount: logIcount, Position: pos, Fed: held - 1, Held: held}
			got := d.observe(s)
			seen = append(seen, obs{now, icount, ahead})

			// The still stretch sample i belongs to, by the definition.
			n := len(seen) - 1
			j := n + 1
			for j > 0 && seen[j-1].ahead && seen[j-1].icount == icount {
				j--
			}
			prevStart := runStart
			want, wasStalled := false, stalled
			if j <= n {
				want = now.Sub(seen[j].at) >= after
				runStart = j
			}
			st := d.state()
			switch {
			case want && !wasStalled:
				episodes++
				atIcount, atPos = icount, pos
				if got != stallEntered {
					t.Fatalf("sample %d: still since sample %d (%v >= %v) but change %v", n, j, now.Sub(seen[j].at), after, got)
				}
			case !want && wasStalled:
				if got != stallCleared {
					t.Fatalf("sample %d: the stall ended but change %v", n, got)
				}
				if wantFor := now.Sub(seen[prevStart].at); st.For != wantFor {
					t.Fatalf("sample %d: the cleared stall lasted %v, want %v", n, st.For, wantFor)
				}
			default:
				if got != stallSame {
					t.Fatalf("sample %d: nothing changed (stalled %v) but change %v", n, want, got)
				}
			}
			stalled = want
			if st.Stalled != want || st.Episodes != episodes {
				t.Fatalf("sample %d: state %+v, want stalled %v after %d episodes", n, st, want, episodes)
			}
			if want {
				if st.For != now.Sub(seen[j].at) || st.AtIcount != atIcount || st.Position != atPos || st.Held != held || st.Fed != held-1 {
					t.Fatalf("sample %d: stall %+v, want for %v at icount %d position %d held %d", n, st, now.Sub(seen[j].at), atIcount, atPos, held)
				}
			}
			if st.Beyond() < 0 {
				t.Fatalf("sample %d: negative log beyond %d", n, st.Beyond())
			}
		}
	})
}
