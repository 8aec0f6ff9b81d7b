package sentinel

import (
	"fmt"
	"hash/crc32"
	"hash/crc64"
)

// The second half of the sentinel compares the frames the guest's NIC transmitted.
// Both QEMUs hand every frame their guest transmits to a capture (filter-dump, see
// package nicdump) before anything can drop it, so the n-th frame the replay's guest
// transmits must be the primary's n-th, byte for byte: guest networking (TCP
// sequence numbers, timestamps, IP ids) is computed by the guest from guest state and
// guest time, which a replay reproduces under icount. The primary sends a Digest per
// frame; the backup computes its replay's and a FrameComparer checks them pairwise by
// sequence number.

var ecma = crc64.MakeTable(crc64.ECMA)

// FrameHash is the 64-bit checksum (CRC-64/ECMA) of one frame's bytes: the
// sentinel's first, which every agent computes (HashCRC64).
func FrameHash(p []byte) uint64 { return crc64.Checksum(p, ecma) }

// FrameHashCRC32Pair is a 64-bit checksum of one frame's bytes made of two 32-bit
// ones with independent polynomials: the CRC-32C (Castagnoli) in the high half and
// the CRC-32 (IEEE) in the low. Go computes both with the CPU's CRC and carry-less
// multiply instructions (amd64, arm64): 9-25x the rate of the table-driven CRC-64
// on 1.5-64 KiB frames (BenchmarkFrameHash on the 2-core lab machine), where CRC-64
// was 15-23 % of each agent's CPU during a bulk transfer from the guest
// (docs/benchmarks.md, session 13).
func FrameHashCRC32Pair(p []byte) uint64 {
	return uint64(crc32.Checksum(p, castagnoli))<<32 | uint64(crc32.ChecksumIEEE(p))
}

// Names of the frame checksums, as the agents negotiate them: both ends of a
// comparison must compute the same one.
const (
	// HashCRC64 is FrameHash; a peer that names no checksum computes it.
	HashCRC64 = ""
	// HashCRC32Pair is FrameHashCRC32Pair.
	HashCRC32Pair = "crc32c+crc32"
)

// HashFunc returns the frame checksum called name, and false for a name this build
// does not know.
func HashFunc(name string) (func([]byte) uint64, bool) {
	switch name {
	case HashCRC64:
		return FrameHash, true
	case HashCRC32Pair:
		return FrameHashCRC32Pair, true
	}
	return nil, false
}

// Digest is one transmitted frame: its number (0 for the first frame the NIC sent
// since QEMU started), its length and FrameHash of its bytes. At is where the copy
// that produced it stood when it did, for reports (the primary: its rr log's size; the
// replay: unset), and plays no part in the comparison.
type Digest struct {
	Seq  uint64
	Len  uint32
	Hash uint64
	At   int64
}

// Same reports whether d and o describe the same frame bytes.
func (d Digest) Same(o Digest) bool { return d.Len == o.Len && d.Hash == o.Hash }

// FrameDivergence is the first frame of the replay that differs from the primary's.
type FrameDivergence struct {
	// Primary is the primary's digest of frame Primary.Seq (At: its rr log's size
	// when it was captured); Replay the replay's frame with the same number.
	Primary, Replay Digest
	// Matched is how many frames matched before it (some may have been skipped);
	// LastMatched the number of the last frame that matched (-1: none did).
	Matched     uint64
	LastMatched int64
}

func (d FrameDivergence) String() string {
	return fmt.Sprintf("the replay's NIC frame #%d differs from the primary's (replay %d bytes checksum %016x, primary %d bytes checksum %016x, "+
		"sent when the primary's log held %d bytes; %d frames matched before it, the last #%d)",
		d.Primary.Seq, d.Replay.Len, d.Replay.Hash, d.Primary.Len, d.Primary.Hash, d.Primary.At, d.Matched, d.LastMatched)
}

// Defaults for FrameConfig.
const (
	// DefaultFrameWindow replay digests are kept for primary digests that arrive
	// after the replay sent the frame (the primary's digests ride behind its log).
	DefaultFrameWindow = 4096
	// DefaultFramePending primary digests are kept ahead of the replay: a replay
	// that lags a few seconds behind a bulk transfer of ~7000 frames a second.
	DefaultFramePending = 1 << 16
)

// FrameConfig bounds a FrameComparer. Zero values take the defaults.
type FrameConfig struct {
	// Window is how many of the replay's latest digests are kept unchecked, waiting
	// for the primary's; the oldest beyond it are dropped and counted as skipped.
	Window int
	// Pending is how many of the primary's digests are kept ahead of the replay;
	// the oldest beyond it are dropped and counted as skipped.
	Pending int
}

