// Package netbuf owns a protected VM's network path on its host: the tap
// device on the host bridge, and the relay between QEMU's datagram NIC and
// that tap, which holds guest output under the output rule (see
// package outputrule).
//
// Tap handling uses github.com/vishvananda/netlink (rtnetlink, plus the
// TUNSETIFF/TUNSETPERSIST ioctls netlink issues to create a tap). Only
// OpenTap uses golang.org/x/sys/unix directly. All of it acts in the calling
// thread's network namespace.
package netbuf

import (
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"os"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Sentinel errors for tap handling.
var (
	ErrBridgeNotFound = errors.New("netbuf: bridge not found")
	ErrNotBridge      = errors.New("netbuf: master link is not a bridge")
	ErrTapName        = errors.New("netbuf: invalid tap name")
	ErrTapExists      = errors.New("netbuf: link already exists")
	ErrNotTap         = errors.New("netbuf: link is not a tap")
	ErrTapNotFound    = errors.New("netbuf: tap not found")
)

const tunPath = "/dev/net/tun"

func checkIfName(name string) error {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return fmt.Errorf("%w: %q (1..%d bytes)", ErrTapName, name, unix.IFNAMSIZ-1)
	}
	return nil
}

// lookupLink returns link name, or (nil, nil) if there is no such link.
func lookupLink(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if errors.As(err, &netlink.LinkNotFoundError{}) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("netbuf: look up link %q: %w", name, err)
	}
	return l, nil
}

// asTap returns l as a tap, or ErrNotTap. A kernel that does not report the
// tun device's mode (Mode 0) is given the benefit of the doubt.
func asTap(l netlink.Link) (*netlink.Tuntap, error) {
	t, ok := l.(*netlink.Tuntap)
	if !ok {
		return nil, fmt.Errorf("%w: %q is a %s link", ErrNotTap, l.Attrs().Name, l.Type())
	}
	if t.Mode != 0 && t.Mode != netlink.TUNTAP_MODE_TAP {
		return nil, fmt.Errorf("%w: %q is a %s device", ErrNotTap, t.Name, t.Mode)
	}
	return t, nil
}

// CreateTap creates a persistent tap device name, attaches it to bridge and
// sets it up. The tap carries plain Ethernet frames: no packet-info header
// and no vnet header, since the relay copies frames unchanged between it and
// QEMU's datagram netdev. The bridge must exist and be a Linux bridge
// (ErrBridgeNotFound, ErrNotBridge); an empty bridge leaves the tap
// unattached. A link that already exists is ErrTapExists. On error nothing
// is left behind. Open the tap's queue with OpenTap.
func CreateTap(name, bridge string) (*net.Interface, error) {
	if err := checkIfName(name); err != nil {
		return nil, err
	}
	var br netlink.Link
	if bridge != "" {
		l, err := lookupLink(bridge)
		switch {
		case err != nil:
			return nil, err
		case l == nil:
			return nil, fmt.Errorf("%w: %q", ErrBridgeNotFound, bridge)
		}
		if _, ok := l.(*netlink.Bridge); !ok {
			return nil, fmt.Errorf("%w: %q is a %s link", ErrNotBridge, bridge, l.Type())
		}
		br = l
	}
	if l, err := lookupLink(name); err != nil {
		return nil, err
	} else if l != nil {
		return nil, fmt.Errorf("%w: %q (a %s link)", ErrTapExists, name, l.Type())
	}
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name},
		Mode:      netlink.TUNTAP_MODE_TAP,
		// TUN_EXCL: fail rather than attach to a tap that appeared since
		// the check above.
		Flags:      netlink.TUNTAP_NO_PI | netlink.TUNTAP_TUN_EXCL,
		NonPersist: false,
	}
	// netlink sets TUNSETOWNER/TUNSETGROUP from Owner and Group, so the tap
	// is owned by uid 0 and gid 0; only the root agent opens it.
	if err := netlink.LinkAdd(tap); err != nil {
		// netlink does not wrap the TUNSETIFF errno (EBUSY for an existing
		// name); if the link is there now, someone else made it.
		if l, lerr := lookupLink(name); lerr == nil && l != nil {
			return nil, fmt.Errorf("%w: %q: %v", ErrTapExists, name, err)
		}
		return nil, fmt.Errorf("netbuf: create tap %q: %w", name, err)
	}
	fail := func(err error) (*net.Interface, error) {
		if derr := netlink.LinkDel(tap); derr != nil {
			err = errors.Join(err, fmt.Errorf("netbuf: remove half-made tap %q: %w", name, derr))
		}
		return nil, err
	}
	// A bridge whose address was never set takes the lowest address of its
	// ports, and a kernel-made tap address is random: one below the uplink's
	// moves the host's own address the moment the tap joins, and moves it back
	// when the tap goes. Peers that learnt the tap's address then send to one
	// that no longer exists, and the host answers nobody until their ARP
	// entries age out (chaos CI, 2026-11-30: a re-protect's dial from the
	// survivor timed out 5 s after a failover in place). fe: is the highest
	// unicast, locally administered first byte, so a tap never becomes the
	// bridge's address (libvirt gives its taps fe: addresses for the same
	// reason).
	if err := netlink.LinkSetHardwareAddr(tap, tapMAC()); err != nil {
		return fail(fmt.Errorf("netbuf: set tap %q address: %w", name, err))
	}
	if br != nil {
		if err := netlink.LinkSetMaster(tap, br); err != nil {
			return fail(fmt.Errorf("netbuf: attach tap %q to bridge %q: %w", name, bridge, err))
		}
	}
	if err := netlink.LinkSetUp(tap); err != nil {
		return fail(fmt.Errorf("netbuf: set tap %q up: %w", name, err))
	}
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		// net.InterfaceByName uses netlink in the calling thread's
		// namespace; the tap exists, report what we know.
		return &net.Interface{Index: tap.Index, Name: name, Flags: net.FlagUp}, nil
	}
	return ifi, nil
}

