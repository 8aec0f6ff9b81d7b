package replay

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// ev builds one event: the code byte followed by the payload pieces,
// each encoded big-endian by its Go type.
func ev(k Kind, parts ...any) []byte {
	var b bytes.Buffer
	b.WriteByte(byte(k))
	for _, p := range parts {
		if err := binary.Write(&b, binary.BigEndian, p); err != nil {
			panic(err) // test helper with fixed inputs
		}
	}
	return b.Bytes()
}

func arr(n int) []any { return []any{uint32(n), make([]byte, n)} }

func TestEveryKindSize(t *testing.T) {
	type tc struct {
		name string
		b    []byte
		want Event
	}
	cases := []tc{
		{"instruction", ev(KindInstruction, uint32(1234)), Event{Kind: KindInstruction, Size: 5, Instructions: 1234}},
		{"interrupt", ev(KindInterrupt), Event{Kind: KindInterrupt, Size: 1}},
		{"exception", ev(KindException), Event{Kind: KindException, Size: 1}},
		{"bh", ev(KindAsyncBH, uint64(7)), Event{Kind: KindAsyncBH, Size: 9, ID: 7}},
		{"bh oneshot", ev(KindAsyncBHOneshot, uint64(8)), Event{Kind: KindAsyncBHOneshot, Size: 9, ID: 8}},
		{"input key number", ev(KindAsyncInput, uint32(0), uint32(0), int64(30), uint8(1)), Event{Kind: KindAsyncInput, Size: 18}},
		{"input key qcode", ev(KindAsyncInput, uint32(0), uint32(1), uint32(30), uint8(1)), Event{Kind: KindAsyncInput, Size: 14}},
		{"input btn", ev(KindAsyncInput, uint32(1), uint32(2), uint8(0)), Event{Kind: KindAsyncInput, Size: 10, InputKind: 1}},
		{"input rel", ev(KindAsyncInput, uint32(2), uint32(1), int64(-5)), Event{Kind: KindAsyncInput, Size: 17, InputKind: 2}},
		{"input abs", ev(KindAsyncInput, uint32(3), uint32(0), int64(500)), Event{Kind: KindAsyncInput, Size: 17, InputKind: 3}},
		{"input sync", ev(KindAsyncInputSync), Event{Kind: KindAsyncInputSync, Size: 1}},
		{"char read", ev(KindAsyncCharRead, append([]any{uint8(2)}, arr(3)...)...), Event{Kind: KindAsyncCharRead, Size: 9, Index: 2, DataLen: 3}},
		{"block", ev(KindAsyncBlock, uint64(0)), Event{Kind: KindAsyncBlock, Size: 9}},
		{"net", ev(KindAsyncNet, append([]any{uint8(1), uint32(1)}, arr(60)...)...), Event{Kind: KindAsyncNet, Size: 70, Index: 1, Flags: 1, DataLen: 60}},
		{"net empty", ev(KindAsyncNet, append([]any{uint8(0), uint32(0)}, arr(0)...)...), Event{Kind: KindAsyncNet, Size: 10}},
		{"shutdown none", ev(KindShutdown), Event{Kind: KindShutdown, Size: 1}},
		{"shutdown signal", ev(KindShutdownHostSignal), Event{Kind: KindShutdownHostSignal, Size: 1}},
		{"shutdown last", ev(KindShutdownLast), Event{Kind: KindShutdownLast, Size: 1}},
		{"char write", ev(KindCharWrite, int32(-11), uint32(0)), Event{Kind: KindCharWrite, Size: 9, Result: -11}},
		{"char read all", ev(KindCharReadAll, arr(4)...), Event{Kind: KindCharReadAll, Size: 9, DataLen: 4}},
		{"char read all error", ev(KindCharReadAllError, int32(-5)), Event{Kind: KindCharReadAllError, Size: 5, Result: -5}},
		{"audio out", ev(KindAudioOut, uint64(99)), Event{Kind: KindAudioOut, Size: 9, ID: 99}},
		{"random", ev(KindRandom, append([]any{int32(0)}, arr(32)...)...), Event{Kind: KindRandom, Size: 41, DataLen: 32}},
		{"clock host", ev(KindClockHost, int64(-1)), Event{Kind: KindClockHost, Size: 9, Clock: -1}},
		{"clock vrt", ev(KindClockVirtualRT, int64(5)), Event{Kind: KindClockVirtualRT, Size: 9, Clock: 5}},
		{"end", ev(KindEnd), Event{Kind: KindEnd, Size: 1}},
	}
	for k := KindCheckpoint; k <= KindCheckpointReset; k++ {
		cases = append(cases, tc{k.String(), ev(k), Event{Kind: k, Size: 1}})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			c.want.Offset = 100
			d := NewDecoder(bytes.NewReader(c.b), 100)
			got, err := d.Next()
			if err != nil {
				t.Fatalf("Next: %v", err)
			}
			if got != c.want {
				t.Fatalf("got %+v\nwant %+v", got, c.want)
			}
			if _, err := d.Next(); err != io.EOF {
				t.Fatalf("after event: %v, want io.EOF", err)
			}
			// Every strict prefix is a truncation.
			for i := 1; i < len(c.b); i++ {
				_, err := NewDecoder(bytes.NewReader(c.b[:i]), 100).Next()
				if !errors.Is(err, ErrTruncated) || !errors.Is(err, io.ErrUnexpectedEOF) {
					t.Fatalf("prefix %d: %v, want ErrTruncated", i, err)
				}
			}
			// The Cutter agrees when fed byte by byte.
			cu := NewCutter(100, 0)
			var seen []Event
			cu.OnEvent(func(e Event) { seen = append(seen, e) })
			for i := range c.b {
				if cu.Boundary() != 100 || cu.Events() != 0 {
					t.Fatalf("boundary moved after %d bytes", i)
				}
				if _, err := cu.Write(c.b[i : i+1]); err != nil {
					t.Fatal(err)
				}
			}
			if len(seen) != 1 || seen[0] != c.want || cu.Boundary() != 100+int64(len(c.b)) || cu.Pending() != 0 {
				t.Fatalf("cutter saw %+v boundary %d", seen, cu.Boundary())
			}
		})
	}
}

