package netbuf

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/ftvmd/ftvmd/throttle"
)

// shapedTap creates tap name in the namespace with address 10.98.0.1/24, opens it
// (so it has carrier, as with QEMU on it) and gives 10.98.0.2 a permanent
// neighbour entry, so a UDP socket's frames to it leave through the tap's egress,
// the way the bridge hands the network's frames to a guest. It returns the tap's
// file (the "QEMU" end) and a UDP socket in the namespace.
func shapedTap(ns *netnsThread, name string) (tapf *os.File, udp *net.UDPConn, err error) {
	err = ns.do(func() error {
		if _, err := CreateTap(name, ""); err != nil {
			return err
		}
		if tapf, err = OpenTap(name); err != nil {
			return err
		}
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: net.IPv4(10, 98, 0, 1), Mask: net.CIDRMask(24, 32)}}
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		if err := netlink.NeighAdd(&netlink.Neigh{
			LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V4,
			IP: net.IPv4(10, 98, 0, 2), HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0, 0, 0x02},
		}); err != nil {
			return err
		}
		udp, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 98, 0, 1)})
		return err
	})
	return tapf, udp, err
}

// newShapedTap is shapedTap with its files closed at the end of the test, and the
// netlink Shaper of that tap.
func newShapedTap(t *testing.T, ns *netnsThread, name string) (*os.File, *net.UDPConn, Shaper) {
	t.Helper()
	tapf, udp, err := shapedTap(ns, name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tapf.Close(); udp.Close() })
	sh, err := NewTapShaper(name)
	if err != nil {
		t.Fatal(err)
	}
	return tapf, udp, sh
}

// blast sends n datagrams of size bytes to 10.98.0.2 as fast as the socket takes
// them.
func blast(t *testing.T, udp *net.UDPConn, n, size int) {
	t.Helper()
	to := &net.UDPAddr{IP: net.IPv4(10, 98, 0, 2), Port: 9}
	b := make([]byte, size)
	_ = udp.SetWriteDeadline(time.Now().Add(5 * time.Second))
	for i := 0; i < n; i++ {
		if _, err := udp.WriteToUDP(b, to); err != nil {
			t.Fatalf("datagram %d: %v", i, err)
		}
	}
}

// readFor reads frames from the tap for d and returns the bytes of the UDP frames
// among them.
func readFor(t *testing.T, tapf *os.File, d time.Duration) int {
	t.Helper()
	buf := make([]byte, DefaultMaxFrame)
	end := time.Now().Add(d)
	got := 0
	for {
		_ = tapf.SetReadDeadline(end)
		n, err := tapf.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return got
		}
		if err != nil {
			t.Fatalf("read tap: %v", err)
		}
		if n > 23 && buf[12] == 0x08 && buf[13] == 0x00 && buf[23] == 17 { // IPv4 UDP
			got += n
		}
	}
}

