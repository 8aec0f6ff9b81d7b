package replay

import (
	"errors"
	"fmt"
	"io"
)

// Summary describes a whole log file; it backs `ftvmd log inspect`.
type Summary struct {
	Version  uint32           // header version; 0 while a stock QEMU records
	Finished bool             // valid version and END: QEMU exited cleanly
	Counts   [NumKinds]uint64 // events per kind
	Events   uint64           // complete events
	Icount   uint64           // sum of INSTRUCTION counts
	// ShutdownIcount is the instruction count at the log's first SHUTDOWN event,
	// where a replay that pauses on shutdown stops (SawShutdown). The vCPU may run
	// on for a few thousand instructions after the shutdown request is logged and
	// before the recording ends, so it can be below Icount.
	ShutdownIcount uint64
	SawShutdown    bool
	Bytes          int64 // bytes read, header included
	Boundary       int64 // offset just past the last complete event
	SawEnd         bool  // END event seen
	Truncated      bool  // input ended inside an event (normal while recording)
}

// Summarize reads a log from its first byte to EOF. A log that ends inside
// an event is reported through Summary.Truncated, not as an error, because
// a log that is still being written always looks like that. A bad header
// or corrupt events are errors; the Summary then covers what came before.
func Summarize(r io.Reader) (Summary, error) {
	var s Summary
	var head [HeaderSize]byte
	n, err := io.ReadFull(r, head[:])
	s.Bytes = int64(n)
	if err != nil {
		return s, fmt.Errorf("replay: reading header: %w", err)
	}
	valid := false
	switch err := CheckHeader(head[:]); {
	case err == nil:
		valid = true
	case errors.Is(err, ErrRecording):
	default:
		return s, err
	}
	s.Version = uint32(head[0])<<24 | uint32(head[1])<<16 | uint32(head[2])<<8 | uint32(head[3])
	c := NewCutter(HeaderSize, 0)
	c.OnEvent(func(ev Event) {
		s.Counts[ev.Kind]++
		if ev.Kind.IsShutdown() && !s.SawShutdown {
			s.SawShutdown, s.ShutdownIcount = true, c.Icount()
		}
	})
	m, err := io.Copy(c, r)
	s.Bytes += m
	s.Events, s.Icount, s.Boundary, s.SawEnd = c.Events(), c.Icount(), c.Boundary(), c.SawEnd()
	s.Truncated = c.Pending() > 0
	// A stock QEMU writes the version at exit, after END; ftvmd's engine writes
	// it at start, so only END says the recording ended.
	s.Finished = valid && s.SawEnd
	if err != nil {
		var ce *CorruptError
		if !errors.As(err, &ce) {
			err = wrapRead(err)
		}
		return s, err
	}
	return s, nil
}

func wrapRead(err error) error { return fmt.Errorf("replay: reading log: %w", err) }
