// Package netbuf owns a protected VM's network path on its host: the tap
// device on the host bridge, and the relay between QEMU's datagram NIC and
// that tap, which holds guest output under the output rule (see
// package outputrule).
//
// Tap handling uses ioctls from golang.org/x/sys/unix (TUNSETIFF,
// TUNSETPERSIST, SIOCBRADDIF, SIOCSIFFLAGS, ETHTOOL_GDRVINFO), which act in
// the calling thread's network namespace.
package netbuf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"unsafe"

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

// ctlSocket is a socket to issue interface ioctls on, in the calling
// thread's network namespace.
func ctlSocket() (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("netbuf: control socket: %w", err)
	}
	return fd, nil
}

// linkDriver returns the driver of interface name ("bridge", "tun", ...), or
// an error wrapping unix.ENODEV if there is no such interface.
func linkDriver(sock int, name string) (string, error) {
	info, err := unix.IoctlGetEthtoolDrvinfo(sock, name)
	if err != nil {
		return "", err
	}
	return unix.ByteSliceToString(info.Driver[:]), nil
}

func ifIndex(sock int, name string) (int32, error) {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(sock, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, err
	}
	return int32(ifr.Uint32()), nil
}

// CreateTap creates a persistent tap device name (no packet-info header, no
// vnet header), attaches it to bridge and sets it up. The bridge must exist
// and be a Linux bridge (ErrBridgeNotFound, ErrNotBridge); an empty bridge
// leaves the tap unattached. A link that already exists is ErrTapExists. On
// error nothing is left behind. Open the tap's queue with OpenTap.
func CreateTap(name, bridge string) (*net.Interface, error) {
	if err := checkIfName(name); err != nil {
		return nil, err
	}
	sock, err := ctlSocket()
	if err != nil {
		return nil, err
	}
	defer unix.Close(sock)
	if bridge != "" {
		drv, err := linkDriver(sock, bridge)
		switch {
		case errors.Is(err, unix.ENODEV):
			return nil, fmt.Errorf("%w: %q", ErrBridgeNotFound, bridge)
		case errors.Is(err, unix.EOPNOTSUPP): // e.g. lo has no driver info
			return nil, fmt.Errorf("%w: %q", ErrNotBridge, bridge)
		case err != nil:
			return nil, fmt.Errorf("netbuf: look up bridge %q: %w", bridge, err)
		case drv != "bridge":
			return nil, fmt.Errorf("%w: %q has driver %q", ErrNotBridge, bridge, drv)
		}
	}
	if _, err := ifIndex(sock, name); err == nil {
		return nil, fmt.Errorf("%w: %q", ErrTapExists, name)
	}
	// IFF_TUN_EXCL: fail rather than attach if the name appeared meanwhile.
	fd, err := tunAttach(name, unix.IFF_TAP|unix.IFF_NO_PI|unix.IFF_TUN_EXCL)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("%w: %q", ErrTapExists, name)
		}
		return nil, fmt.Errorf("netbuf: create tap %q: %w", name, err)
	}
	fail := func(err error) (*net.Interface, error) {
		_ = unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 0)
		unix.Close(fd) // the last close of a non-persistent tap removes it
		return nil, err
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		return fail(fmt.Errorf("netbuf: make tap %q persistent: %w", name, err))
	}
	if bridge != "" {
		tapIndex, err := ifIndex(sock, name)
		if err != nil {
			return fail(fmt.Errorf("netbuf: look up new tap %q: %w", name, err))
		}
		ifr, err := unix.NewIfreq(bridge)
		if err != nil {
			return fail(err)
		}
		ifr.SetUint32(uint32(tapIndex))
		if err := unix.IoctlIfreq(sock, unix.SIOCBRADDIF, ifr); err != nil {
			return fail(fmt.Errorf("netbuf: attach tap %q to bridge %q: %w", name, bridge, err))
		}
	}
	if err := setUp(sock, name); err != nil {
		return fail(fmt.Errorf("netbuf: set tap %q up: %w", name, err))
	}
	unix.Close(fd)
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		// net.InterfaceByName uses netlink in the calling thread's namespace;
		// the tap exists, report what we know.
		return &net.Interface{Name: name}, nil
	}
	return ifi, nil
}

func setUp(sock int, name string) error {
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(sock, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(sock, unix.SIOCSIFFLAGS, ifr)
}

// DeleteTap removes the persistent tap name. A tap that does not exist is not
// an error; a link that is not a tap is ErrNotTap. If a queue is still open
// (QEMU, a relay), the device goes away when the last one is closed.
func DeleteTap(name string) error {
	if err := checkIfName(name); err != nil {
		return err
	}
	sock, err := ctlSocket()
	if err != nil {
		return err
	}
	defer unix.Close(sock)
	drv, err := linkDriver(sock, name)
	switch {
	case errors.Is(err, unix.ENODEV):
		return nil
	case errors.Is(err, unix.EOPNOTSUPP):
		return fmt.Errorf("%w: %q", ErrNotTap, name)
	case err != nil:
		return fmt.Errorf("netbuf: look up tap %q: %w", name, err)
	case drv != "tun":
		return fmt.Errorf("%w: %q has driver %q", ErrNotTap, name, drv)
	}
	fd, err := tunAttach(name, unix.IFF_TAP|unix.IFF_NO_PI)
	if err != nil {
		return fmt.Errorf("netbuf: attach tap %q to delete it: %w", name, err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 0); err != nil {
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

// tunAttach opens /dev/net/tun and attaches it to (or creates) tap name.
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
func OpenTap(name string) (*os.File, error) {
	if err := checkIfName(name); err != nil {
		return nil, err
	}
	sock, err := ctlSocket()
	if err != nil {
		return nil, err
	}
	drv, err := linkDriver(sock, name)
	unix.Close(sock)
	switch {
	case errors.Is(err, unix.ENODEV):
		return nil, fmt.Errorf("%w: %q", ErrTapNotFound, name)
	case err != nil:
		return nil, fmt.Errorf("netbuf: look up tap %q: %w", name, err)
	case drv != "tun":
		return nil, fmt.Errorf("%w: %q has driver %q", ErrNotTap, name, drv)
	}
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
