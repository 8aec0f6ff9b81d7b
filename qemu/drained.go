package qemu

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
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
type FeedWatch struct {
	pid  int
	fifo string
	fd   int    // QEMU's descriptor for the FIFO; 0 until found
	want []byte // the syscall line prefix of a read(2) on fd
}

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
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", w.pid))
	if err != nil {
		return false, fmt.Errorf("qemu threads: %w", err)
	}
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(w.pid), "task", t.Name(), "syscall"))
		if err != nil {
			continue // the thread ended
		}
		if bytes.HasPrefix(b, w.want) {
			return true, nil
		}
	}
	return false, nil
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
