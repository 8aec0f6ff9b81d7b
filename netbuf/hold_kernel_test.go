package netbuf

import (
	"bytes"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/netbuf/nfq"
	"github.com/ftvmd/ftvmd/outputrule"
)

// ipv4Frame is a UDP broadcast from the guest carrying marker, with a valid
// IP header checksum (br_netfilter checks it before the hooks).
func ipv4Frame(marker string) []byte {
	payload := []byte(marker)
	udp := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 40000)
	binary.BigEndian.PutUint16(udp[2:], 40001)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	udp = append(udp, payload...)
	ip := []byte{0x45, 0, 0, 0, 0, 1, 0, 0, 64, 17, 0, 0}
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	ip = append(ip, guestIP...)
	ip = append(ip, 255, 255, 255, 255)
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	f := append([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, guestMAC...)
	f = append(f, 0x08, 0x00)
	return append(f, append(ip, udp...)...)
}

// ipv6Frame is an IPv6 packet to all nodes with no next header, carrying marker.
func ipv6Frame(marker string) []byte {
	f := append([]byte{0x33, 0x33, 0, 0, 0, 1}, guestMAC...)
	f = append(f, 0x86, 0xdd)
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(marker)))
	h[6], h[7] = 59, 64 // no next header, hop limit
	h[8], h[9], h[23] = 0xfe, 0x80, 2
	h[24], h[25], h[39] = 0xff, 0x02, 1
	return append(append(f, h...), marker...)
}

// sawFrame reads tap until a frame containing marker arrives (true) or d
// passes (false); other frames (the bridge's own IPv6 chatter) are skipped.
func sawFrame(t *testing.T, tap *os.File, marker string, d time.Duration) bool {
	t.Helper()
	buf := make([]byte, 65536)
	_ = tap.SetReadDeadline(time.Now().Add(d))
	defer func() { _ = tap.SetReadDeadline(time.Time{}) }()
	for {
		n, err := tap.Read(buf)
		if err != nil {
			return false
		}
		if bytes.Contains(buf[:n], []byte(marker)) {
			return true
		}
	}
}

// bridgedTaps makes bridge br (with hostIP) and two taps on it, in (the
// guest's side) and out, opens both, and turns on bridge netfilter, as the
// kernel hold needs. Run it inside a test's network namespace.
func bridgedTaps(br, in, out string) (inTap, outTap *os.File, err error) {
	if err := addBridge(br, hostIP); err != nil {
		return nil, nil, err
	}
	for _, n := range []string{in, out} {
		if _, err := CreateTap(n, br); err != nil {
			return nil, nil, err
		}
	}
	if inTap, err = OpenTap(in); err != nil {
		return nil, nil, err
	}
	if outTap, err = OpenTap(out); err != nil {
		inTap.Close()
		return nil, nil, err
	}
	if err := EnableBridgeNetfilter(); err != nil {
		inTap.Close()
		outTap.Close()
		return nil, nil, err
	}
	return inTap, outTap, nil
}