// TestTapShaperInNetns shapes a real tap: the tbf limits the frames leaving its
// egress to the rate (what QEMU can read), drops beyond its limit and counts both;
// a new rate is applied in place (the counters carry on); clearing restores the
// default root and the same burst then arrives at once.
func TestTapShaperInNetns(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	const tap = "ftpace0"
	tapf, udp, sh := newShapedTap(t, ns, tap)
	counters := func() ShaperCounters {
		t.Helper()
		var c ShaperCounters
		if err := ns.do(func() (err error) { c, err = sh.Counters(); return err }); err != nil {
			t.Fatal(err)
		}
		return c
	}
	if c := counters(); c.Installed {
		t.Fatalf("a fresh tap has the pacing qdisc: %+v", c)
	}

	const rate, limit, frame = 200_000, 64 << 10, 1000
	burst := shapeBurst(rate, DefaultTapFrame)
	if err := ns.do(func() error { return sh.Set(rate, burst, limit) }); err != nil {
		t.Fatal(err)
	}
	var root *netlink.Tbf
	if err := ns.do(func() (err error) {
		return withHandle(func(h *netlink.Handle) error {
			l, err := h.LinkByName(tap)
			if err != nil {
				return err
			}
			root, err = rootTbf(h, l)
			return err
		})
	}); err != nil || root == nil {
		t.Fatalf("no tbf at the tap's root after Set: %v", err)
	}
	if root.Rate != rate || root.Limit != limit {
		t.Fatalf("tbf rate %d limit %d, want %d and %d", root.Rate, root.Limit, rate, limit)
	}
	before := counters()
	if !before.Installed {
		t.Fatalf("counters do not see the qdisc: %+v", before)
	}
	// 300 kB at once: the tbf lets about rate*d + burst through in d, queues its
	// limit and drops the rest.
	const n = 300
	blast(t, udp, n, frame)
	queued := counters()
	const d = 500 * time.Millisecond
	got := readFor(t, tapf, d)
	after := counters()
	t.Logf("shaped at %d B/s: %d B of UDP frames in %v; counters %+v", rate, got, d, after)
	maxGot := int(rate*d.Seconds()) + int(burst) + 2*(frame+42)
	if got > maxGot || got < maxGot/4 {
		t.Fatalf("%d B left the tap in %v at %d B/s, want at most %d and not nothing", got, d, rate, maxGot)
	}
	if queued.Backlog == 0 || queued.Backlog > limit || queued.BacklogFrames == 0 {
		t.Fatalf("right after the burst: %+v, want a backlog within the %d B limit", queued, limit)
	}
	if after.Drops == 0 || after.Overlimits == 0 || after.Packets == 0 {
		t.Fatalf("counters %+v: want drops (a full %d B queue), overlimits and packets", after, limit)
	}
	if tx := after.TxBytes - before.TxBytes; tx < uint64(got) {
		t.Fatalf("the tap counted %d B sent, the reader got %d", tx, got)
	}

	// A new rate in place: the same qdisc, its counters carry on.
	if err := ns.do(func() error { return sh.Set(10*rate, shapeBurst(10*rate, DefaultTapFrame), limit) }); err != nil {
		t.Fatal(err)
	}
	if c := counters(); !c.Installed || c.Drops < after.Drops {
		t.Fatalf("after changing the rate: %+v (drops were %d)", c, after.Drops)
	}
	readFor(t, tapf, 300*time.Millisecond) // drain

	// Cleared: the default root; the same burst arrives at once.
	if err := ns.do(sh.Clear); err != nil {
		t.Fatal(err)
	}
	if c := counters(); c.Installed {
		t.Fatalf("qdisc still there after Clear: %+v", c)
	}
	if err := ns.do(sh.Clear); err != nil {
		t.Fatalf("a second Clear: %v", err)
	}
	blast(t, udp, n, frame)
	// Every datagram arrives (the tap's own queue holds them all), several times
	// what the shaped tap let through.
	if free := readFor(t, tapf, d); free < n*frame || free < 3*got {
		t.Fatalf("unshaped: %d B in %v, want all %d datagrams, well over the %d B shaped", free, d, n, got)
	}
	// A tap that is gone: nothing to remove.
	if err := ns.do(func() error { return RemoveTapShaping("ftnosuch0") }); err != nil {
		t.Fatal(err)
	}
}

// TestTapPacerOnRealTap runs the TapPacer on a real tap: the traffic the tap's
// counter saw sets the engaging rate, the tbf appears at that rate once the lag
// passes the bound and limits what QEMU's end reads, and release removes it.
func TestTapPacerOnRealTap(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	const tap = "ftpace1"
	tapf, udp, sh := newShapedTap(t, ns, tap)
	p, err := throttle.NewPacer(throttle.PacerConfig{Bound: 100 * time.Millisecond, MinRate: 10e3})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(0, 0)
	tp, err := NewTapPacer(TapPacerConfig{Pacer: p, Shaper: sh, QueueBytes: 64 << 10, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	pace := func(lag time.Duration) {
		now = now.Add(100 * time.Millisecond)
		_ = ns.do(func() error { tp.Pace(throttle.Sample{Lag: lag}); return nil })
	}
	pace(0)
	// 200 kB reach QEMU's end in the (fake) 100 ms sample: 2 MB/s flowed.
	blast(t, udp, 200, 1000)
	readFor(t, tapf, 200*time.Millisecond)
	pace(150 * time.Millisecond)
	st := tp.PacerStats()
	if !st.Active || st.ApplyErrors != 0 {
		t.Fatalf("not engaged: %+v", st)
	}
	// Half of what the tap's counter saw (frames with their headers: a little over
	// 200 kB in 100 ms).
	if st.Rate < 1e6 || st.Rate > 1.2e6 {
		t.Fatalf("engaged at %.0f B/s, want half the ~2 MB/s that flowed", st.Rate)
	}
	var c ShaperCounters
	if err := ns.do(func() (err error) { c, err = sh.Counters(); return err }); err != nil || !c.Installed {
		t.Fatalf("no qdisc after engaging: %+v, %v", c, err)
	}
	// 300 kB at once: the 64 kB queue and the bucket pass, the rest is dropped,
	// and the next sample accounts the drops.
	blast(t, udp, 300, 1000)
	got := readFor(t, tapf, 300*time.Millisecond)
	pace(200 * time.Millisecond)
	st = tp.PacerStats()
	t.Logf("paced at %.0f B/s: %d B read in 300 ms; stats %+v", st.Rate, got, st)
	if st.Drops == 0 || st.Paced == 0 || got >= 300_000 {
		t.Fatalf("a burst over the queue: %d B read, stats %+v; want drops counted and frames paced", got, st)
	}
	_ = ns.do(func() error { tp.ReleasePacing(); return nil })
	if err := ns.do(func() (err error) { c, err = sh.Counters(); return err }); err != nil || c.Installed {
		t.Fatalf("qdisc still there after release: %+v, %v", c, err)
	}
	if st := tp.PacerStats(); st.Active || st.ApplyErrors != 0 {
		t.Fatalf("after release: %+v", st)
	}
}
