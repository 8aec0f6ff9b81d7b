package qemu

import (
	"bytes"
	"context"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestFeedReportsWhoWaits: a reader that stops reading leaves the feed waiting for
// room (State says so, with a full pipe of the size the feed asked for); once the
// reader reads again every byte arrives, in order, and the feed no longer waits.
func TestFeedReportsWhoWaits(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "log.rr")
	body := make([]byte, 3<<20)
	rand.New(rand.NewSource(1)).Read(body)
	if err := os.WriteFile(src, append(make([]byte, LogHeaderSize), body...), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := NewFeed(filepath.Join(dir, "log.fifo"), src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := os.Open(f.Path()) // blocks until the feed's writer opens: it polls
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	f.Notify(int64(LogHeaderSize + len(body)))

	deadline := time.Now().Add(10 * time.Second)
	var st FeedState
	for st = f.State(); st.Blocked == 0 || st.BlockedFor < 50*time.Millisecond; st = f.State() {
		if time.Now().After(deadline) {
			t.Fatalf("feed never reported waiting for its reader: %+v", st)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Full, as splice(2) sees it: it stops short of the last few slots (it moves
	// whole page-cache batches, measured 3/4 of a 1 MiB pipe on Linux 6.18), where a
	// write fills every page.
	if st.Pipe != fifoPipeSize || st.Unread < st.Pipe/2 {
		t.Errorf("waiting feed: pipe %d unread %d, want a full pipe of %d", st.Pipe, st.Unread, fifoPipeSize)
	}
	if w := st.UpTo - st.Fed; w <= 0 {
		t.Errorf("waiting feed: fed %d up to %d", st.Fed, st.UpTo)
	}

	got := make([]byte, len(logVersion)+len(body))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:len(logVersion)], logVersion[:]) || !bytes.Equal(got[len(logVersion):], body) {
		t.Fatal("bytes read from the FIFO differ from the source")
	}
	for st = f.State(); st.Fed != st.UpTo || st.Blocked != 0; st = f.State() {
		if time.Now().After(deadline) {
			t.Fatalf("feed did not finish: %+v", st)
		}
		time.Sleep(time.Millisecond)
	}
	if st.Unread != 0 {
		t.Errorf("drained FIFO: unread %d", st.Unread)
	}
}

// TestFeedCloseWhileBlocked: Close ends a feed whose write waits for a reader that
// never reads, promptly.
func TestFeedCloseWhileBlocked(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "log.rr")
	if err := os.WriteFile(src, make([]byte, LogHeaderSize+(2<<20)), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := NewFeed(filepath.Join(dir, "log.fifo"), src)
	if err != nil {
		t.Fatal(err)
	}
	r, err := os.Open(f.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	f.Notify(LogHeaderSize + 2<<20)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for f.State().Blocked == 0 {
		if ctx.Err() != nil {
			t.Fatal("feed never blocked")
		}
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	if err := f.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("Close took %s with a blocked write", d)
	}
}

// TestFeedFreeBelowConsumed: the FIFO's unread bytes are the source file's own pages
// (splice), so freeing the file's prefix must stay below Consumed. Punching a hole
// up to Consumed while the pipe is full and unread changes none of the bytes the
// reader reads after, with and without splice.
func TestFeedFreeBelowConsumed(t *testing.T) {
	for _, noSplice := range []bool{false, true} {
		dir := t.TempDir()
		src := filepath.Join(dir, "log.rr")
		body := make([]byte, 6<<20)
		rand.New(rand.NewSource(2)).Read(body)
		if err := os.WriteFile(src, append(make([]byte, LogHeaderSize), body...), 0o600); err != nil {
			t.Fatal(err)
		}
		f, err := NewFeed(filepath.Join(dir, "log.fifo"), src, func(f *Feed) { f.noSplice = noSplice })
		if err != nil {
			t.Fatal(err)
		}
		r, err := os.Open(f.Path())
		if err != nil {
			t.Fatal(err)
		}
		f.Notify(int64(LogHeaderSize + len(body)))
		full := func() {
			t.Helper()
			deadline := time.Now().Add(10 * time.Second)
			for f.State().Blocked == 0 {
				if time.Now().After(deadline) {
					t.Fatal("feed never filled the pipe")
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		full()
		// The reader reads some; the feed fills the pipe again behind it.
		head := make([]byte, len(logVersion)+3<<20)
		if _, err := io.ReadFull(r, head); err != nil {
			t.Fatal(err)
		}
		full()
		c, fed := f.Consumed(), f.FedOffset()
		if c > fed-fifoPipeSize || c <= LogHeaderSize+1<<20 {
			t.Fatalf("consumed %d with %d fed into a %d-byte pipe, %d read", c, fed, fifoPipeSize, len(head))
		}
		w, err := os.OpenFile(src, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		if err := unix.Fallocate(int(w.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, c); err != nil {
			t.Skipf("punch hole: %v", err)
		}
		w.Close()
		rest := make([]byte, len(body)-(len(head)-len(logVersion)))
		if _, err := io.ReadFull(r, rest); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(append(head[len(logVersion):], rest...), body) {
			t.Fatalf("splice=%v: bytes changed under the reader", !noSplice)
		}
		r.Close()
		f.Close()
	}
}