// TestHoldInKernel holds real frames in the kernel: a tap's IPv4 and IPv6
// frames wait in the NFQUEUE until the ack passes their stamp, ARP passes,
// and switching to unprotected removes the rules.
func TestHoldInKernel(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	const br, in, out, queue = "ftbr0", "ftin0", "ftout0", 7
	var inTap, outTap *os.File
	var conn *nfq.Conn
	var rules *QueueRules
	err := ns.do(func() error {
		var err error
		if inTap, outTap, err = bridgedTaps(br, in, out); err != nil {
			return err
		}
		if conn, err = nfq.Open(queue, nfq.Config{}); err != nil {
			return err
		}
		rules, err = InstallQueueRules(in, queue)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inTap.Close(); outTap.Close(); conn.Close() })
	// One reader per queue.
	if err := ns.do(func() error { _, err := nfq.Open(queue, nfq.Config{}); return err }); !errors.Is(err, unix.EPERM) {
		t.Fatalf("second reader of queue %d: %v, want EPERM", queue, err)
	}

	var logSize atomic.Int64
	h, err := NewHold(HoldConfig{
		Queue:          conn,
		Stamp:          func() (int64, error) { return logSize.Load(), nil },
		Rule:           outputrule.New(HoldRuleConfig(nfq.DefaultMaxLen), outputrule.Protected),
		Bypass:         func() error { return ns.do(rules.Remove) },
		CheckInvariant: true,
		Logger:         slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	runHold(t, h)
	h.Sent(1000)
	send := func(f []byte, stamp int64) {
		t.Helper()
		logSize.Store(stamp)
		before := h.Stats().GuestFrames
		if _, err := inTap.Write(f); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "frame queued", func() bool { return h.Stats().GuestFrames > before })
	}

	send(ipv4Frame("held-v4"), 100)
	send(ipv6Frame("held-v6"), 200)
	if sawFrame(t, outTap, "held-", 100*time.Millisecond) {
		t.Fatal("a queued frame reached the bridge before any ack")
	}
	// ARP is not queued: it crosses at once.
	if _, err := inTap.Write(arpRequest()); err != nil {
		t.Fatal(err)
	}
	if !sawFrame(t, outTap, string(guestMAC), 5*time.Second) {
		t.Fatal("ARP did not cross the bridge")
	}
	h.Ack(150)
	if !sawFrame(t, outTap, "held-v4", 5*time.Second) {
		t.Fatal("the acked IPv4 frame was not released")
	}
	if sawFrame(t, outTap, "held-v6", 100*time.Millisecond) {
		t.Fatal("the IPv6 frame left before the ack passed its stamp")
	}
	h.Ack(200)
	if !sawFrame(t, outTap, "held-v6", 5*time.Second) {
		t.Fatal("the acked IPv6 frame was not released")
	}
	st := h.Stats()
	if st.TapFrames != 2 || st.Invariant != 0 || st.TapWriteErrors != 0 {
		t.Fatalf("stats %+v", st)
	}

	// Unprotected: the rules go, frames no longer enter the queue.
	h.SetMode(outputrule.Unprotected)
	queued := h.Stats().GuestFrames
	if _, err := inTap.Write(ipv4Frame("free-v4")); err != nil {
		t.Fatal(err)
	}
	if !sawFrame(t, outTap, "free-v4", 5*time.Second) {
		t.Fatal("an unprotected frame did not cross")
	}
	if h.Stats().GuestFrames != queued {
		t.Fatal("an unprotected frame was queued after the bypass")
	}
}

// TestQueueWithoutReaderDrops: with the rules in place and no reader, frames
// are dropped, never passed (no bypass flag).
func TestQueueWithoutReaderDrops(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	const br, in, out, queue = "ftbr0", "ftin0", "ftout0", 9
	var inTap, outTap *os.File
	err := ns.do(func() error {
		var err error
		if inTap, outTap, err = bridgedTaps(br, in, out); err != nil {
			return err
		}
		_, err = InstallQueueRules(in, queue)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer inTap.Close()
	defer outTap.Close()
	if _, err := inTap.Write(ipv4Frame("unread")); err != nil {
		t.Fatal(err)
	}
	if sawFrame(t, outTap, "unread", 200*time.Millisecond) {
		t.Fatal("a frame passed a queue nobody reads")
	}
}

// TestHoldInKernelEngage is the kernel side of protecting a running VM on the
// tap path: a Hold that starts bypassed (no rules) lets frames cross unqueued;
// Protect installs the rules and from then on every IP frame waits for the ack;
// Unprotected releases and removes them; Protect again holds again.
func TestHoldInKernelEngage(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	const br, in, out, queue = "ftbr0", "ftin0", "ftout0", 11
	var inTap, outTap *os.File
	var conn *nfq.Conn
	err := ns.do(func() error {
		var err error
		if inTap, outTap, err = bridgedTaps(br, in, out); err != nil {
			return err
		}
		conn, err = nfq.Open(queue, nfq.Config{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inTap.Close(); outTap.Close(); conn.Close() })
	var rules *QueueRules // touched only in ns (Engage and Bypass run there)
	var logSize atomic.Int64
	h, err := NewHold(HoldConfig{
		Queue:    conn,
		Stamp:    func() (int64, error) { return logSize.Load(), nil },
		Rule:     outputrule.New(HoldRuleConfig(nfq.DefaultMaxLen), outputrule.Unprotected),
		Bypassed: true,
		Engage: func() error {
			return ns.do(func() error {
				r, err := InstallQueueRules(in, queue)
				rules = r
				return err
			})
		},
		Bypass:         func() error { return ns.do(func() error { return rules.Remove() }) },
		CheckInvariant: true,
		Logger:         slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	runHold(t, h)
	write := func(f []byte) {
		t.Helper()
		if _, err := inTap.Write(f); err != nil {
			t.Fatal(err)
		}
	}
	queued := func() uint64 { return h.Stats().GuestFrames }

	// Unprotected and bypassed: frames cross and never enter the queue. A new
	// bridge may not forward the first frames on a port yet (seen in 2 of 8
	// runs): send until one crosses.
	crossed := false
	for i := 0; i < 25 && !crossed; i++ {
		write(ipv4Frame("free-before"))
		crossed = sawFrame(t, outTap, "free-before", 200*time.Millisecond)
	}
	if !crossed {
		t.Fatal("an unprotected frame did not cross")
	}
	if queued() != 0 {
		t.Fatal("a frame was queued before Protect")
	}

	// Protect: held from here on, released by the ack of the new channel.
	if err := h.Protect(); err != nil {
		t.Fatal(err)
	}
	h.Sent(1000)
	logSize.Store(100)
	write(ipv4Frame("held-v4"))
	write(ipv6Frame("held-v6"))
	waitFor(t, "frames queued", func() bool { return queued() == 2 })
	if sawFrame(t, outTap, "held-", 100*time.Millisecond) {
		t.Fatal("a frame sent after Protect crossed before any ack")
	}
	h.Ack(100)
	if !sawFrame(t, outTap, "held-v4", 5*time.Second) || !sawFrame(t, outTap, "held-v6", 5*time.Second) {
		t.Fatal("the acked frames were not released")
	}

	// The backup is lost: unprotected, the rules go.
	h.SetMode(outputrule.Unprotected)
	write(ipv4Frame("free-after"))
	if !sawFrame(t, outTap, "free-after", 5*time.Second) {
		t.Fatal("an unprotected frame did not cross after the bypass")
	}
	if queued() != 2 {
		t.Fatal("a frame was queued after the bypass")
	}

	// Protected again (a re-protection): held again until the new channel's ack.
	if err := h.Protect(); err != nil {
		t.Fatal(err)
	}
	h.Sent(500)
	logSize.Store(400)
	write(ipv4Frame("held-again"))
	waitFor(t, "frame queued", func() bool { return queued() == 3 })
	if sawFrame(t, outTap, "held-again", 100*time.Millisecond) {
		t.Fatal("a frame crossed before the re-protection's ack")
	}
	h.Ack(400)
	if !sawFrame(t, outTap, "held-again", 5*time.Second) {
		t.Fatal("the acked frame was not released")
	}
	if st := h.Stats(); st.TapFrames != 3 || st.Invariant != 0 || st.TapWriteErrors != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// TestRemoveQueueRules: the tables a killed agent left (rules with no reader)
// drop a tap's frames until RemoveQueueRules deletes them; removing tables that
// are not there is fine.
func TestRemoveQueueRules(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	const br, in, out, queue = "ftbr0", "ftin0", "ftout0", 13
	var inTap, outTap *os.File
	err := ns.do(func() error {
		var err error
		if inTap, outTap, err = bridgedTaps(br, in, out); err != nil {
			return err
		}
		_, err = InstallQueueRules(in, queue) // left behind: nobody reads the queue
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer inTap.Close()
	defer outTap.Close()
	if _, err := inTap.Write(ipv4Frame("stale")); err != nil {
		t.Fatal(err)
	}
	if sawFrame(t, outTap, "stale", 200*time.Millisecond) {
		t.Fatal("a frame passed the stale rules")
	}
	for i := range 2 {
		if err := ns.do(func() error { return RemoveQueueRules(in) }); err != nil {
			t.Fatalf("remove %d: %v", i+1, err)
		}
	}
	if _, err := inTap.Write(ipv4Frame("free")); err != nil {
		t.Fatal(err)
	}
	if !sawFrame(t, outTap, "free", 5*time.Second) {
		t.Fatal("a frame did not cross once the stale tables were removed")
	}
	if err := RemoveQueueRules("a-name-too-long-for-linux"); err == nil {
		t.Fatal("RemoveQueueRules accepted a bad interface name")
	}
}
