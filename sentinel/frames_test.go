package sentinel

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
)

// frames are a guest's transmitted frames: Ethernet-sized, random bytes.
func frames(rng *rand.Rand, n int) [][]byte {
	fs := make([][]byte, n)
	for i := range fs {
		f := make([]byte, 60+rng.IntN(1455))
		for j := range f {
			f[j] = byte(rng.Uint32())
		}
		fs[i] = f
	}
	return fs
}

func digests(fs [][]byte) []Digest {
	ds := make([]Digest, len(fs))
	for i, f := range fs {
		ds[i] = Digest{Seq: uint64(i), Len: uint32(len(f)), Hash: FrameHash(f), At: int64(1000 + 10*i)}
	}
	return ds
}

// feed gives the comparer the primary's digests and the replay's frames interleaved at
// random (either side may run ahead), and returns the divergence found, if any.
func feed(t *testing.T, rng *rand.Rand, c *FrameComparer, primary []Digest, replay [][]byte) *FrameDivergence {
	t.Helper()
	i, j := 0, 0
	for i < len(primary) || j < len(replay) {
		if i < len(primary) && (j == len(replay) || rng.IntN(2) == 0) {
			if _, err := c.Primary(primary[i]); err != nil {
				t.Fatalf("primary digest %d: %v", i, err)
			}
			i++
			continue
		}
		c.Replay(Digest{Len: uint32(len(replay[j])), Hash: FrameHash(replay[j])})
		j++
	}
	return c.Diverged()
}

func TestSameFramesNeverDiverge(t *testing.T) {
	for seed := range uint64(100) {
		rng := rand.New(rand.NewPCG(seed, 11))
		fs := frames(rng, 1+rng.IntN(400))
		c := NewFrameComparer(FrameConfig{})
		if d := feed(t, rng, c, digests(fs), fs); d != nil {
			t.Fatalf("seed %d: identical frames diverged: %v", seed, d)
		}
		st := c.Stats()
		if st.Matched != uint64(len(fs)) || st.Skipped != 0 || st.Replayed != uint64(len(fs)) || st.Primary != uint64(len(fs)) {
			t.Fatalf("seed %d: %d frames, stats %+v", seed, len(fs), st)
		}
		if c.LastMatched() != int64(len(fs)-1) {
			t.Fatalf("seed %d: last matched %d of %d", seed, c.LastMatched(), len(fs))
		}
	}
}

// One flipped byte in one frame is found at that frame, with both digests and the
// primary's log offset.
func TestFlippedByteIsFound(t *testing.T) {
	for seed := range uint64(100) {
		rng := rand.New(rand.NewPCG(seed, 12))
		fs := frames(rng, 2+rng.IntN(300))
		ds := digests(fs)
		replay := make([][]byte, len(fs))
		copy(replay, fs)
		k := rng.IntN(len(fs))
		bad := append([]byte(nil), fs[k]...)
		bad[rng.IntN(len(bad))] ^= 1 << rng.IntN(8)
		replay[k] = bad
		c := NewFrameComparer(FrameConfig{})
		d := feed(t, rng, c, ds, replay)
		if d == nil {
			t.Fatalf("seed %d: frame %d differs, nothing found (%+v)", seed, k, c.Stats())
		}
		if d.Primary.Seq != uint64(k) || d.Replay.Seq != uint64(k) || d.Primary.Hash != ds[k].Hash || d.Replay.Hash != FrameHash(bad) ||
			d.Primary.At != ds[k].At || d.Matched != uint64(k) || d.LastMatched != int64(k)-1 {
			t.Fatalf("seed %d: frame %d differs, reported %+v", seed, k, d)
		}
		for _, w := range []string{"#" + strconv.Itoa(k), "checksum", "log held"} {
			if !strings.Contains(d.String(), w) {
				t.Fatalf("report %q lacks %q", d, w)
			}
		}
		// Sticky.
		c.Replay(Digest{Len: 1})
		if _, err := c.Primary(Digest{Seq: 1 << 40}); err != nil || c.Diverged() != d {
			t.Fatalf("seed %d: divergence not sticky (%v)", seed, err)
		}
	}
}

