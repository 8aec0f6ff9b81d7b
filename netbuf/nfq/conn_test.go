package nfq

import (
	"errors"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// connOn is a Conn whose socket is one end of a datagram socket pair, in place
// of the kernel's netlink socket; the other end is returned for the test.
func connOn(t *testing.T) (*Conn, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetNonblock(fds[0], true); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "fake-nfqueue")
	rc, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); unix.Close(fds[1]) })
	return &Conn{queue: 7, f: f, rc: rc, buf: make([]byte, readBuf), wait: 50 * time.Millisecond}, fds[1]
}

// A verdict the socket has no room for fails at its deadline instead of
// waiting for room: the Hold's sender, and a halt waiting for it, never hang
// on one. Without the deadline the Write waits until the peer reads.
func TestVerdictHasADeadline(t *testing.T) {
	c, peer := connOn(t)
	// Fill the peer's queue (nothing reads it) with writes that never wait.
	sent := 0
	for ; sent < 10000; sent++ {
		var werr error
		if err := c.rc.Write(func(fd uintptr) bool {
			_, werr = unix.Write(int(fd), verdictMsg(1, 7, Accept, uint32(sent), true))
			return true
		}); err != nil {
			t.Fatal(err)
		}
		if werr != nil {
			if !errors.Is(werr, unix.EAGAIN) {
				t.Fatal(werr)
			}
			break
		}
	}
	if sent == 0 || sent == 10000 {
		t.Fatalf("sent %d verdicts before the socket was full", sent)
	}
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- c.Drop(99) }()
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("verdict on a full socket: %v, want a deadline error", err)
		}
		t.Logf("failed after %v: %v", time.Since(start).Round(time.Millisecond), err)
	case <-time.After(5 * time.Second):
		// Let it go so the test ends: read the peer dry.
		buf := make([]byte, 4096)
		for {
			if _, _, err := unix.Recvfrom(peer, buf, unix.MSG_DONTWAIT); err != nil {
				break
			}
		}
		<-done
		t.Fatal("a verdict waited 5 s for room on the socket")
	}
	// Room again: verdicts go through.
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(peer, buf, unix.MSG_DONTWAIT)
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := ParseMessages(buf[:n], nil)
	if err != nil || len(msgs) != 1 {
		t.Fatalf("first verdict read back: %v %+v", err, msgs)
	}
	if err := c.Release(1); err != nil {
		t.Fatalf("verdict after room was made: %v", err)
	}
}
