// Package sentinel finds a backup whose replay has diverged from the recording it
// replays, while the primary is healthy rather than at failover, by comparing what
// both copies of the guest wrote to their consoles.
//
// A replay is deterministic: from the same log it executes the same instructions,
// so the guest's console output is byte for byte the primary's. The primary sends
// Marks, the CRC-32C of its console's first Bytes bytes, as its console grows; the
// backup feeds its replay's console to a Comparer in order, with the Marks as they
// arrive, and the Comparer checks each Mark against the replay's own bytes at the
// same length. A Mark that does not match is a divergence: the replay executed
// something the primary did not.
//
// The Comparer is pure (no I/O, no clock, no goroutines) and bounded: it keeps the
// last Window bytes of the replay's console, for Marks that arrive after the replay
// passed them, and at most MaxPending Marks the replay has not reached yet. It is not
// safe for concurrent use.
package sentinel

import (
	"fmt"
	"hash/crc32"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Update extends crc, the CRC-32C of some bytes, with p: a running console checksum.
func Update(crc uint32, p []byte) uint32 { return crc32.Update(crc, castagnoli, p) }

// Mark is the primary's console at one moment: the CRC-32C of its first Bytes bytes.
type Mark struct {
	Bytes int64
	CRC   uint32
}

// Divergence is the first Mark the replay's console did not match.
type Divergence struct {
	// Mark is the primary's: its first Bytes bytes have checksum CRC.
	Mark Mark
	// Replay is the checksum of the replay's first Mark.Bytes bytes.
	Replay uint32
	// Since is the length up to which the consoles last matched: the bytes
	// that differ are among (Since, Mark.Bytes].
	Since int64
}

func (d Divergence) String() string {
	return fmt.Sprintf("the replay's console differs from the primary's within bytes %d..%d (crc32c %08x, primary %08x)",
		d.Since, d.Mark.Bytes, d.Replay, d.Mark.CRC)
}

// Defaults for Config.
const (
	DefaultWindow     = 64 << 10
	DefaultMaxPending = 256
)

// Config bounds a Comparer. Zero values take the defaults.
type Config struct {
	// Window is how many of the replay's latest console bytes are kept to check a
	// Mark that arrives after the replay passed it; a Mark older than that is
	// skipped (counted in Stats.Skipped).
	Window int
	// MaxPending is how many Marks ahead of the replay are kept; when more arrive
	// the oldest are dropped (a later Mark covers the bytes before it).
	MaxPending int
}

// Stats counts what a Comparer did.
type Stats struct {
	Replayed int64 // bytes of the replay's console seen
	Checked  int64 // the consoles match up to here (0: nothing checked yet)
	Marks    uint64
	Matched  uint64
	Skipped  uint64 // marks too old for the window, or dropped while pending
}

// Comparer compares a replay's console with the primary's Marks.
type Comparer struct {
	cfg Config

	n   int64  // replay bytes seen
	crc uint32 // of those bytes

	winStart int64  // offset of win[0]
	winCRC   uint32 // checksum of the replay's first winStart bytes
	win      []byte

	pending  []Mark // ahead of n, increasing
	last     int64  // the highest Mark.Bytes received
	st       Stats
	diverged *Divergence
}

// New returns a Comparer with nothing seen.
func New(cfg Config) *Comparer {
	if cfg.Window <= 0 {
		cfg.Window = DefaultWindow
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = DefaultMaxPending
	}
	return &Comparer{cfg: cfg}
}

// Diverged returns the first divergence found (nil while the consoles match). It
// is sticky: nothing after a divergence is compared.
func (c *Comparer) Diverged() *Divergence { return c.diverged }

// Stats returns the counters.
func (c *Comparer) Stats() Stats {
	st := c.st
	st.Replayed = c.n
	return st
}

// Primary takes the primary's next Mark. Marks must not go backwards (an older or
// equal Bytes is ignored; a different CRC at the same Bytes is a divergence of the
// primary's own reports and is ignored too: only the replay is checked).
func (c *Comparer) Primary(m Mark) *Divergence {
	if c.diverged != nil || m.Bytes <= c.last || m.Bytes <= 0 {
		return c.diverged
	}
	c.last = m.Bytes
	c.st.Marks++
	if m.Bytes > c.n {
		if len(c.pending) == c.cfg.MaxPending {
			c.pending = c.pending[1:]
			c.st.Skipped++
		}
		c.pending = append(c.pending, m)
		return nil
	}
	// The replay passed it already: check against the kept window.
	if m.Bytes < c.winStart {
		c.st.Skipped++
		return nil
	}
	c.check(m, Update(c.winCRC, c.win[:m.Bytes-c.winStart]))
	return c.diverged
}

// Replay takes the next bytes of the replay's console, in order.
func (c *Comparer) Replay(p []byte) *Divergence {
	for len(p) > 0 && c.diverged == nil {
		k := len(p)
		if len(c.pending) > 0 {
			k = int(min(int64(k), c.pending[0].Bytes-c.n))
		}
		c.consume(p[:k])
		p = p[k:]
		for len(c.pending) > 0 && c.pending[0].Bytes == c.n && c.diverged == nil {
			m := c.pending[0]
			c.pending = c.pending[1:]
			c.check(m, c.crc)
		}
	}
	return c.diverged
}

func (c *Comparer) consume(p []byte) {
	c.crc = Update(c.crc, p)
	c.n += int64(len(p))
	c.win = append(c.win, p...)
	if over := len(c.win) - c.cfg.Window; over > 0 {
		c.winCRC = Update(c.winCRC, c.win[:over])
		c.winStart += int64(over)
		c.win = append(c.win[:0], c.win[over:]...)
	}
}

func (c *Comparer) check(m Mark, replay uint32) {
	if replay != m.CRC {
		c.diverged = &Divergence{Mark: m, Replay: replay, Since: c.st.Checked}
		return
	}
	c.st.Matched++
	c.st.Checked = max(c.st.Checked, m.Bytes)
}
