// Package nicdump reads the frames a guest's NIC transmits, as its QEMU captures
// them, for the divergence sentinel (package sentinel).
//
// QEMU's filter-dump object, attached to the NIC's netdev on its receive queue
// (qemu.NIC.TxDump), writes every frame the guest transmits to a file in pcap format,
// before the rest of the netdev's filters see it: on the primary before the frame
// leaves (or is dropped by a full socket), on a replaying backup before
// filter-replay swallows it. The file is a FIFO this package creates and reads, so
// nothing grows on disk. The reader holds the FIFO open for reading and writing:
// QEMU's open never blocks and a read never sees end of file; when the reader
// closes it, QEMU's next write fails (QEMU ignores SIGPIPE) and QEMU stops dumping
// for good, so an agent that goes away never stalls its guest. An agent that stops
// reading while holding the FIFO does stall the guest's transmissions once the
// pipe (1 MiB) is full: Capture.Run reads until it is told to stop, then closes.
package nicdump

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/sentinel"
)

// MaxFrame is the snapshot length asked of filter-dump (its maxlen): QEMU's largest
// net buffer (NET_BUFSIZE, 4096+65536), so every frame is captured whole.
const MaxFrame = 4096 + 65536

// PipeSize is the FIFO's buffer, asked for with F_SETPIPE_SZ: room for a few hundred
// frames while the reader is descheduled.
const PipeSize = 1 << 20

// Gather is how long Run lets frames gather in the FIFO after it emptied it with a
// small batch (under a quarter of its largest) before it reads again. A guest that
// receives a bulk stream transmits a trickle of small frames (its ACKs): read as they
// came, each was a read, a wake-up and a batch of its own on both agents, and on the
// primary a digest message on the log channel. The pipe (PipeSize) fills in Gather
// only above 500 MB/s, and a busier guest fills the batches, which Run then reads
// without pausing.
const Gather = 2 * time.Millisecond

// ErrFormat: the stream is not the pcap QEMU writes, or is corrupt.
var ErrFormat = errors.New("nicdump: not a QEMU packet capture")

const (
	fileHeaderSize   = 24
	recordHeaderSize = 16
	magic            = 0xa1b2c3d4
	linkEthernet     = 1
)

// Reader reads frames from a pcap stream.
type Reader struct {
	r      *bufio.Reader
	order  binary.ByteOrder
	snap   uint32
	frame  []byte
	header bool
}

// NewReader reads the pcap stream r.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, 256<<10), frame: make([]byte, MaxFrame)}
}

// Buffered reports whether a frame can be read without waiting for the writer (a
// whole one may not be there yet).
func (r *Reader) Buffered() bool { return r.r.Buffered() > 0 }

// Next returns the next frame's captured bytes (valid until the next call) and its
// length on the wire (larger only if QEMU truncated it, which MaxFrame prevents).
// Errors: ErrFormat for a stream that is not QEMU's capture, or the reader's.
func (r *Reader) Next() ([]byte, uint32, error) {
	if !r.header {
		var h [fileHeaderSize]byte
		if _, err := io.ReadFull(r.r, h[:]); err != nil {
			return nil, 0, fmt.Errorf("nicdump: file header: %w", err)
		}
		switch {
		case binary.LittleEndian.Uint32(h[:]) == magic:
			r.order = binary.LittleEndian
		case binary.BigEndian.Uint32(h[:]) == magic:
			r.order = binary.BigEndian
		default:
			return nil, 0, fmt.Errorf("%w: magic %x", ErrFormat, h[:4])
		}
		r.snap = r.order.Uint32(h[16:])
		if lt := r.order.Uint32(h[20:]); lt != linkEthernet {
			return nil, 0, fmt.Errorf("%w: link type %d, want Ethernet", ErrFormat, lt)
		}
		if r.snap == 0 || r.snap > MaxFrame {
			return nil, 0, fmt.Errorf("%w: snapshot length %d, want 1..%d", ErrFormat, r.snap, MaxFrame)
		}
		r.header = true
	}
	var h [recordHeaderSize]byte
	if _, err := io.ReadFull(r.r, h[:]); err != nil {
		return nil, 0, fmt.Errorf("nicdump: record header: %w", err)
	}
	caplen, wire := r.order.Uint32(h[8:]), r.order.Uint32(h[12:])
	if caplen > r.snap || caplen > wire {
		return nil, 0, fmt.Errorf("%w: record of %d bytes captured, %d on the wire, snapshot length %d", ErrFormat, caplen, wire, r.snap)
	}
	f := r.frame[:caplen]
	if _, err := io.ReadFull(r.r, f); err != nil {
		return nil, 0, fmt.Errorf("nicdump: frame of %d bytes: %w", caplen, err)
	}
	return f, wire, nil
}