// A frame the replay did not send shifts every later frame: found at the first one.
func TestDroppedFrameIsFound(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 13))
	fs := frames(rng, 200)
	replay := append(append([][]byte(nil), fs[:120]...), fs[121:]...)
	d := feed(t, rng, NewFrameComparer(FrameConfig{}), digests(fs), replay)
	if d == nil || d.Primary.Seq != 120 || d.Replay.Hash != FrameHash(fs[121]) {
		t.Fatalf("dropped frame 120: %v", d)
	}
	// And an extra frame the primary never sent.
	replay = append(append(append([][]byte(nil), fs[:50]...), []byte("an extra ARP that the primary never sent.....")), fs[50:]...)
	d = feed(t, rng, NewFrameComparer(FrameConfig{}), digests(fs), replay)
	if d == nil || d.Primary.Seq != 50 {
		t.Fatalf("extra frame at 50: %v", d)
	}
}

// Two frames sent in the other order diverge at the first of them.
func TestReorderedFramesAreFound(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 14))
	fs := frames(rng, 100)
	replay := append([][]byte(nil), fs...)
	replay[70], replay[71] = replay[71], replay[70]
	d := feed(t, rng, NewFrameComparer(FrameConfig{}), digests(fs), replay)
	if d == nil || d.Primary.Seq != 70 {
		t.Fatalf("frames 70 and 71 swapped: %v", d)
	}
}

// A replay far ahead of the primary's digests overflows its window: the oldest
// frames are skipped, never taken for a divergence, and the rest are checked.
func TestWindowOverflowSkips(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 15))
	fs := frames(rng, 100)
	ds := digests(fs)
	c := NewFrameComparer(FrameConfig{Window: 10})
	for _, f := range fs {
		c.Replay(Digest{Len: uint32(len(f)), Hash: FrameHash(f)})
	}
	for _, d := range ds {
		if dv, err := c.Primary(d); dv != nil || err != nil {
			t.Fatalf("digest %d: %v %v", d.Seq, dv, err)
		}
	}
	if st := c.Stats(); st.Matched != 10 || st.Skipped != 90 || c.LastMatched() != 99 {
		t.Fatalf("window 10, replay 100 frames ahead: %+v, last matched %d", st, c.LastMatched())
	}
	// A flipped frame that left the window is not found; one inside it is.
	c = NewFrameComparer(FrameConfig{Window: 10})
	for i, f := range fs {
		h := FrameHash(f)
		if i == 5 || i == 95 {
			h ^= 1
		}
		c.Replay(Digest{Len: uint32(len(f)), Hash: h})
	}
	for _, d := range ds {
		c.Primary(d)
	}
	if d := c.Diverged(); d == nil || d.Primary.Seq != 95 {
		t.Fatalf("flips at 5 (out of the window) and 95: %v", d)
	}
}

// A primary far ahead of the replay overflows the pending bound: its oldest digests
// are dropped and those frames skipped.
func TestPendingOverflowSkips(t *testing.T) {
	rng := rand.New(rand.NewPCG(6, 16))
	fs := frames(rng, 100)
	c := NewFrameComparer(FrameConfig{Pending: 20})
	for _, d := range digests(fs) {
		c.Primary(d)
	}
	for _, f := range fs {
		if d := c.Replay(Digest{Len: uint32(len(f)), Hash: FrameHash(f)}); d != nil {
			t.Fatalf("diverged: %v", d)
		}
	}
	if st := c.Stats(); st.Matched != 20 || st.Skipped != 80 {
		t.Fatalf("pending 20, primary 100 frames ahead: %+v", st)
	}
}

// Gaps in the primary's numbers (digests it could not send) skip those frames.
func TestPrimaryGapsSkip(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 17))
	fs := frames(rng, 60)
	var ds []Digest
	for _, d := range digests(fs) {
		if d.Seq%3 != 1 {
			ds = append(ds, d)
		}
	}
	c := NewFrameComparer(FrameConfig{})
	if d := feed(t, rng, c, ds, fs); d != nil {
		t.Fatalf("gaps diverged: %v", d)
	}
	if st := c.Stats(); st.Matched != 40 || st.Skipped != 20 {
		t.Fatalf("stats %+v", st)
	}
}