// FrameStats counts what a FrameComparer did.
type FrameStats struct {
	Replayed uint64 // frames of the replay seen
	Primary  uint64 // digests of the primary taken
	Matched  uint64 // frames compared and equal
	// Skipped: frames of the replay that were not compared: the primary sent no
	// digest for them (it dropped some, or one was dropped here by Pending), or the
	// digest came after the frame left the Window. Matched+Skipped never exceeds
	// Replayed; the difference is frames waiting in the window.
	Skipped uint64
	// Rejected: primary digests that went backwards or repeated a number (a peer
	// breaking the order), ignored.
	Rejected uint64
}

// FrameComparer compares the frames a replay's NIC sends with the primary's
// digests. It is pure (no I/O, clock or goroutines), bounded by FrameConfig and not
// safe for concurrent use.
type FrameComparer struct {
	cfg FrameConfig

	replay  ring // replay digests not yet compared, consecutive numbers
	pending ring // primary digests ahead of the replay, increasing numbers
	next    uint64
	last    int64 // the last primary number taken (-1: none)

	lastMatched int64
	st          FrameStats
	diverged    *FrameDivergence
}

// NewFrameComparer returns a FrameComparer that has seen nothing.
func NewFrameComparer(cfg FrameConfig) *FrameComparer {
	if cfg.Window <= 0 {
		cfg.Window = DefaultFrameWindow
	}
	if cfg.Pending <= 0 {
		cfg.Pending = DefaultFramePending
	}
	return &FrameComparer{cfg: cfg, last: -1, lastMatched: -1}
}

// Diverged returns the first divergence found (nil while the frames match). It is
// sticky: nothing after it is compared.
func (c *FrameComparer) Diverged() *FrameDivergence { return c.diverged }

// Stats returns the counters.
func (c *FrameComparer) Stats() FrameStats { return c.st }

// LastMatched is the number of the last frame that matched (-1: none yet).
func (c *FrameComparer) LastMatched() int64 { return c.lastMatched }

// Replay takes the replay's next frame; its number is the count of frames before it
// (d.Seq is overwritten).
func (c *FrameComparer) Replay(d Digest) *FrameDivergence {
	if c.diverged != nil {
		return c.diverged
	}
	d.Seq = c.next
	c.next++
	c.st.Replayed++
	// Primary digests for frames the replay has passed are gone (none: each was
	// checked as the replay reached it).
	for c.pending.len() > 0 && c.pending.front().Seq < d.Seq {
		c.pending.pop()
	}
	if c.pending.len() > 0 && c.pending.front().Seq == d.Seq {
		c.check(c.pending.pop(), d)
		return c.diverged
	}
	if int64(d.Seq) <= c.last {
		// The primary's digests went past this frame without it.
		c.st.Skipped++
		return nil
	}
	if c.replay.len() == c.cfg.Window {
		c.replay.pop()
		c.st.Skipped++
	}
	c.replay.push(d)
	return nil
}

// Primary takes the primary's digest of frame d.Seq. Numbers must increase (gaps are
// frames whose digests the primary could not send, skipped); a digest that goes
// backwards is a broken peer: it is ignored and the error says so.
func (c *FrameComparer) Primary(d Digest) (*FrameDivergence, error) {
	if c.diverged != nil {
		return c.diverged, nil
	}
	if int64(d.Seq) <= c.last || d.Seq > 1<<62 {
		c.st.Rejected++
		return nil, fmt.Errorf("sentinel: primary frame digest #%d after #%d: numbers must increase", d.Seq, c.last)
	}
	c.last = int64(d.Seq)
	c.st.Primary++
	// Replay frames older than d that no digest covered.
	for c.replay.len() > 0 && c.replay.front().Seq < d.Seq {
		c.replay.pop()
		c.st.Skipped++
	}
	if c.replay.len() > 0 && c.replay.front().Seq == d.Seq {
		// The replay sent it already.
		c.check(d, c.replay.pop())
		return c.diverged, nil
	}
	if d.Seq < c.next {
		// The replay sent it and it left the window (counted then).
		return nil, nil
	}
	if c.pending.len() == c.cfg.Pending {
		// Its frame is counted as skipped when the replay passes it.
		c.pending.pop()
	}
	c.pending.push(d)
	return nil, nil
}

func (c *FrameComparer) check(p, r Digest) {
	if !p.Same(r) {
		c.diverged = &FrameDivergence{Primary: p, Replay: r, Matched: c.st.Matched, LastMatched: c.lastMatched}
		return
	}
	c.st.Matched++
	c.lastMatched = int64(p.Seq)
}

// ring is a FIFO of digests that reuses its storage.
type ring struct {
	buf        []Digest
	head, size int
}

func (r *ring) len() int       { return r.size }
func (r *ring) front() *Digest { return &r.buf[r.head] }

func (r *ring) push(d Digest) {
	if r.size == len(r.buf) {
		nb := make([]Digest, max(16, 2*len(r.buf)))
		for i := range r.size {
			nb[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = nb, 0
	}
	r.buf[(r.head+r.size)%len(r.buf)] = d
	r.size++
}

func (r *ring) pop() Digest {
	d := r.buf[r.head]
	r.head = (r.head + 1) % len(r.buf)
	r.size--
	return d
}
