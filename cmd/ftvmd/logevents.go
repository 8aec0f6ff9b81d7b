package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ftvmd/ftvmd/replay"
)

// newLogEventsCmd lists a log's events around an instruction count: where a
// stalled replay stands (query-replay's icount) is the point after the
// INSTRUCTION events that sum to it, and the events listed there are the ones
// the replay must consume next.
func newLogEventsCmd() *cobra.Command {
	var at uint64
	var before, after int
	c := &cobra.Command{
		Use:   "events <file> --icount N",
		Short: "List the events around an instruction count (offset, icount before the event, kind, fields)",
		Args:  cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			if before < 0 || after < 0 {
				return errors.New("--before and --after must not be negative")
			}
			if err := checkWhole(args[0]); err != nil {
				return err
			}
			f, err := os.Open(args[0])
			if err != nil {
				return err
			}
			defer f.Close()
			hdr := make([]byte, replay.HeaderSize)
			if _, err := io.ReadFull(f, hdr); err != nil {
				return fmt.Errorf("%s: header: %w", args[0], err)
			}
			if err := replay.CheckHeader(hdr); err != nil && !errors.Is(err, replay.ErrRecording) {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			return listEvents(os.Stdout, replay.NewDecoder(f, replay.HeaderSize), at, before, after)
		},
	}
	c.Flags().Uint64Var(&at, "icount", 0, "instruction count to center on (the first event at or past it)")
	c.Flags().IntVar(&before, "before", 20, "events to show before it")
	c.Flags().IntVar(&after, "after", 40, "events to show from it on")
	return c
}

type placedEvent struct {
	ev     replay.Event
	icount uint64 // instructions executed before the event
	index  uint64 // event number from 0
}

// listEvents writes the before events preceding the first event whose
// preceding icount reaches at, that event (marked ">"), and after-1 more; at a
// point past the end, the last before events and where the log ends.
func listEvents(w io.Writer, d *replay.Decoder, at uint64, before, after int) error {
	ring := make([]placedEvent, 0, before)
	var n uint64
	shown := -1 // events shown from the centre on; -1 until the centre is found
	for shown < after {
		ic := d.Icount()
		ev, err := d.Next()
		if errors.Is(err, io.EOF) || errors.Is(err, replay.ErrTruncated) {
			// A point past the end (a live log read early): the last events.
			if shown < 0 {
				for _, r := range ring {
					fmt.Fprintln(w, "  "+r.line())
				}
			}
			fmt.Fprintf(w, "-- end of log at offset %d, icount %d (%d events)\n", d.Offset(), d.Icount(), n)
			return nil
		}
		if err != nil {
			return err
		}
		p := placedEvent{ev: ev, icount: ic, index: n}
		n++
		if shown < 0 {
			// The centre is the first event at or past at, except an
			// INSTRUCTION event that crosses it, which is the centre too.
			crosses := ev.Kind == replay.KindInstruction && ic+uint64(ev.Instructions) > at
			if ic < at && !crosses {
				if before > 0 {
					if len(ring) == before {
						ring = ring[1:]
					}
					ring = append(ring, p)
				}
				continue
			}
			for _, r := range ring {
				fmt.Fprintln(w, "  "+r.line())
			}
			fmt.Fprintln(w, "> "+p.line())
			shown = 1
			continue
		}
		fmt.Fprintln(w, "  "+p.line())
		shown++
	}
	return nil
}

func (p placedEvent) line() string {
	e := p.ev
	var b strings.Builder
	fmt.Fprintf(&b, "#%-9d off %-10d icount %-12d %-30s", p.index, e.Offset, p.icount, e.Kind)
	switch {
	case e.Kind == replay.KindInstruction:
		fmt.Fprintf(&b, " +%d", e.Instructions)
	case e.Kind == replay.KindClockHost || e.Kind == replay.KindClockVirtualRT:
		fmt.Fprintf(&b, " %d ns", e.Clock)
	case e.Kind == replay.KindAsyncNet:
		fmt.Fprintf(&b, " filter %d flags %#x len %d", e.Index, e.Flags, e.DataLen)
	case e.Kind == replay.KindAsyncBH || e.Kind == replay.KindAsyncBHOneshot || e.Kind == replay.KindAsyncBlock:
		fmt.Fprintf(&b, " id %d", e.ID)
	case e.Kind == replay.KindAsyncCharRead:
		fmt.Fprintf(&b, " chardev %d len %d", e.Index, e.DataLen)
	case e.Kind == replay.KindCharWrite:
		fmt.Fprintf(&b, " result %d written %d", e.Result, e.Written)
	case e.Kind == replay.KindRandom:
		fmt.Fprintf(&b, " ret %d len %d", e.Result, e.DataLen)
	}
	return strings.TrimRight(b.String(), " ")
}
