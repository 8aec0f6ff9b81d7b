package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/logspace"
	"github.com/ftvmd/ftvmd/sentinel"
)

// consoleEvery is how often each copy reads what its QEMU added to its console: the
// primary to send a console mark, the backup to check its replay's console against
// the marks (the divergence sentinel).
const consoleEvery = 250 * time.Millisecond

// consoleTail reads a console file as it grows. The file appears when QEMU starts.
// With rot, the file is rotated under it (bounded logs: its oldest blocks are copied
// out and freed, the offsets unchanged): it tells the rotator how far it has read,
// so that no rotation frees a byte it has not read.
type consoleTail struct {
	path string
	rot  *logspace.Rotator
	f    *os.File
	off  int64
	read atomic.Int64 // off, for the rotator
	buf  []byte
}

// newConsoleTail follows the console at path, rotated by rot (nil: not rotated).
func newConsoleTail(path string, rot *logspace.Rotator) *consoleTail {
	c := &consoleTail{path: path, rot: rot}
	if rot != nil {
		rot.SetConsumed(c.read.Load)
	}
	return c
}

// next returns the bytes added since the last call (nil when none, or while the file
// does not exist yet).
func (c *consoleTail) next() ([]byte, error) {
	if c.f == nil {
		f, err := os.Open(c.path)
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("console: %w", err)
		}
		c.f, c.buf = f, make([]byte, 64<<10)
	}
	n, err := c.f.ReadAt(c.buf, c.off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("console: %w", err)
	}
	c.off += int64(n)
	c.read.Store(c.off)
	return c.buf[:n], nil
}

// consoleRotator is the rotator of the primary's console (nil before its log
// keeper runs).
func (p *primary) consoleRotator() *logspace.Rotator {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.logs == nil {
		return nil
	}
	return p.logs.console
}

func (c *consoleTail) close() {
	if c.f != nil {
		c.f.Close()
	}
	if c.rot != nil {
		c.rot.SetConsumed(nil) // no reader to wait for any more
	}
}

// sendConsoleMarksFrom is the primary's half of the divergence sentinel: it keeps
// a running CRC-32C of its QEMU's console from byte from on (0 for a backup that
// replays from boot, the console's size at the snapshot for one that starts from a
// running VM's snapshot, whose replay's console starts there) and sends it to the
// backup as it grows.
func (p *primary) sendConsoleMarksFrom(ctx context.Context, s *logging.Sender, rot *logspace.Rotator, from int64) {
	tail := newConsoleTail(p.m.Config().ConsoleLog, rot)
	tail.off = from
	tail.read.Store(from)
	defer tail.close()
	var n int64
	var crc uint32
	t := time.NewTicker(consoleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for {
			b, err := tail.next()
			if err != nil {
				p.log.Warn("divergence sentinel: console unreadable; no more marks", "err", err)
				return
			}
			if len(b) == 0 {
				break
			}
			crc, n = sentinel.Update(crc, b), n+int64(len(b))
			s.Console(logging.ConsoleMark{Bytes: n, CRC: crc})
		}
	}
}

// checkConsole is the backup's half of the divergence sentinel: it feeds its
// replay's console and the primary's marks (from marks) to a sentinel.Comparer. On a
// divergence it reports where (console bytes, replayed icount, log offset) and steps
// down: a replay that executed something the primary did not cannot take over.
func (b *backup) checkConsole(ctx context.Context, marks <-chan logging.ConsoleMark) {
	b.mu.Lock()
	logs := b.logs
	b.mu.Unlock()
	var rot *logspace.Rotator
	if logs != nil {
		rot = logs.console
	}
	tail := newConsoleTail(b.m.Config().ConsoleLog, rot)
	defer tail.close()
	cmp := sentinel.New(sentinel.Config{})
	t := time.NewTicker(consoleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case m := <-marks:
			cmp.Primary(sentinel.Mark{Bytes: m.Bytes, CRC: m.CRC})
		case <-t.C:
			for {
				p, err := tail.next()
				if err != nil {
					b.log.Warn("divergence sentinel: replay console unreadable; no more checks", "err", err)
					return
				}
				if len(p) == 0 {
					break
				}
				if b.flipConsole.Swap(false) {
					p[0] ^= 0x01 // test knob: as if the replay had written another byte
					b.log.Warn("test knob: one byte of the replay's console flipped for the sentinel", "at", cmp.Stats().Replayed)
				}
				cmp.Replay(p)
			}
		}
		st := cmp.Stats()
		b.mu.Lock()
		b.consoleChecked = st.Checked
		b.mu.Unlock()
		if d := cmp.Diverged(); d != nil {
			b.diverged(*d)
			return
		}
	}
}

// diverged reports a console divergence the sentinel found and steps down.
func (b *backup) diverged(d sentinel.Divergence) {
	b.reportDivergence(d.String(), "console_from", d.Since, "console_to", d.Mark.Bytes,
		"replay_crc", fmt.Sprintf("%08x", d.Replay), "primary_crc", fmt.Sprintf("%08x", d.Mark.CRC))
}

// reportDivergence reports what the sentinel found differ (what, and attrs for the
// log), with where the replay stood (icount, log offset), and steps down: a replay
// that executed something the primary did not cannot take over. Only the first
// report counts.
func (b *backup) reportDivergence(what string, attrs ...any) {
	if b.handedOff.Load() {
		return // the replay is the live VM now: nothing to compare it with
	}
	b.mu.Lock()
	icount := b.replayed
	b.mu.Unlock()
	var pos int64
	if b.feed != nil {
		pos = b.feed.FedOffset()
	}
	if b.positions != nil {
		if off, ok := b.positions.at(icount); ok {
			pos = off
		}
	}
	what = fmt.Sprintf("replay diverged from the recording: %s; replay at icount %d, log offset %d", what, icount, pos)
	b.mu.Lock()
	first := b.divergence == ""
	if first {
		b.divergence = what
	}
	b.mu.Unlock()
	if !first {
		return
	}
	b.log.Warn("replay diverged", append(attrs, "icount", icount, "log_offset", pos)...)
	b.sentinelStepDown(what, icount, pos)
}