// tapMAC is a random unicast, locally administered address whose first byte
// is 0xfe, above any other unicast address, so a bridge never adopts it.
func tapMAC() net.HardwareAddr {
	mac := net.HardwareAddr{0xfe, 0, 0, 0, 0, 0}
	_, _ = rand.Read(mac[1:]) // crypto/rand.Read never fails (Go 1.24+)
	return mac
}

// AttachTap puts the existing tap name on bridge (a tap made by CreateTap on no
// bridge, such as a backup's, when its VM goes live there). A tap already on
// that bridge is left as it is.
func AttachTap(name, bridge string) error {
	if err := checkIfName(name); err != nil {
		return err
	}
	l, err := lookupLink(name)
	switch {
	case err != nil:
		return err
	case l == nil:
		return fmt.Errorf("%w: %q", ErrTapNotFound, name)
	}
	if _, err := asTap(l); err != nil {
		return err
	}
	br, err := lookupLink(bridge)
	switch {
	case err != nil:
		return err
	case br == nil:
		return fmt.Errorf("%w: %q", ErrBridgeNotFound, bridge)
	}
	if _, ok := br.(*netlink.Bridge); !ok {
		return fmt.Errorf("%w: %q is a %s link", ErrNotBridge, bridge, br.Type())
	}
	if l.Attrs().MasterIndex == br.Attrs().Index {
		return nil
	}
	if err := netlink.LinkSetMaster(l, br); err != nil {
		return fmt.Errorf("netbuf: attach tap %q to bridge %q: %w", name, bridge, err)
	}
	return nil
}

// DeleteTap removes the tap name. A tap that does not exist is not an error;
// a link that is not a tap is ErrNotTap. The device goes away at once even
// if a queue is still open (QEMU, a relay): reads and writes on that queue
// then fail, so stop its users first.
func DeleteTap(name string) error {
	if err := checkIfName(name); err != nil {
		return err
	}
	l, err := lookupLink(name)
	if err != nil || l == nil {
		return err
	}
	if _, err := asTap(l); err != nil {
		return err
	}
	if err := netlink.LinkDel(l); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return nil // gone meanwhile
		}
		return fmt.Errorf("netbuf: delete tap %q: %w", name, err)
	}
	return nil
}

// ifreq for TUNSETIFF: name, flags, padding to sizeof(struct ifreq).
type ifreq struct {
	name  [unix.IFNAMSIZ]byte
	flags uint16
	_     [22]byte
}

// tunAttach opens /dev/net/tun and attaches it to tap name.
func tunAttach(name string, flags uint16) (int, error) {
	fd, err := unix.Open(tunPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open %s: %w", tunPath, err)
	}
	var req ifreq
	copy(req.name[:], name)
	req.flags = flags
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(unix.TUNSETIFF), uintptr(unsafe.Pointer(&req))); errno != 0 {
		unix.Close(fd)
		return -1, fmt.Errorf("TUNSETIFF %q: %w", name, errno)
	}
	return fd, nil
}

// OpenTap attaches a queue to the existing tap name and returns it as a
// non-blocking, pollable file: Read returns one Ethernet frame, Write sends
// one, and SetReadDeadline works. Closing the file detaches the queue; the
// persistent tap stays.
//
// The attach itself is a raw TUNSETIFF ioctl: netlink can create a tap (and
// hand back the creating queues) but has no call to attach a queue to an
// existing one.
func OpenTap(name string) (*os.File, error) {
	if err := checkIfName(name); err != nil {
		return nil, err
	}
	l, err := lookupLink(name)
	switch {
	case err != nil:
		return nil, err
	case l == nil:
		return nil, fmt.Errorf("%w: %q", ErrTapNotFound, name)
	}
	if _, err := asTap(l); err != nil {
		return nil, err
	}
	// Without IFF_TUN_EXCL, TUNSETIFF attaches to the existing tap (it would
	// create one if the tap vanished meanwhile; that one is not persistent
	// and goes away with the file).
	fd, err := tunAttach(name, unix.IFF_TAP|unix.IFF_NO_PI)
	if err != nil {
		return nil, fmt.Errorf("netbuf: open tap: %w", err)
	}
	// Non-blocking only after TUNSETIFF, so that os.NewFile registers the fd
	// with the runtime poller (golang/go#30426).
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netbuf: set tap %q non-blocking: %w", name, err)
	}
	return os.NewFile(uintptr(fd), tunPath+":"+name), nil
}

// TapRxFrames is how many frames the tap's queue (its QEMU) has written into the
// tap: the kernel counts them as received by the device.
func TapRxFrames(name string) (uint64, error) {
	l, err := lookupLink(name)
	switch {
	case err != nil:
		return 0, err
	case l == nil:
		return 0, fmt.Errorf("%w: %q", ErrTapNotFound, name)
	}
	st := l.Attrs().Statistics
	if st == nil {
		return 0, fmt.Errorf("netbuf: no statistics for %q", name)
	}
	return st.RxPackets, nil
}
