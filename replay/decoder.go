package replay

import (
	"bufio"
	"errors"
	"fmt"
	"io"
)

// Decoder reads events one at a time from a complete or growing log.
//
// It buffers its reader, so it may read past the event it returns.
// io.EOF at an event boundary is not sticky: a later Next retries, which
// suits a file that is still growing. Any other error (truncation inside
// an event, corruption, a read error) is sticky, because the bytes of the
// partial event have been consumed; tail a growing log with a Cutter.
type Decoder struct {
	r      *bufio.Reader
	off    int64
	icount uint64
	sawEnd bool
	err    error
	hdr    [maxHeader]byte
}

// NewDecoder returns a Decoder for r, which is positioned at absolute
// offset start (normally HeaderSize), with a starting icount of zero.
func NewDecoder(r io.Reader, start int64) *Decoder {
	return NewDecoderAt(r, start, 0)
}

// NewDecoderAt is NewDecoder for a log that is entered mid-way, e.g. after
// a snapshot taken at instruction count startIcount.
func NewDecoderAt(r io.Reader, start int64, startIcount uint64) *Decoder {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	return &Decoder{r: br, off: start, icount: startIcount}
}

// Offset is the absolute offset of the next event.
func (d *Decoder) Offset() int64 { return d.off }

// Icount is startIcount plus every INSTRUCTION count returned so far.
func (d *Decoder) Icount() uint64 { return d.icount }

// Next returns the next event. It returns io.EOF exactly at an event
// boundary, an error wrapping ErrTruncated if the input ends inside an
// event, and *CorruptError for bytes QEMU cannot have written, including
// any byte after END.
func (d *Decoder) Next() (Event, error) {
	if d.err != nil {
		return Event{}, d.err
	}
	n, need := 0, 1
	var hdr, total int
	for {
		if n < need {
			m, err := io.ReadFull(d.r, d.hdr[n:need])
			n += m
			if err != nil {
				if n == 0 && err == io.EOF {
					return Event{}, io.EOF
				}
				return Event{}, d.fail(err)
			}
		}
		if d.sawEnd {
			return Event{}, d.fail(corrupt(d.off, "data after END"))
		}
		var err error
		hdr, total, err = layout(d.hdr[:n], d.off)
		if err != nil {
			return Event{}, d.fail(err)
		}
		if total > 0 {
			break
		}
		need = hdr
	}
	ev, err := decode(d.hdr[:hdr], d.off, total)
	if err != nil {
		return Event{}, d.fail(err)
	}
	if skip := total - hdr; skip > 0 {
		if _, err := d.r.Discard(skip); err != nil {
			return Event{}, d.fail(err)
		}
	}
	d.off += int64(total)
	d.icount += uint64(ev.Instructions)
	d.sawEnd = ev.Kind == KindEnd
	return ev, nil
}

// fail records a sticky error, turning a short read into ErrTruncated.
func (d *Decoder) fail(err error) error {
	var ce *CorruptError
	switch {
	case errors.As(err, &ce):
		d.err = err
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		d.err = fmt.Errorf("event at offset %d: %w", d.off, ErrTruncated)
	default:
		d.err = fmt.Errorf("replay: reading event at offset %d: %w", d.off, err)
	}
	return d.err
}
