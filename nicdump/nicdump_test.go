package nicdump

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/sentinel"
)

// pcap is what QEMU's filter-dump writes (net/dump.c): a file header, then a record
// header and the bytes of each frame, in host order.
func pcap(order interface {
	binary.ByteOrder
	binary.AppendByteOrder
}, snap uint32, frames ...[]byte) []byte {
	b := order.AppendUint32(nil, magic)
	b = order.AppendUint16(b, 2)
	b = order.AppendUint16(b, 4)
	b = order.AppendUint32(b, 0)
	b = order.AppendUint32(b, 0)
	b = order.AppendUint32(b, snap)
	b = order.AppendUint32(b, linkEthernet)
	for i, f := range frames {
		b = order.AppendUint32(b, uint32(1700000000+i))
		b = order.AppendUint32(b, uint32(i))
		b = order.AppendUint32(b, uint32(len(f)))
		b = order.AppendUint32(b, uint32(len(f)))
		b = append(b, f...)
	}
	return b
}

func testFrames() [][]byte {
	var fs [][]byte
	for i := range 50 {
		f := bytes.Repeat([]byte{byte(i)}, 60+i*29)
		fs = append(fs, f)
	}
	return fs
}

func TestReaderReadsQEMUCapture(t *testing.T) {
	fs := testFrames()
	for _, order := range []interface {
		binary.ByteOrder
		binary.AppendByteOrder
	}{binary.LittleEndian, binary.BigEndian} {
		r := NewReader(bytes.NewReader(pcap(order, MaxFrame, fs...)))
		for i, want := range fs {
			f, wire, err := r.Next()
			if err != nil || !bytes.Equal(f, want) || wire != uint32(len(want)) {
				t.Fatalf("%v frame %d: %d bytes (wire %d), %v", order, i, len(f), wire, err)
			}
		}
		if _, _, err := r.Next(); err == nil {
			t.Fatalf("%v: a frame past the end", order)
		}
	}
}

// A stream that is not QEMU's capture is refused with ErrFormat, never a panic or a
// huge allocation.
func TestReaderRefusesGarbage(t *testing.T) {
	good := pcap(binary.LittleEndian, MaxFrame, []byte("0123456789abcdef"))
	bigSnap := pcap(binary.LittleEndian, MaxFrame+1)
	wrongLink := append([]byte(nil), good...)
	binary.LittleEndian.PutUint32(wrongLink[20:], 113)
	overCap := append([]byte(nil), good...)
	binary.LittleEndian.PutUint32(overCap[fileHeaderSize+8:], MaxFrame+1)
	capOverWire := append([]byte(nil), good...)
	binary.LittleEndian.PutUint32(capOverWire[fileHeaderSize+12:], 3)
	for name, b := range map[string][]byte{
		"magic": []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), "snapshot length": bigSnap, "link type": wrongLink,
		"record over snapshot": overCap, "captured over wire": capOverWire,
	} {
		if _, _, err := NewReader(bytes.NewReader(b)).Next(); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v, want %v", name, err, ErrFormat)
		}
	}
}

func FuzzReader(f *testing.F) {
	f.Add(pcap(binary.LittleEndian, MaxFrame, []byte("frame one......"), []byte("two")))
	f.Add(pcap(binary.BigEndian, 100, []byte("x")))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := NewReader(bytes.NewReader(b))
		for range 100 {
			fr, wire, err := r.Next()
			if err != nil {
				return
			}
			if len(fr) > MaxFrame || uint32(len(fr)) > wire {
				t.Fatalf("frame of %d bytes, wire %d", len(fr), wire)
			}
		}
	})
}

// A Capture reads what a writer (QEMU) puts in its FIFO, numbers the frames from 0,
// and once it stops the writer's next write fails rather than blocks.
func TestCaptureFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tx.pcap")
	c, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(path, os.O_WRONLY, 0) // as QEMU opens it: does not block
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	fs := testFrames()
	var mu sync.Mutex
	var got []sentinel.Digest
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, 8, nil, func() int64 { return 4242 }, func(ds []sentinel.Digest) {
			if len(ds) > 8 || ds[len(ds)-1].At != 4242 {
				t.Errorf("batch of %d, last at %d", len(ds), ds[len(ds)-1].At)
			}
			mu.Lock()
			got = append(got, ds...)
			mu.Unlock()
		})
	}()
	stream := pcap(binary.LittleEndian, MaxFrame, fs...)
	// In pieces, as frames come.
	for len(stream) > 0 {
		k := min(len(stream), 333)
		if _, err := w.Write(stream[:k]); err != nil {
			t.Fatal(err)
		}
		stream = stream[k:]
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == len(fs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d frames read", n, len(fs))
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i, d := range got {
		if d.Seq != uint64(i) || d.Len != uint32(len(fs[i])) || d.Hash != sentinel.FrameHash(fs[i]) {
			t.Fatalf("digest %d: %+v", i, d)
		}
	}
	if n, _ := c.Stats(); n != uint64(len(fs)) {
		t.Fatalf("stats: %d frames", n)
	}
	stopRun(t, cancel, done)
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("FIFO left behind: %v", err)
	}
	// No reader any more: the writer gets EPIPE (QEMU stops dumping), never blocks.
	if _, err := w.Write(make([]byte, 64<<10)); err == nil {
		t.Fatal("write to a FIFO nobody reads succeeded")
	}
}

// A trickle of frames (a guest's ACKs while it receives a bulk stream) is read in
// batches, not a read and a batch per frame: after a small batch Run lets frames
// gather for Gather. The writer here puts a frame in the FIFO every 100 us for
// 200 frames; read as they came, that was up to 200 batches.
func TestCaptureGathersATrickle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tx.pcap")
	c, err := Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	const n = 200
	var mu sync.Mutex
	var frames, batches int
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- c.Run(ctx, 512, nil, nil, func(ds []sentinel.Digest) {
			mu.Lock()
			frames += len(ds)
			batches++
			mu.Unlock()
		})
	}()
	stream := pcap(binary.LittleEndian, MaxFrame)
	if _, err := w.Write(stream); err != nil {
		t.Fatal(err)
	}
	f := bytes.Repeat([]byte{0xab}, 66)
	rec := pcap(binary.LittleEndian, MaxFrame, f)[24:] // one record, no file header
	start := time.Now()
	for range n {
		if _, err := w.Write(rec); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Microsecond)
	}
	elapsed := time.Since(start)
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		got, b := frames, batches
		mu.Unlock()
		if got == n {
			t.Logf("%d frames written over %s read in %d batches", n, elapsed.Round(time.Millisecond), b)
			// At most one batch per Gather of writing, and a few more for timer slack.
			if max := int(elapsed/Gather) + 5; b > max {
				t.Fatalf("%d frames in %d batches over %s: more than %d", n, b, elapsed, max)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d frames read", got, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	stopRun(t, cancel, done)
}

// stopRun cancels a Capture's Run and waits (5 s at most) for it to return nil.
func stopRun(t *testing.T, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}
