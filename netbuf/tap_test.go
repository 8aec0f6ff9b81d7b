package netbuf

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/outputrule"
)

// requireRoot skips unless the test can create network namespaces and taps;
// FTVMD_REQUIRE_ROOT=1 turns the skip into a failure.
func requireRoot(t testing.TB) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root"
	} else if _, err := os.Stat(tunPath); err != nil {
		why = "needs " + tunPath
	}
	if why == "" {
		return
	}
	if os.Getenv("FTVMD_REQUIRE_ROOT") == "1" {
		t.Fatal(why + " (FTVMD_REQUIRE_ROOT=1)")
	}
	t.Skip(why)
}

// netnsThread runs functions on one locked OS thread inside a fresh network
// namespace. The thread is never unlocked, so it exits with its goroutine and
// the namespace (and every link in it) goes away with it.
type netnsThread struct {
	fns  chan func()
	done chan struct{}
}

func newNetns(t testing.TB) *netnsThread {
	t.Helper()
	n := &netnsThread{fns: make(chan func()), done: make(chan struct{})}
	errc := make(chan error, 1)
	go func() {
		defer close(n.done)
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		errc <- nil
		for fn := range n.fns {
			fn()
		}
	}()
	if err := <-errc; err != nil {
		t.Fatalf("unshare netns: %v", err)
	}
	t.Cleanup(func() { close(n.fns); <-n.done })
	return n
}

// do runs fn in the namespace and returns its error.
func (n *netnsThread) do(fn func() error) error {
	errc := make(chan error, 1)
	n.fns <- func() { errc <- fn() }
	return <-errc
}

// addBridge creates bridge name with address addr/24 and sets it up.
func addBridge(name string, addr net.IP) error {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("add bridge %s: %w", name, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: addr, Mask: net.CIDRMask(24, 32)}}
	if err := netlink.AddrAdd(br, a); err != nil {
		return fmt.Errorf("address bridge %s: %w", name, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return fmt.Errorf("set bridge %s up: %w", name, err)
	}
	return nil
}

var (
	guestMAC = []byte{0x02, 0, 0, 0, 0, 0x01}
	guestIP  = net.IPv4(10, 99, 0, 2).To4()
	hostIP   = net.IPv4(10, 99, 0, 1).To4()
)

