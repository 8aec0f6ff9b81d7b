package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// LogHeaderSize is the rr log header length; events start at this offset.
const LogHeaderSize = 12

// logVersion is the header's first dword, the only part replay checks.
var logVersion = [4]byte{0x00, 0xe0, 0x20, 0x0c}

// FeedOpt configures a Feed.
type FeedOpt func(*Feed)

// WithFeedLogger sets the Feed's logger.
func WithFeedLogger(l *slog.Logger) FeedOpt { return func(f *Feed) { f.log = l } }

// WithFeedPoll makes the Feed also poll size every interval (for example
// the recorder's file size), in addition to Notify.
func WithFeedPoll(interval time.Duration, size func() (int64, error)) FeedOpt {
	return func(f *Feed) { f.pollEvery, f.pollSize = interval, size }
}

// WithFeedStart makes the Feed give a replay that loads a snapshot saved
// while recording (Config.RRSnapshot or LoadVM) the log from the snapshot's
// position (SnapshotReplayState.LogOffset) rather than from its start. A
// replay reads the first event's kind when it opens its log, before it loads
// the snapshot; the snapshot's load then seeks to its position, which a FIFO
// cannot do, and reads the next kind where the stream stands. So the Feed
// writes the version, one inert event kind for that first read (EVENT_END,
// which nothing consumes; the load overwrites the kind read), and then the log
// from offset.
func WithFeedStart(offset int64) FeedOpt { return func(f *Feed) { f.startAt = offset } }

// eventEnd is EVENT_END's kind byte (replay-internal.h; qemu-rr-reference.md).
const eventEnd = 39

// Feed streams a growing rr log to a replaying QEMU through a FIFO: the 4
// version bytes, then the log body from offset 12 of the source file as it
// grows. QEMU's seek past the header fails harmlessly on the pipe; feeding
// all 12 header bytes would misparse. The FIFO stays open until Close
// because replay exits on EOF.
type Feed struct {
	fifo string
	src  string
	log  *slog.Logger

	pollEvery time.Duration
	pollSize  func() (int64, error)
	startAt   int64 // WithFeedStart; 0 feeds the whole log

	out    atomic.Pointer[fifoWriter] // the FIFO's write end once a reader opened it
	upTo   atomic.Int64               // source offset known to be written
	fed    atomic.Int64               // source offset written into the FIFO
	wake   chan struct{}
	ctl    chan feedCtl // Halt and Finish requests (golive.go)
	cancel context.CancelFunc
	done   chan struct{}
	err    error // set before done closes

	closeOnce sync.Once
}

// NewFeed creates the FIFO at fifoPath (it must not exist) and starts the
// goroutine that feeds it from srcPath. The goroutine waits for a reader
// (the replaying QEMU) and for the source to grow; it never blocks callers.
func NewFeed(fifoPath, srcPath string, opts ...FeedOpt) (*Feed, error) {
	f := &Feed{
		fifo: fifoPath,
		src:  srcPath,
		log:  slog.Default(),
		wake: make(chan struct{}, 1),
		ctl:  make(chan feedCtl),
		done: make(chan struct{}),
	}
	for _, o := range opts {
		o(f)
	}
	if f.startAt != 0 && f.startAt < LogHeaderSize {
		return nil, fmt.Errorf("feed start %d is inside the log header", f.startAt)
	}
	if err := unix.Mkfifo(fifoPath, 0o600); err != nil {
		return nil, fmt.Errorf("mkfifo %s: %w", fifoPath, err)
	}
	f.fed.Store(max(f.startAt, LogHeaderSize))
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	go f.run(ctx)
	return f, nil
}

// Path is the FIFO's path, for the replaying QEMU's rrfile=.
func (f *Feed) Path() string { return f.fifo }

