package agent

import (
	"errors"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/vmspec"
)

// closedWithin reads from c until the server closes it (io.EOF or a reset: true) or
// within has passed (false).
func closedWithin(t *testing.T, c net.Conn, within time.Duration) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := c.Read(make([]byte, 1))
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return false
	}
	if err == nil {
		t.Fatal("the server sent bytes to a client that never spoke")
	}
	return true
}

// The peer port holds at most a few connections that have not authenticated, each
// for a bounded time: one more is closed at once, the idle ones are closed at their
// deadline, and then a real peer gets in again (before: every connection was served,
// without a cap, and one that never finished its handshake was held 10 s).
func TestPeerPortCapsUnauthenticatedConnections(t *testing.T) {
	ca := newTestCA(t)
	bk := testAgent(t, "hostb", ca.issue("hostb"))
	logs := captureLog(t, bk)
	const limit = 3
	bk.maxUnauth, bk.authTimeout = limit, 500*time.Millisecond
	addr := servePeersTLS(t, bk)

	var idle []net.Conn
	for range limit {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	time.Sleep(50 * time.Millisecond) // all accepted
	extra, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer extra.Close()
	if !closedWithin(t, extra, 300*time.Millisecond) {
		t.Fatalf("a connection beyond the cap of %d unauthenticated ones was kept", limit)
	}
	waitLog(t, logs, "too many unauthenticated connections")
	t0 := time.Now()
	for i, c := range idle {
		if !closedWithin(t, c, 3*time.Second) {
			t.Fatalf("idle connection %d not closed 3 s after accept (deadline 500 ms)", i)
		}
	}
	t.Logf("idle connections closed %s after the check began", time.Since(t0).Round(time.Millisecond))

	// A real peer gets in again: its Hello is answered (refused for its empty spec).
	r, err := helloAs(t, addr, ca.issue("hosta"), peerHello{Op: "backup", From: "hosta", Spec: vmspec.Spec{Name: "vm1"}})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || !strings.Contains(r.Error, "invalid vm spec") {
		t.Fatalf("real peer after the idle ones: %+v", r)
	}
}