func TestKindString(t *testing.T) {
	for k := 0; k < 256; k++ {
		if Kind(k).String() == "" {
			t.Fatalf("empty name for %d", k)
		}
	}
	if KindCheckpointInit.String() != "CHECKPOINT_INIT" || Kind(40).String() != "UNKNOWN(40)" {
		t.Fatal("bad names")
	}
	if KindShutdownGuestReset.ShutdownCause() != 7 || KindEnd.ShutdownCause() != -1 {
		t.Fatal("bad shutdown cause")
	}
}

func TestCheckHeader(t *testing.T) {
	good := []byte{0x00, 0xe0, 0x20, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0}
	if err := CheckHeader(good); err != nil {
		t.Fatal(err)
	}
	if err := CheckHeader(make([]byte, 12)); !errors.Is(err, ErrRecording) {
		t.Fatalf("zero version: %v", err)
	}
	bad := append([]byte{}, good...)
	bad[3] = 0x0b
	if err := CheckHeader(bad); err == nil || errors.Is(err, ErrRecording) {
		t.Fatalf("old version accepted: %v", err)
	}
	if err := CheckHeader(good[:11]); err == nil {
		t.Fatal("short header accepted")
	}
}

func TestCorrupt(t *testing.T) {
	prefix := append(ev(KindInstruction, uint32(10)), ev(KindCheckpointInit)...) // 6 bytes
	cases := []struct {
		name string
		bad  []byte
	}{
		{"unknown kind 40", []byte{40}},
		{"unknown kind 255", []byte{255, 1, 2, 3}},
		{"huge net array", ev(KindAsyncNet, uint8(0), uint32(0), uint32(MaxArray+1))},
		{"huge char read all", ev(KindCharReadAll, uint32(0xffffffff))},
		{"huge random", ev(KindRandom, uint32(0), uint32(1<<30))},
		{"huge char read", ev(KindAsyncCharRead, uint8(0), uint32(1<<25))},
		{"audio in", ev(KindAudioIn, uint64(1), uint64(1))},
		{"input kind", ev(KindAsyncInput, uint32(4))},
		{"key kind", ev(KindAsyncInput, uint32(0), uint32(2))},
		{"negative icount", ev(KindInstruction, uint32(1<<31))},
		{"data after end", append(ev(KindEnd), 0)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			const start = HeaderSize
			in := append(append([]byte{}, prefix...), c.bad...)
			wantOff := int64(start + len(prefix))
			if c.name == "data after end" {
				wantOff++
			}
			d := NewDecoder(bytes.NewReader(in), start)
			var err error
			for err == nil {
				_, err = d.Next()
			}
			var ce *CorruptError
			if !errors.As(err, &ce) || ce.Offset != wantOff {
				t.Fatalf("decoder: %v, want CorruptError at %d", err, wantOff)
			}
			if _, err2 := d.Next(); err2 != err {
				t.Fatalf("decoder error not sticky: %v", err2)
			}
			cu := NewCutter(start, 0)
			n, err := cu.Write(in)
			if !errors.As(err, &ce) || ce.Offset != wantOff {
				t.Fatalf("cutter: %v, want CorruptError at %d", err, wantOff)
			}
			if int64(n) != wantOff-start || cu.Boundary() != wantOff || cu.Icount() != 10 {
				t.Fatalf("cutter n=%d boundary=%d icount=%d", n, cu.Boundary(), cu.Icount())
			}
			if _, err2 := cu.Write([]byte{1}); err2 != err {
				t.Fatalf("cutter error not sticky: %v", err2)
			}
			off, ic, err := LastBoundary(bytes.NewReader(in), start, 5)
			if !errors.As(err, &ce) || off != wantOff || ic != 15 {
				t.Fatalf("LastBoundary %d %d %v", off, ic, err)
			}
		})
	}
}