// arpRequest is a guest's "who has hostIP" broadcast.
func arpRequest() []byte {
	var b bytes.Buffer
	b.Write([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	b.Write(guestMAC)
	b.Write([]byte{0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1})
	b.Write(guestMAC)
	b.Write(guestIP)
	b.Write(make([]byte, 6))
	b.Write(hostIP)
	b.Write(make([]byte, 60-b.Len()))
	return b.Bytes()
}

func isARPReplyFromHost(f []byte) bool {
	return len(f) >= 42 && f[12] == 0x08 && f[13] == 0x06 && f[20] == 0 && f[21] == 2 &&
		bytes.Equal(f[28:32], hostIP) && bytes.Equal(f[0:6], guestMAC)
}

func TestTapInNetnsEndToEnd(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	const br, tap, other = "ftbr0", "fttap0", "fttap1"
	if err := ns.do(func() error { return addBridge(br, hostIP) }); err != nil {
		t.Fatalf("bridge: %v", err)
	}

	// Errors first.
	err := ns.do(func() error { _, err := CreateTap(tap, "nosuchbr"); return err })
	if !errors.Is(err, ErrBridgeNotFound) {
		t.Fatalf("missing bridge: %v", err)
	}
	err = ns.do(func() error { _, err := CreateTap(tap, "lo"); return err })
	if !errors.Is(err, ErrNotBridge) {
		t.Fatalf("lo as bridge: %v", err)
	}
	if err := ns.do(func() error { _, err := CreateTap(other, ""); return err }); err != nil {
		t.Fatal(err)
	}
	err = ns.do(func() error { _, err := CreateTap(tap, other); return err })
	if !errors.Is(err, ErrNotBridge) {
		t.Fatalf("tap as bridge: %v", err)
	}
	err = ns.do(func() error { _, err := CreateTap("this-name-is-too-long", br); return err })
	if !errors.Is(err, ErrTapName) {
		t.Fatalf("long name: %v", err)
	}
	if err := ns.do(func() error { return DeleteTap(br) }); !errors.Is(err, ErrNotTap) {
		t.Fatalf("delete bridge as tap: %v", err)
	}

	// The real thing: tap on the bridge, relay in front of it.
	var ifi *net.Interface
	if err := ns.do(func() (err error) { ifi, err = CreateTap(tap, br); return err }); err != nil {
		t.Fatal(err)
	}
	if ifi.Flags&net.FlagUp == 0 {
		t.Fatalf("tap not up: %+v", ifi)
	}
	err = ns.do(func() error { _, err := CreateTap(tap, br); return err })
	if !errors.Is(err, ErrTapExists) {
		t.Fatalf("second create: %v", err)
	}
	var tapf *os.File
	if err := ns.do(func() (err error) { tapf, err = OpenTap(tap); return err }); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	var logSize int64 = 1000
	r, err := NewRelay(RelayConfig{
		AgentSock:      filepath.Join(dir, "agent.sock"),
		QEMUSock:       filepath.Join(dir, "qemu.sock"),
		Tap:            tapf,
		Stamp:          func() (int64, error) { return logSize, nil },
		Rule:           outputrule.New(outputrule.Config{}, outputrule.Protected),
		CheckInvariant: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	q := newFakeQEMU(t, filepath.Join(dir, "qemu.sock"), filepath.Join(dir, "agent.sock"))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()

	if _, err := q.send.Write(arpRequest()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "ARP request held", func() bool { return r.Stats().Rule.HeldFrames == 1 })
	r.Sent(logSize)
	r.Ack(logSize)
	buf := make([]byte, DefaultMaxFrame)
	deadline := time.Now().Add(10 * time.Second)
	for {
		_ = q.local.SetReadDeadline(deadline)
		n, err := q.local.Read(buf)
		if err != nil {
			t.Fatalf("no ARP reply reached the guest: %v (stats %+v)", err, r.Stats())
		}
		if isARPReplyFromHost(buf[:n]) {
			break // other frames (IPv6 ND, MLD) may come first
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s := r.Stats()
	if s.TapFrames != 1 || s.NetFrames < 1 || s.Invariant != 0 {
		t.Fatalf("stats %+v", s)
	}
	t.Logf("ARP round trip through relay, tap and bridge: %d frame out, %d in", s.TapFrames, s.NetFrames)

	if err := tapf.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{tap, tap, other} { // second delete: already gone, not an error
		if err := ns.do(func() error { return DeleteTap(name) }); err != nil {
			t.Fatalf("delete %s: %v", name, err)
		}
	}
	if err := ns.do(func() error { _, err := OpenTap(tap); return err }); !errors.Is(err, ErrTapNotFound) {
		t.Fatalf("open deleted tap: %v", err)
	}
}

func TestTapAttributesAndDelete(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	const br, tap, tun, veth = "ftbr1", "fttap2", "fttun0", "ftveth0"
	if err := ns.do(func() error { return addBridge(br, hostIP) }); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	err := ns.do(func() error {
		if err := netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: tun}, Mode: netlink.TUNTAP_MODE_TUN, Flags: netlink.TUNTAP_NO_PI}); err != nil {
			return err
		}
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: veth}, PeerName: veth + "p"})
	})
	if err != nil {
		t.Fatal(err)
	}

	// Links of the wrong kind.
	for _, name := range []string{tun, veth, "lo"} {
		if err := ns.do(func() error { return DeleteTap(name) }); !errors.Is(err, ErrNotTap) {
			t.Errorf("DeleteTap(%s): %v", name, err)
		}
		if err := ns.do(func() error { _, err := OpenTap(name); return err }); !errors.Is(err, ErrNotTap) {
			t.Errorf("OpenTap(%s): %v", name, err)
		}
	}
	if err := ns.do(func() error { _, err := CreateTap(tap, veth); return err }); !errors.Is(err, ErrNotBridge) {
		t.Errorf("veth as bridge: %v", err)
	}
	for _, name := range []string{br, tun, veth} {
		if err := ns.do(func() error { _, err := CreateTap(name, br); return err }); !errors.Is(err, ErrTapExists) {
			t.Errorf("CreateTap(%s) over an existing link: %v", name, err)
		}
	}
	if err := ns.do(func() error { _, err := OpenTap(tap); return err }); !errors.Is(err, ErrTapNotFound) {
		t.Errorf("OpenTap of a missing tap: %v", err)
	}

	// What CreateTap makes: a persistent tap, plain frames, on the bridge, up.
	var ifi *net.Interface
	var link netlink.Link
	var brIndex int
	err = ns.do(func() (err error) {
		if ifi, err = CreateTap(tap, br); err != nil {
			return err
		}
		if link, err = netlink.LinkByName(tap); err != nil {
			return err
		}
		b, err := netlink.LinkByName(br)
		if err != nil {
			return err
		}
		brIndex = b.Attrs().Index
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	tt, ok := link.(*netlink.Tuntap)
	if !ok {
		t.Fatalf("tap is a %T", link)
	}
	switch {
	case tt.Mode != netlink.TUNTAP_MODE_TAP:
		t.Errorf("mode %v", tt.Mode)
	case tt.Flags&netlink.TUNTAP_NO_PI == 0:
		t.Errorf("packet-info header on: flags %#x", tt.Flags)
	case tt.Flags&netlink.TUNTAP_VNET_HDR != 0:
		t.Errorf("vnet header on: flags %#x", tt.Flags)
	case tt.NonPersist:
		t.Errorf("tap not persistent")
	case tt.MasterIndex != brIndex:
		t.Errorf("master index %d, bridge is %d", tt.MasterIndex, brIndex)
	case tt.Flags&netlink.TUNTAP_MULTI_QUEUE != 0:
		t.Errorf("multi-queue tap: flags %#x", tt.Flags)
	case ifi.Index != tt.Index || ifi.Flags&net.FlagUp == 0:
		t.Errorf("CreateTap returned %+v, link index %d", ifi, tt.Index)
	}

	// Deleting a tap with an open queue removes it at once; the queue fails.
	var tapf *os.File
	if err := ns.do(func() (err error) { tapf, err = OpenTap(tap); return err }); err != nil {
		t.Fatal(err)
	}
	defer tapf.Close()
	if err := ns.do(func() error { return DeleteTap(tap) }); err != nil {
		t.Fatal(err)
	}
	err = ns.do(func() error {
		_, err := netlink.LinkByName(tap)
		if !errors.As(err, &netlink.LinkNotFoundError{}) {
			return fmt.Errorf("tap still there after DeleteTap: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = tapf.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = tapf.Read(make([]byte, DefaultMaxFrame))
	if err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read on the deleted tap's queue: %v, want an immediate error", err)
	}
	t.Logf("read on the deleted tap's queue: %v", err)
	if err := ns.do(func() error { return DeleteTap(tap) }); err != nil {
		t.Fatalf("second delete: %v", err)
	}
}

func TestAttachTap(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	const br, tap, veth = "ftbr3", "fttap3", "ftveth3"
	if err := ns.do(func() error { return addBridge(br, hostIP) }); err != nil {
		t.Fatalf("bridge: %v", err)
	}
	if err := ns.do(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: veth}, PeerName: veth + "p"})
	}); err != nil {
		t.Fatal(err)
	}
	// A tap on no bridge, as a backup's replay gets.
	if err := ns.do(func() error { _, err := CreateTap(tap, ""); return err }); err != nil {
		t.Fatal(err)
	}
	master := func() (tapMaster, brIndex int) {
		t.Helper()
		err := ns.do(func() error {
			l, err := netlink.LinkByName(tap)
			if err != nil {
				return err
			}
			b, err := netlink.LinkByName(br)
			if err != nil {
				return err
			}
			tapMaster, brIndex = l.Attrs().MasterIndex, b.Attrs().Index
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return tapMaster, brIndex
	}
	if m, _ := master(); m != 0 {
		t.Fatalf("tap made on no bridge has master %d", m)
	}
	for _, tc := range []struct {
		name, tap, bridge string
		want              error
	}{
		{"missing tap", "fttap9", br, ErrTapNotFound},
		{"not a tap", veth, br, ErrNotTap},
		{"missing bridge", tap, "ftbr9", ErrBridgeNotFound},
		{"not a bridge", tap, veth, ErrNotBridge},
	} {
		if err := ns.do(func() error { return AttachTap(tc.tap, tc.bridge) }); !errors.Is(err, tc.want) {
			t.Errorf("%s: AttachTap(%s, %s) = %v, want %v", tc.name, tc.tap, tc.bridge, err, tc.want)
		}
	}
	if m, _ := master(); m != 0 {
		t.Fatalf("a refused AttachTap moved the tap to master %d", m)
	}
	// Attaching twice is the same as once.
	for range 2 {
		if err := ns.do(func() error { return AttachTap(tap, br) }); err != nil {
			t.Fatal(err)
		}
		if m, b := master(); m != b {
			t.Fatalf("tap master %d, bridge %d", m, b)
		}
	}
}

// TestTapNeverBecomesTheBridgeAddress: a bridge whose address was never set
// takes its lowest port's address. A tap joining or leaving it must not move
// the host's own address (peers' ARP entries would then point at an address
// that is gone: chaos CI, 2026-11-30). The uplink here has fc:ff:..., above
// almost every random address, so a kernel-chosen tap address would win.
func TestTapNeverBecomesTheBridgeAddress(t *testing.T) {
	requireRoot(t)
	ns := newNetns(t)
	const br, veth = "ftbr4", "ftveth4"
	uplink := net.HardwareAddr{0xfc, 0xff, 0xff, 0xff, 0xff, 0x01}
	bridgeAddr := func() net.HardwareAddr {
		t.Helper()
		var mac net.HardwareAddr
		if err := ns.do(func() error {
			l, err := netlink.LinkByName(br)
			if err != nil {
				return err
			}
			mac = l.Attrs().HardwareAddr
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return mac
	}
	if err := ns.do(func() error {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: br}}); err != nil {
			return err
		}
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: veth, HardwareAddr: uplink}, PeerName: veth + "p"}
		if err := netlink.LinkAdd(v); err != nil {
			return err
		}
		l, err := netlink.LinkByName(veth)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetHardwareAddr(l, uplink); err != nil {
			return err
		}
		b, err := netlink.LinkByName(br)
		if err != nil {
			return err
		}
		return netlink.LinkSetMaster(l, b)
	}); err != nil {
		t.Fatal(err)
	}
	if got := bridgeAddr(); got.String() != uplink.String() {
		t.Fatalf("bridge address %s with the uplink alone, want the uplink's %s", got, uplink)
	}
	for i := range 8 {
		name := fmt.Sprintf("fttap4%d", i)
		var tapAddr net.HardwareAddr
		if err := ns.do(func() error {
			ifi, err := CreateTap(name, br)
			if err == nil {
				tapAddr = ifi.HardwareAddr
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if len(tapAddr) != 6 || tapAddr[0] != 0xfe {
			t.Errorf("tap %s address %s, want fe:...", name, tapAddr)
		}
		if got := bridgeAddr(); got.String() != uplink.String() {
			t.Fatalf("tap %s (%s) joined: bridge address moved to %s from the uplink's %s", name, tapAddr, got, uplink)
		}
		// A backup's tap is made on no bridge and attached at go-live.
		late := fmt.Sprintf("fttap5%d", i)
		if err := ns.do(func() error {
			if _, err := CreateTap(late, ""); err != nil {
				return err
			}
			return AttachTap(late, br)
		}); err != nil {
			t.Fatal(err)
		}
		if got := bridgeAddr(); got.String() != uplink.String() {
			t.Fatalf("tap %s attached: bridge address moved to %s", late, got)
		}
	}
}
