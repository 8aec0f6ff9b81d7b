package qemu

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// fifoPipeSize is the capacity the feed asks for on its FIFO (F_SETPIPE_SZ;
// /proc/sys/fs/pipe-max-size is 1 MiB by default, and root may exceed it). The
// default 64 KiB holds under 10 ms of log at the rates a bulk transfer records,
// so the replay and the feed would hand the pipe back and forth page by page.
const fifoPipeSize = 1 << 20

// fifoPollEvery bounds how long a write waits for room before it looks at its
// context again.
const fifoPollEvery = 20 * time.Millisecond

// fifoWriter writes to the FIFO's non-blocking write end with poll(2), outside
// Go's network poller.
//
// Why not an *os.File: the runtime's poller watches the fd edge-triggered, and a
// writer parked there waits for the kernel to report the pipe writable again.
// In the lab a feed write of 212 KiB waited 11.7 s during a replay stall
// (2026-11-30, a diagnostic build); what was kept could not tell whether the
// replay had stopped reading or the writer had missed the pipe's wakeup. A
// level-triggered poll with a timeout cannot miss it: it asks the pipe's state
// every time, so a lost edge costs at most fifoPollEvery, and Blocked tells the
// stall report which side waits.
type fifoWriter struct {
	fd  int
	ctx context.Context

	// pending is the number of bytes of the write in progress not yet in the
	// pipe, and since when it has waited for room (unix nanoseconds, 0 when the
	// last write finished): what the stall report shows.
	pending atomic.Int64
	since   atomic.Int64
}

func newFIFOWriter(ctx context.Context, fd int) *fifoWriter {
	// Best effort: a smaller pipe only costs wakeups.
	_, _ = unix.FcntlInt(uintptr(fd), unix.F_SETPIPE_SZ, fifoPipeSize)
	return &fifoWriter{fd: fd, ctx: ctx}
}

// Write writes all of p, waiting for room in the pipe. It returns early with the
// context's error when the feed is closed, and EPIPE once the reader is gone.
func (w *fifoWriter) Write(p []byte) (int, error) {
	done := 0
	defer func() { w.pending.Store(0); w.since.Store(0) }()
	for done < len(p) {
		w.pending.Store(int64(len(p) - done))
		n, err := unix.Write(w.fd, p[done:])
		if n > 0 {
			done += n
			w.since.Store(0)
			continue
		}
		switch {
		case err == nil:
			continue
		case errors.Is(err, unix.EINTR):
			continue
		case !errors.Is(err, unix.EAGAIN):
			return done, err
		}
		if w.since.Load() == 0 {
			w.since.Store(time.Now().UnixNano())
		}
		if err := w.waitRoom(); err != nil {
			return done, err
		}
	}
	return done, nil
}

// waitRoom waits until the pipe has room, the reader is gone, or the feed's
// context ends.
func (w *fifoWriter) waitRoom() error {
	for {
		if err := w.ctx.Err(); err != nil {
			return err
		}
		fds := []unix.PollFd{{Fd: int32(w.fd), Events: unix.POLLOUT}}
		n, err := unix.Poll(fds, int(fifoPollEvery/time.Millisecond))
		if err != nil && !errors.Is(err, unix.EINTR) {
			return fmt.Errorf("poll fifo: %w", err)
		}
		if n > 0 && fds[0].Revents != 0 {
			return nil // writable, or POLLERR (no reader): the write says which
		}
	}
}

// Blocked reports how many bytes of the write in progress wait for room in the
// pipe, and for how long; zero when no write waits.
func (w *fifoWriter) Blocked() (int64, time.Duration) {
	s := w.since.Load()
	if s == 0 {
		return 0, 0
	}
	return w.pending.Load(), time.Since(time.Unix(0, s))
}

// Queued is the number of bytes in the pipe its reader has not read yet
// (FIONREAD, alias TIOCINQ, counts a pipe's buffered bytes from either end).
func (w *fifoWriter) Queued() (int, error) {
	n, err := unix.IoctlGetInt(w.fd, unix.TIOCINQ)
	if err != nil {
		return 0, fmt.Errorf("feed: FIONREAD: %w", err)
	}
	return n, nil
}

// Capacity is the pipe's size in bytes.
func (w *fifoWriter) Capacity() (int, error) {
	n, err := unix.FcntlInt(uintptr(w.fd), unix.F_GETPIPE_SZ, 0)
	if err != nil {
		return 0, fmt.Errorf("feed: F_GETPIPE_SZ: %w", err)
	}
	return n, nil
}

func (w *fifoWriter) Close() error { return unix.Close(w.fd) }
