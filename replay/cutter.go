package replay

import (
	"errors"
	"io"
)

// Mark pairs the end of an INSTRUCTION event with the instruction count
// reached there. The agent uses marks to map the icount the backup has
// replayed to the log offset it has consumed.
type Mark struct {
	Offset int64  // absolute offset just past the INSTRUCTION event
	Icount uint64 // instructions executed up to Offset
}

// Cutter finds event boundaries in a log that arrives in arbitrary
// chunks, as when tailing the file QEMU is still writing.
//
// It keeps only the fixed part of the event in progress (at most 18
// bytes) and counts down array bytes without storing them, so its memory
// does not grow with the input. Events and marks are reported through
// optional hooks, called synchronously from Write in log order; a hook
// must not call Write.
type Cutter struct {
	boundary int64
	icount   uint64
	events   uint64
	sawEnd   bool
	err      error

	hdr  [maxHeader]byte
	n    int   // bytes of hdr filled for the event in progress
	cur  Event // event whose fixed part is decoded, while skip > 0
	skip int   // array bytes of cur still to come

	onEvent func(Event)
	onMark  func(Mark)
}

// NewCutter returns a Cutter whose first byte is at absolute offset start
// (normally HeaderSize) and whose icount there is startIcount.
func NewCutter(start int64, startIcount uint64) *Cutter {
	return &Cutter{boundary: start, icount: startIcount}
}

// OnEvent sets a hook called with every complete event.
func (c *Cutter) OnEvent(fn func(Event)) { c.onEvent = fn }

// OnMark sets a hook called after every complete INSTRUCTION event. A
// hook rather than a stored list keeps the Cutter's memory bounded; the
// caller keeps as many marks as it needs.
func (c *Cutter) OnMark(fn func(Mark)) { c.onMark = fn }

// Boundary is the absolute offset just past the last complete event.
func (c *Cutter) Boundary() int64 { return c.boundary }

// Icount is the instruction count at Boundary.
func (c *Cutter) Icount() uint64 { return c.icount }

// Events is the number of complete events seen.
func (c *Cutter) Events() uint64 { return c.events }

// SawEnd reports whether the END event has been seen.
func (c *Cutter) SawEnd() bool { return c.sawEnd }

// Pending is the number of bytes past Boundary received so far.
func (c *Cutter) Pending() int64 {
	if c.skip > 0 {
		return int64(c.cur.Size - c.skip)
	}
	return int64(c.n)
}

// Err returns the sticky error, if any.
func (c *Cutter) Err() error { return c.err }

// Write consumes the bytes that follow everything written before. On
// corrupt input it returns the bytes consumed before the bad event and a
// *CorruptError, and every later Write returns the same error.
func (c *Cutter) Write(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	total := len(p)
	for {
		if c.skip > 0 {
			if len(p) == 0 {
				break
			}
			m := min(c.skip, len(p))
			c.skip -= m
			p = p[m:]
			if c.skip == 0 {
				c.complete(c.cur)
			}
			continue
		}
		if c.sawEnd && len(p) > 0 {
			c.err = corrupt(c.boundary, "data after END")
			return total - len(p), c.err
		}
		hdr, size, err := layout(c.hdr[:c.n], c.boundary)
		if err == nil && size > 0 {
			var ev Event
			ev, err = decode(c.hdr[:hdr], c.boundary, size)
			if err == nil {
				c.n = 0
				if c.skip = size - hdr; c.skip == 0 {
					c.complete(ev)
				} else {
					c.cur = ev
				}
				continue
			}
		}
		if err != nil {
			c.err = err
			// The bad event's bytes in hdr came from earlier writes or
			// from p; report only those of p as consumed.
			return max(0, total-len(p)-c.n), c.err
		}
		if len(p) == 0 {
			break
		}
		m := copy(c.hdr[c.n:hdr], p)
		c.n += m
		p = p[m:]
	}
	return total, nil
}

func (c *Cutter) complete(ev Event) {
	c.boundary = ev.End()
	c.icount += uint64(ev.Instructions)
	c.events++
	if ev.Kind == KindEnd {
		c.sawEnd = true
	}
	if c.onEvent != nil {
		c.onEvent(ev)
	}
	if ev.Kind == KindInstruction && c.onMark != nil {
		c.onMark(Mark{Offset: c.boundary, Icount: c.icount})
	}
}

// LastBoundary reads a log prefix from r, positioned at absolute offset
// start with icount startIcount there, and returns the offset just past
// the last complete event and the icount at that offset. A prefix that
// ends inside an event is normal (the recorder is mid-write) and is not
// an error. Corruption is returned with the last good boundary.
func LastBoundary(r io.Reader, start int64, startIcount uint64) (off int64, icount uint64, err error) {
	c := NewCutter(start, startIcount)
	if _, err := io.Copy(c, r); err != nil {
		var ce *CorruptError
		if !errors.As(err, &ce) {
			err = wrapRead(err)
		}
		return c.Boundary(), c.Icount(), err
	}
	return c.Boundary(), c.Icount(), nil
}
