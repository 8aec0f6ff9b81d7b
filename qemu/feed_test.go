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
	// Full: every page of the pipe used (the first holds the 4 version bytes, so the
	// body's first write filled it only partly).
	if st.Pipe != fifoPipeSize || st.Unread < st.Pipe-8192 {
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
