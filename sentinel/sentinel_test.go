package sentinel

import (
	"math/rand/v2"
	"testing"
)

// console is a guest's console output: text with a little variety.
func console(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = "abcdefgh \n[]0123456789"[rng.IntN(22)]
	}
	return b
}

// marks are the primary's Marks at random moments of its console out.
func marks(rng *rand.Rand, out []byte) []Mark {
	var ms []Mark
	crc, at := uint32(0), 0
	for at < len(out) {
		k := 1 + rng.IntN(300)
		k = min(k, len(out)-at)
		crc = Update(crc, out[at:at+k])
		at += k
		ms = append(ms, Mark{Bytes: int64(at), CRC: crc})
	}
	return ms
}

// run feeds replay in random chunks and the marks at random moments (before or after
// the replay reaches them) and returns the divergence found, if any.
func run(rng *rand.Rand, c *Comparer, replay []byte, ms []Mark) *Divergence {
	i, at := 0, 0
	for i < len(ms) || at < len(replay) {
		if i < len(ms) && (at == len(replay) || rng.IntN(2) == 0) {
			c.Primary(ms[i])
			i++
			continue
		}
		k := min(1+rng.IntN(500), len(replay)-at)
		c.Replay(replay[at : at+k])
		at += k
	}
	return c.Diverged()
}

func TestSameConsoleNeverDiverges(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 2))
		out := console(rng, 1+rng.IntN(20000))
		ms := marks(rng, out)
		c := New(Config{Window: 1 + rng.IntN(4096), MaxPending: 1 + rng.IntN(16)})
		if d := run(rng, c, out, ms); d != nil {
			t.Fatalf("seed %d: identical consoles diverged: %v", seed, d)
		}
		st := c.Stats()
		if st.Replayed != int64(len(out)) || st.Matched+st.Skipped != st.Marks || st.Marks != uint64(len(ms)) {
			t.Fatalf("seed %d: stats %+v for %d marks, %d bytes", seed, st, len(ms), len(out))
		}
	}
	// With the default bounds every mark is checked.
	rng := rand.New(rand.NewPCG(1, 1))
	out := console(rng, 50000)
	ms := marks(rng, out)
	c := New(Config{})
	if d := run(rng, c, out, ms); d != nil || c.Stats().Matched != uint64(len(ms)) || c.Stats().Checked != int64(len(out)) {
		t.Fatalf("defaults: %v %+v", d, c.Stats())
	}
}

// One byte that differs is found by the first mark at or past it, and the reported
// range holds it.
func TestOneDifferentByteIsFound(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 3))
		out := console(rng, 100+rng.IntN(20000))
		ms := marks(rng, out)
		replay := append([]byte(nil), out...)
		k := rng.IntN(len(replay))
		replay[k] ^= 0x20
		c := New(Config{}) // the window covers every late mark here
		d := run(rng, c, replay, ms)
		if d == nil {
			t.Fatalf("seed %d: byte %d differs and nothing was found (%+v)", seed, k, c.Stats())
		}
		if !(d.Since <= int64(k) && int64(k) < d.Mark.Bytes) {
			t.Fatalf("seed %d: byte %d differs, reported range %d..%d", seed, k, d.Since, d.Mark.Bytes)
		}
		// Sticky: nothing later undoes it.
		c.Replay([]byte("more"))
		c.Primary(Mark{Bytes: 1 << 40})
		if c.Diverged() != d {
			t.Fatalf("seed %d: divergence not sticky", seed)
		}
	}
}

// A replay that wrote a byte more (or less) than the primary diverges at the next mark.
func TestInsertedByteIsFound(t *testing.T) {
	rng := rand.New(rand.NewPCG(9, 9))
	out := console(rng, 5000)
	ms := marks(rng, out)
	replay := append(append(append([]byte(nil), out[:2500]...), '!'), out[2500:]...)
	if d := run(rng, New(Config{}), replay, ms); d == nil || d.Mark.Bytes <= 2500 {
		t.Fatalf("inserted byte at 2500: %v", d)
	}
	replay = append(append([]byte(nil), out[:2500]...), out[2501:]...)
	if d := run(rng, New(Config{}), replay, ms); d == nil || d.Mark.Bytes <= 2500 {
		t.Fatalf("dropped byte at 2500: %v", d)
	}
}

// A replay that is behind is not a divergence: its marks wait.
func TestBehindIsNotDiverged(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	out := console(rng, 3000)
	c := New(Config{MaxPending: 4})
	c.Replay(out[:1000])
	for _, m := range marks(rng, out) {
		c.Primary(m)
	}
	if c.Diverged() != nil {
		t.Fatal("a replay behind the primary diverged")
	}
	if st := c.Stats(); st.Checked > 1000 {
		t.Fatalf("checked %d bytes of a replay at 1000", st.Checked)
	}
	c.Replay(out[1000:])
	if c.Diverged() != nil || c.Stats().Checked != 3000 {
		t.Fatalf("after catching up: %v %+v", c.Diverged(), c.Stats())
	}
}

// A mark older than the window is skipped, never taken for a divergence.
func TestMarkOlderThanTheWindowIsSkipped(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 5))
	out := console(rng, 10000)
	c := New(Config{Window: 100})
	c.Replay(out)
	if d := c.Primary(Mark{Bytes: 10, CRC: 12345}); d != nil {
		t.Fatalf("a mark older than the window diverged: %v", d)
	}
	if st := c.Stats(); st.Skipped != 1 || st.Matched != 0 {
		t.Fatalf("stats %+v", st)
	}
	// One inside the window is checked.
	if d := c.Primary(Mark{Bytes: 9950, CRC: Update(0, out[:9950])}); d != nil || c.Stats().Matched != 1 {
		t.Fatalf("a mark inside the window: %v %+v", d, c.Stats())
	}
}

func FuzzComparer(f *testing.F) {
	f.Add(uint64(1), uint16(300), uint16(17))
	f.Fuzz(func(t *testing.T, seed uint64, n uint16, flip uint16) {
		rng := rand.New(rand.NewPCG(seed, 7))
		out := console(rng, int(n)+1)
		ms := marks(rng, out)
		replay := append([]byte(nil), out...)
		k := int(flip) % (len(replay) + 1)
		if k < len(replay) {
			replay[k] ^= 1
		}
		d := run(rng, New(Config{}), replay, ms)
		if (d != nil) != (k < len(replay)) {
			t.Fatalf("flip at %d of %d: divergence %v", k, len(replay), d)
		}
	})
}