// Notify tells the Feed the source file holds at least upTo bytes. It never
// blocks.
func (f *Feed) Notify(upTo int64) {
	for {
		cur := f.upTo.Load()
		if upTo <= cur || f.upTo.CompareAndSwap(cur, upTo) {
			break
		}
	}
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// FedOffset is the source offset fed so far (LogHeaderSize before any body).
func (f *Feed) FedOffset() int64 { return f.fed.Load() }

// Unread is the number of bytes written into the FIFO that its reader has not
// read yet (FIONREAD, alias TIOCINQ, counts a pipe's buffered bytes from either end); ok is
// false before a reader opened the FIFO or when the count cannot be had. A
// replay whose thread sits in read(2) on the FIFO but has bytes waiting there
// is not drained: it is stopped (SIGSTOP, a frozen host) before it could run.
func (f *Feed) Unread() (n int, ok bool) {
	out := f.out.Load()
	if out == nil {
		return 0, false
	}
	n, err := out.Queued()
	if err != nil {
		return 0, false
	}
	return n, true
}

// FeedState is what the feed is doing, for a stall report: which side of the
// FIFO waits for the other.
type FeedState struct {
	Fed    int64 // source offset written into the FIFO
	UpTo   int64 // source offset it may feed up to
	Unread int   // bytes in the FIFO the replay has not read (-1: unknown)
	Pipe   int   // the FIFO's capacity (0: unknown)
	// Blocked is how many bytes of a write wait for room in the FIFO, and
	// BlockedFor since when: the feed waits for the replay to read.
	Blocked    int64
	BlockedFor time.Duration
}

// State reports the feed's position and whether it waits for its reader.
func (f *Feed) State() FeedState {
	st := FeedState{Fed: f.fed.Load(), UpTo: f.upTo.Load(), Unread: -1}
	if out := f.out.Load(); out != nil {
		if n, err := out.Queued(); err == nil {
			st.Unread = n
		}
		if n, err := out.Capacity(); err == nil {
			st.Pipe = n
		}
		st.Blocked, st.BlockedFor = out.Blocked()
	}
	return st
}

// Done is closed when the feeding goroutine has ended.
func (f *Feed) Done() <-chan struct{} { return f.done }

// Err is the goroutine's error after Done; nil if it ended through Close.
func (f *Feed) Err() error {
	select {
	case <-f.done:
		return f.err
	default:
		return nil
	}
}

// Close stops feeding, closes the FIFO (the reader then sees EOF) and
// removes it.
func (f *Feed) Close() error {
	var err error
	f.closeOnce.Do(func() {
		f.cancel()
		<-f.done
		err = f.err
		if rerr := os.Remove(f.fifo); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, fmt.Errorf("remove fifo: %w", rerr))
		}
	})
	return err
}

func (f *Feed) run(ctx context.Context) {
	err := f.feed(ctx)
	if ctx.Err() != nil {
		err = nil // ended by Close
	}
	if err != nil {
		f.log.Warn("rr feed stopped", "fifo", f.fifo, "fed", f.fed.Load(), "err", err)
	}
	f.err = err
	close(f.done)
}

func (f *Feed) feed(ctx context.Context) error {
	out, err := f.openWriter(ctx)
	if err != nil {
		return err
	}
	defer out.Close()
	f.out.Store(out)
	defer f.out.Store(nil)
	head := logVersion[:]
	if f.startAt != 0 {
		head = append(head[:len(head):len(head)], eventEnd)
	}
	if _, err := out.Write(head); err != nil {
		return fmt.Errorf("write version: %w", err)
	}
	var in *os.File
	defer func() {
		if in != nil {
			in.Close()
		}
	}()
	var tick <-chan time.Time
	if f.pollSize != nil {
		t := time.NewTicker(f.pollEvery)
		defer t.Stop()
		tick = t.C
	}
	buf := make([]byte, 256<<10)
	var st feedState
	for {
		if st.halted {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case r := <-f.ctl:
				f.control(out, &st, r)
			}
			continue
		}
		if f.pollSize != nil {
			if n, err := f.pollSize(); err == nil {
				f.Notify(n)
			} else if !errors.Is(err, os.ErrNotExist) {
				return fmt.Errorf("poll source size: %w", err)
			}
		}
		for !st.halted && f.fed.Load() < f.upTo.Load() {
			select { // a Halt or Finish takes effect between chunks
			case r := <-f.ctl:
				f.control(out, &st, r)
				continue
			default:
			}
			if in == nil {
				if in, err = os.Open(f.src); err != nil {
					return fmt.Errorf("open source: %w", err)
				}
			}
			want := min(f.upTo.Load()-f.fed.Load(), int64(len(buf)))
			n, err := in.ReadAt(buf[:want], f.fed.Load())
			if n > 0 {
				// A blocked write ends with the context's error on Close.
				if _, werr := out.Write(buf[:n]); werr != nil {
					return fmt.Errorf("write fifo: %w", werr)
				}
				f.fed.Add(int64(n))
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read source: %w", err)
			}
			if n == 0 {
				break // notified past the end: wait for the file to grow
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-f.wake:
		case <-tick:
		case r := <-f.ctl:
			f.control(out, &st, r)
		}
	}
}

// openWriter opens the FIFO for writing once a reader has it open, without
// blocking a thread: O_NONBLOCK gives ENXIO while there is no reader. The fd
// stays non-blocking and outside Go's poller (see fifoWriter).
func (f *Feed) openWriter(ctx context.Context) (*fifoWriter, error) {
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		fd, err := unix.Open(f.fifo, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err == nil {
			return newFIFOWriter(ctx, fd), nil
		}
		if !errors.Is(err, syscall.ENXIO) {
			return nil, fmt.Errorf("open fifo: %w", err)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}
