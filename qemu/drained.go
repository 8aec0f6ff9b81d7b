package qemu

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// FeedWatch tells whether a replaying QEMU has consumed everything fed to its rr
// FIFO, without asking QEMU.
//
// Why not QMP: a replaying QEMU reads the next event's kind as soon as it finishes
// one, so once it has consumed the last byte fed, one of its threads sits in read(2)
// on the FIFO, and that is usually the main loop, holding the big lock: a QMP
// query-replay is then answered only when more log arrives (hundreds of ms later on
// an idle guest), which made an up-to-date replay look hundreds of ms behind. A
// thread blocked in read(2) on the FIFO means the stdio buffer is empty and every
// event before it was finished, in order, so the replay has executed exactly up to
// the fed offset.
//
// The check runs every few milliseconds on a backup whose replay is busy, so it keeps
// each thread's /proc syscall file open and rereads it (pread at 0 renders it anew),
// and lists the threads again only every watchRelistEvery or when one has ended: a
// listing and an open, read and close per thread each time cost the backup's agent
// more CPU than anything else it did beside a CPU-bound guest (session 12).
type FeedWatch struct {
	pid  int
	fifo string
	fd   int    // QEMU's descriptor for the FIFO; 0 until found
	want []byte // the syscall line prefix of a read(2) on fd

	threads []int     // each thread's /proc/PID/task/TID/syscall, open (raw descriptors)
	listed  time.Time // when threads was listed; zero: list again
	last    int       // the thread found reading last: it is read first
	buf     [128]byte
}

// watchRelistEvery is how often FeedWatch lists the process's threads again: a
// thread started since (QEMU's thread pool) is not looked at until then, and a
// Drained that misses it only sends the caller to its slower way (QMP).
const watchRelistEvery = time.Second

// NewFeedWatch watches process pid's reads of the FIFO at path.
func NewFeedWatch(pid int, path string) *FeedWatch {
	return &FeedWatch{pid: pid, fifo: path}
}

// Drained reports whether a thread of the process is blocked reading the FIFO.
func (w *FeedWatch) Drained() (bool, error) {
	if w.fd == 0 {
		fd, err := findFD(w.pid, w.fifo)
		if err != nil || fd == 0 {
			return false, err
		}
		// /proc/PID/task/TID/syscall of a blocked thread: "<nr> <arg0> ...";
		// read(2) is syscall 0 on x86-64 and arg0 is the descriptor in hex.
		w.fd, w.want = fd, []byte("0 0x"+strconv.FormatInt(int64(fd), 16)+" ")
	}
	if w.listed.IsZero() || time.Since(w.listed) >= watchRelistEvery {
		if err := w.list(); err != nil {
			return false, err
		}
	}
	n := len(w.threads)
	for i := range n {
		k := (w.last + i) % n
		m, err := unix.Pread(w.threads[k], w.buf[:], 0) // one read(2): the line is short
		if err != nil || m <= 0 {
			w.listed = time.Time{} // the thread ended: list again next time
			continue
		}
		if bytes.HasPrefix(w.buf[:m], w.want) {
			w.last = k
			return true, nil
		}
	}
	return false, nil
}

// list opens the syscall file of each of the process's threads.
func (w *FeedWatch) list() error {
	w.Close()
	dir := fmt.Sprintf("/proc/%d/task", w.pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("qemu threads: %w", err)
	}
	for _, t := range tasks {
		f, err := unix.Open(filepath.Join(dir, t.Name(), "syscall"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // the thread ended
		}
		w.threads = append(w.threads, f)
	}
	w.listed, w.last = time.Now(), 0
	return nil
}

// Close closes the files the watch keeps open; a later Drained opens them again.
func (w *FeedWatch) Close() {
	for _, f := range w.threads {
		_ = unix.Close(f)
	}
	w.threads = w.threads[:0]
	w.listed = time.Time{}
}

// findFD returns pid's descriptor open on path, or 0 if it has none (yet).
func findFD(pid int, path string) (int, error) {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, fmt.Errorf("qemu descriptors: %w", err)
	}
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && l == path {
			return strconv.Atoi(e.Name())
		}
	}
	return 0, nil
}