// A peer that sends numbers backwards gets an error and changes nothing.
func TestBackwardsDigestIsRejected(t *testing.T) {
	c := NewFrameComparer(FrameConfig{})
	if _, err := c.Primary(Digest{Seq: 5, Len: 60, Hash: 1}); err != nil {
		t.Fatal(err)
	}
	for _, s := range []uint64{5, 4, 0, 1 << 63, ^uint64(0)} {
		if _, err := c.Primary(Digest{Seq: s, Len: 60, Hash: 2}); err == nil {
			t.Fatalf("digest #%d after #5 accepted", s)
		}
	}
	if st := c.Stats(); st.Rejected != 5 || st.Primary != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func FuzzFrameComparer(f *testing.F) {
	f.Add(uint64(1), uint16(50), uint16(7), uint8(0), uint8(3))
	f.Add(uint64(2), uint16(300), uint16(299), uint8(1), uint8(0))
	f.Fuzz(func(t *testing.T, seed uint64, n, at uint16, kind, window uint8) {
		rng := rand.New(rand.NewPCG(seed, 18))
		fs := frames(rng, int(n%500)+1)
		replay := append([][]byte(nil), fs...)
		k := int(at) % (len(fs) + 1)
		if k < len(fs) {
			switch kind % 3 {
			case 0:
				b := append([]byte(nil), fs[k]...)
				b[0] ^= 1
				replay[k] = b
			case 1:
				replay = append(replay[:k:k], fs[k+1:]...)
			case 2:
				replay = append(replay[:k:k], append([][]byte{[]byte("extra frame!!!")}, fs[k:]...)...)
			}
		}
		// Without a bound in the way every difference is found at its frame.
		c := NewFrameComparer(FrameConfig{Window: len(fs) + 2, Pending: len(fs) + 2})
		d := feed(t, rng, c, digests(fs), replay)
		switch {
		case k == len(fs):
			if d != nil {
				t.Fatalf("identical streams diverged: %v", d)
			}
		case kind%3 == 1 && k == len(fs)-1:
			// The last frame dropped: nothing to compare it with, never a mismatch.
			if d != nil {
				t.Fatalf("last frame dropped: %v", d)
			}
		default:
			if d == nil || d.Primary.Seq != uint64(k) {
				t.Fatalf("difference (kind %d) at frame %d of %d: %v", kind%3, k, len(fs), d)
			}
		}
		// With small bounds: never a false divergence, never a panic.
		c = NewFrameComparer(FrameConfig{Window: int(window%16) + 1, Pending: int(window/16) + 1})
		if d := feed(t, rng, c, digests(fs), fs); d != nil {
			t.Fatalf("identical streams, small bounds: %v", d)
		}
	})
}

// The checksums by name, against their standard check values (the CRCs of
// "123456789"): CRC-64/ECMA as Go computes it (crc64.ECMA), CRC-32C 0xe3069283 and
// CRC-32 0xcbf43926 side by side. An unknown name is refused, not defaulted.
func TestHashFunc(t *testing.T) {
	check := []byte("123456789")
	for _, c := range []struct {
		name string
		want uint64
	}{{HashCRC64, 0x995dc9bbdf1939fa}, {HashCRC32Pair, 0xe3069283_cbf43926}} {
		h, ok := HashFunc(c.name)
		if !ok {
			t.Fatalf("%q: unknown", c.name)
		}
		if got := h(check); got != c.want {
			t.Errorf("%q: %016x, want %016x", c.name, got, c.want)
		}
	}
	if h, ok := HashFunc("crc16"); ok || h != nil {
		t.Error("an unknown checksum was accepted")
	}
	// One flipped bit changes each half.
	f := []byte(strings.Repeat("frame bytes ", 100))
	a := FrameHashCRC32Pair(f)
	f[500] ^= 1
	b := FrameHashCRC32Pair(f)
	if a>>32 == b>>32 || uint32(a) == uint32(b) {
		t.Errorf("one bit flipped: %016x -> %016x", a, b)
	}
}

func BenchmarkFrameHash(b *testing.B) {
	for _, n := range []int{66, 1514, 65536} {
		p := make([]byte, n)
		for _, h := range []string{HashCRC64, HashCRC32Pair} {
			f, _ := HashFunc(h)
			b.Run(strconv.Itoa(n)+"/"+map[string]string{HashCRC64: "crc64", HashCRC32Pair: "crc32pair"}[h], func(b *testing.B) {
				b.SetBytes(int64(n))
				for b.Loop() {
					f(p)
				}
			})
		}
	}
}
