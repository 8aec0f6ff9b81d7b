package main

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/ftvmd/ftvmd/replay"
)

// listEvents on a real QEMU 7.2 log: the centre is the INSTRUCTION event whose
// span holds the asked icount, its neighbours come in log order, and a point
// past the end lists the last events and where the log ends.
func TestListEventsAroundIcount(t *testing.T) {
	f, err := os.Open("../../replay/testdata/seed.rr")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sum, err := replay.Summarize(f)
	if err != nil {
		t.Fatal(err)
	}
	list := func(at uint64, before, after int) []string {
		t.Helper()
		if _, err := f.Seek(replay.HeaderSize, 0); err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := listEvents(&b, replay.NewDecoder(f, replay.HeaderSize), at, before, after); err != nil {
			t.Fatal(err)
		}
		return strings.Split(strings.TrimSpace(b.String()), "\n")
	}

	mid := sum.Icount / 2
	lines := list(mid, 3, 4)
	if len(lines) != 7 || !strings.HasPrefix(lines[3], "> ") {
		t.Fatalf("want 3 events, the centre, 3 more; got\n%s", strings.Join(lines, "\n"))
	}
	var idx, off, icount, delta uint64
	var kind string
	if _, err := fmt.Sscanf(lines[3], "> #%d off %d icount %d %s +%d", &idx, &off, &icount, &kind, &delta); err != nil {
		t.Fatalf("centre %q: %v", lines[3], err)
	}
	if kind != "INSTRUCTION" || icount > mid || icount+delta <= mid {
		t.Fatalf("centre %q does not span icount %d", lines[3], mid)
	}
	var prevIdx uint64
	if _, err := fmt.Sscanf(lines[2], "  #%d", &prevIdx); err != nil || prevIdx != idx-1 {
		t.Fatalf("line before the centre %q (%v)", lines[2], err)
	}

	lines = list(sum.Icount+1, 2, 5)
	want := fmt.Sprintf("-- end of log at offset %d, icount %d (%d events)", sum.Boundary, sum.Icount, sum.Events)
	if len(lines) != 3 || lines[2] != want || !strings.Contains(lines[1], "END") {
		t.Fatalf("past the end: want the last 2 events and %q, got\n%s", want, strings.Join(lines, "\n"))
	}
}