func TestDecoderEOFNotSticky(t *testing.T) {
	// A Decoder on a growing file sees io.EOF, then more events.
	var buf bytes.Buffer
	d := NewDecoderAt(&buf, HeaderSize, 100)
	if _, err := d.Next(); err != io.EOF {
		t.Fatal(err)
	}
	buf.Write(ev(KindInstruction, uint32(5)))
	e, err := d.Next()
	if err != nil || e.Instructions != 5 || d.Icount() != 105 || d.Offset() != HeaderSize+5 {
		t.Fatalf("%+v %v icount %d", e, err, d.Icount())
	}
}

func TestMarks(t *testing.T) {
	var in []byte
	in = append(in, ev(KindInstruction, uint32(3))...)
	in = append(in, ev(KindInterrupt)...)
	in = append(in, ev(KindInstruction, uint32(4))...)
	c := NewCutter(HeaderSize, 10)
	var marks []Mark
	c.OnMark(func(m Mark) { marks = append(marks, m) })
	if _, err := c.Write(in); err != nil {
		t.Fatal(err)
	}
	want := []Mark{{HeaderSize + 5, 13}, {HeaderSize + 11, 17}}
	if len(marks) != 2 || marks[0] != want[0] || marks[1] != want[1] {
		t.Fatalf("marks %v want %v", marks, want)
	}
}

func TestSummarizeSeed(t *testing.T) {
	data := readSeed(t)
	s, err := Summarize(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Finished || !s.SawEnd || s.Truncated || s.Bytes != int64(len(data)) || s.Boundary != int64(len(data)) {
		t.Fatalf("%+v", s)
	}
	if s.Counts[KindEnd] != 1 || s.Counts[KindCheckpointInit] != 1 || s.Counts[KindCharWrite] == 0 {
		t.Fatalf("counts %v", s.Counts)
	}
	// A recording in progress: zero version, cut mid-event.
	live := append(make([]byte, HeaderSize), data[HeaderSize:len(data)-3]...)
	live = append(live, byte(KindInstruction), 0)
	s, err = Summarize(bytes.NewReader(live))
	if err != nil || s.Finished || !s.Truncated || s.SawEnd {
		t.Fatalf("live: %+v %v", s, err)
	}
	if _, err := Summarize(bytes.NewReader([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})); err == nil {
		t.Fatal("bad version accepted")
	}
}

// TestSummarizeShutdownIcount: the icount at the first SHUTDOWN is where a replay
// that pauses on shutdown stops; instructions the recording ran after it count in
// Icount only.
func TestSummarizeShutdownIcount(t *testing.T) {
	data := make([]byte, HeaderSize)
	copy(data, readSeed(t)[:HeaderSize])
	for _, e := range [][]byte{
		ev(KindInstruction, uint32(1000)),
		ev(KindShutdownHostQMPQuit),
		ev(KindInstruction, uint32(2547)),
		ev(KindShutdownHostSignal),
		ev(KindEnd),
	} {
		data = append(data, e...)
	}
	s, err := Summarize(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if !s.SawShutdown || s.ShutdownIcount != 1000 || s.Icount != 3547 {
		t.Fatalf("shutdown %v at %d, icount %d; want at 1000 of 3547", s.SawShutdown, s.ShutdownIcount, s.Icount)
	}
	s, err = Summarize(bytes.NewReader(append(data[:HeaderSize:HeaderSize], ev(KindInstruction, uint32(5))...)))
	if err != nil || s.SawShutdown || s.ShutdownIcount != 0 {
		t.Fatalf("no shutdown: %+v %v", s, err)
	}
}