// Digest is a frame's sentinel digest (its number left 0): the length on the wire
// and the checksum of the captured bytes.
func Digest(frame []byte, wire uint32) sentinel.Digest {
	return sentinel.Digest{Len: wire, Hash: sentinel.FrameHash(frame)}
}

// Capture is a FIFO that a QEMU's filter-dump writes to.
type Capture struct {
	path   string
	f      *os.File
	frames atomic.Uint64
	bytes  atomic.Uint64
}

// Create makes the FIFO at path (replacing a stale one) and opens it, before the
// QEMU that writes to it starts. Close it (Run does) when done.
func Create(path string) (*Capture, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("nicdump: remove stale %s: %w", path, err)
	}
	if err := unix.Mkfifo(path, 0o600); err != nil {
		return nil, fmt.Errorf("nicdump: mkfifo %s: %w", path, err)
	}
	// Read-write: QEMU's open for writing finds a reader, and reads never see end
	// of file while QEMU restarts or has not opened it yet.
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		_ = os.Remove(path)
		return nil, fmt.Errorf("nicdump: open %s: %w", path, err)
	}
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, PipeSize) })
	}
	return &Capture{path: path, f: f}, nil
}

// Path is the FIFO's path, for QEMU's filter-dump.
func (c *Capture) Path() string { return c.path }

// Stats returns the frames and bytes read so far.
func (c *Capture) Stats() (frames, bytes uint64) { return c.frames.Load(), c.bytes.Load() }

// Close closes the FIFO (QEMU stops dumping at its next frame) and removes it.
func (c *Capture) Close() error {
	err := c.f.Close()
	if errors.Is(err, os.ErrClosed) {
		err = nil
	}
	if rerr := os.Remove(c.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

// Run reads the capture until ctx ends (nil) or the stream fails (an error), then
// closes the FIFO. It hands emit the digests of the frames it read, numbered from 0,
// with their checksums by hash (nil: sentinel.FrameHash), in batches of at most max,
// a batch as soon as the FIFO holds no more (after a small one it waits Gather
// before reading on); at is called once per batch (nil: 0) and its value stored in
// the last digest's At. emit must not block for long: while it does, QEMU's
// transmissions wait once the pipe is full.
func (c *Capture) Run(ctx context.Context, max int, hash func([]byte) uint64, at func() int64, emit func([]sentinel.Digest)) error {
	if hash == nil {
		hash = sentinel.FrameHash
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { _ = c.f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	r := NewReader(c.f)
	gather := time.NewTimer(Gather)
	gather.Stop()
	defer gather.Stop()
	var seq uint64
	batch := make([]sentinel.Digest, 0, max)
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if at != nil {
			batch[len(batch)-1].At = at()
		}
		emit(batch)
		batch = make([]sentinel.Digest, 0, max)
	}
	for {
		f, wire, err := r.Next()
		if err != nil {
			flush()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		d := sentinel.Digest{Seq: seq, Len: wire, Hash: hash(f)}
		seq++
		c.frames.Add(1)
		c.bytes.Add(uint64(len(f)))
		batch = append(batch, d)
		if len(batch) == max || !r.Buffered() {
			small := len(batch) < max/4
			flush()
			if small && !r.Buffered() {
				gather.Reset(Gather)
				select {
				case <-ctx.Done():
				case <-gather.C:
				}
			}
		}
	}
}
