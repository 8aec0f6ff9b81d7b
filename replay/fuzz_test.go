package replay

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func readSeed(t testing.TB) []byte {
	t.Helper()
	// seed.rr: a real Debian 12 QEMU 7.2.22 recording (-M pc, BIOS, shift=4,
	// -serial file), its first ~4.3 KB and its last ~700 bytes joined at
	// event boundaries, so it holds INIT, RESET, clocks, CHAR_WRITE,
	// BH_ONESHOT, INTERRUPT, EXCEPTION, SHUTDOWN and END.
	b, err := os.ReadFile(filepath.Join("testdata", "seed.rr"))
	if err != nil {
		t.Fatalf("reading seed log: %v", err)
	}
	return b
}

// decodeAll runs a Decoder to its first error.
func decodeAll(body []byte, start int64) ([]Event, *Decoder, error) {
	d := NewDecoder(bytes.NewReader(body), start)
	var evs []Event
	for {
		e, err := d.Next()
		if err != nil {
			return evs, d, err
		}
		evs = append(evs, e)
	}
}

// checkAgreement asserts that the Decoder, a Cutter fed in chunks whose
// sizes come from sizes, and LastBoundary all tell the same story.
func checkAgreement(t *testing.T, body []byte, sizes []byte) {
	const start = HeaderSize
	evs, d, derr := decodeAll(body, start)
	var ce *CorruptError
	isCorrupt := errors.As(derr, &ce)
	switch {
	case derr == io.EOF, errors.Is(derr, ErrTruncated), isCorrupt:
	default:
		t.Fatalf("decoder returned undocumented error %T %v", derr, derr)
	}
	var sum uint64
	off := int64(start)
	for _, e := range evs {
		if e.Offset != off || e.Size < 1 || !e.Kind.Valid() {
			t.Fatalf("bad event %+v at %d", e, off)
		}
		off += int64(e.Size)
		sum += uint64(e.Instructions)
	}
	if sum != d.Icount() || off != d.Offset() {
		t.Fatalf("decoder icount %d/%d offset %d/%d", d.Icount(), sum, d.Offset(), off)
	}

	c := NewCutter(start, 0)
	var cevs []Event
	c.OnEvent(func(e Event) { cevs = append(cevs, e) })
	rest := body
	var cerr error
	for i := 0; len(rest) > 0 && cerr == nil; i++ {
		n := 1
		if len(sizes) > 0 {
			n = int(sizes[i%len(sizes)]) + 1
		}
		n = min(n, len(rest))
		_, cerr = c.Write(rest[:n])
		rest = rest[n:]
	}
	if len(cevs) != len(evs) {
		t.Fatalf("cutter saw %d events, decoder %d", len(cevs), len(evs))
	}
	for i := range evs {
		if cevs[i] != evs[i] {
			t.Fatalf("event %d: cutter %+v decoder %+v", i, cevs[i], evs[i])
		}
	}
	if c.Boundary() != off || c.Icount() != sum || c.Events() != uint64(len(evs)) {
		t.Fatalf("cutter boundary %d icount %d, want %d %d", c.Boundary(), c.Icount(), off, sum)
	}
	switch {
	case isCorrupt:
		var cce *CorruptError
		if !errors.As(cerr, &cce) || *cce != *ce {
			t.Fatalf("cutter error %v, decoder %v", cerr, derr)
		}
	case derr == io.EOF:
		if cerr != nil || c.Pending() != 0 {
			t.Fatalf("clean EOF but cutter err %v pending %d", cerr, c.Pending())
		}
	default: // truncated
		if cerr != nil || c.Pending() == 0 || c.Boundary()+c.Pending() != start+int64(len(body)) {
			t.Fatalf("truncated but cutter err %v pending %d", cerr, c.Pending())
		}
	}
	lb, lic, lerr := LastBoundary(bytes.NewReader(body), start, 0)
	if lb != off || lic != sum || (lerr != nil) != isCorrupt {
		t.Fatalf("LastBoundary %d %d %v", lb, lic, lerr)
	}
}

func FuzzDecoder(f *testing.F) {
	seed := readSeed(f)
	body := seed[HeaderSize:]
	f.Add(body, []byte{0})
	f.Add(body[:1000], []byte{7, 200, 3})
	f.Add(body[len(body)-300:], []byte{255})
	f.Add(ev(KindAsyncNet, uint8(0), uint32(1), uint32(3), []byte{1, 2, 3}), []byte{1})
	f.Add(ev(KindAsyncInput, uint32(0), uint32(0), int64(1), uint8(1)), []byte{2})
	f.Add(ev(KindRandom, uint32(0), uint32(2), []byte{9, 9}), []byte{0})
	f.Fuzz(func(t *testing.T, body, sizes []byte) {
		checkAgreement(t, body, sizes)
	})
}
