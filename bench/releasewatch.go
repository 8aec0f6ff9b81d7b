package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// releaseWatch sees the guest's output where a client would: every frame with the
// guest's MAC as its source that enters the lab's network from a host's port is
// output that host's copy released. It reads a packet socket on each host's port of
// the lab's bridge (in the network namespace netNS), keeps only those frames (a BPF
// filter; 64 bytes of each), stamps them with the kernel's receive time and adds
// them to a releaseLedger. It watches the wire, not what the agents say of
// themselves: a copy that releases output while it should not shows here.
type releaseWatch struct {
	mu     sync.Mutex
	ledger *releaseLedger
	err    error // the first read error of a port

	stop chan struct{}
	wg   sync.WaitGroup
	fds  []int
}

// watchReleases starts watching: ports maps a host name to its port's interface in
// netNS; mac is the guest's.
func watchReleases(netNS string, ports map[string]string, mac string) (*releaseWatch, error) {
	hw, err := net.ParseMAC(mac)
	if err != nil || len(hw) != 6 {
		return nil, fmt.Errorf("guest mac %q: %v", mac, err)
	}
	w := &releaseWatch{ledger: newReleaseLedger(), stop: make(chan struct{})}
	for host, port := range ports {
		fd, err := openPortSocket(netNS, port, hw)
		if err != nil {
			w.close()
			return nil, fmt.Errorf("watch %s's port %s: %w", host, port, err)
		}
		w.fds = append(w.fds, fd)
		w.wg.Add(1)
		go w.read(host, fd) // owned: close stops and waits for it
	}
	return w, nil
}

// guestSourceFilter is a classic BPF program that keeps the first 64 bytes of
// frames whose source MAC is mac and drops every other frame.
func guestSourceFilter(mac net.HardwareAddr) []unix.SockFilter {
	hi := binary.BigEndian.Uint32(mac[0:4])
	lo := uint32(binary.BigEndian.Uint16(mac[4:6]))
	return []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 6},                 // A = src[0:4]
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 3, K: hi}, // != -> drop
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 10},                // A = src[4:6]
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: lo}, // != -> drop
		{Code: unix.BPF_RET | unix.BPF_K, K: 64},                              // keep
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},                               // drop
	}
}

// openPortSocket opens a packet socket bound to port in namespace ns that sees only
// frames arriving from the port (not those the bridge sends out of it) from the
// guest's MAC, with kernel receive times.
func openPortSocket(ns, port string, mac net.HardwareAddr) (int, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return -1, err
	}
	defer orig.Close()
	target, err := netns.GetFromName(ns)
	if err != nil {
		return -1, err
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return -1, err
	}
	defer func() { _ = netns.Set(orig) }()
	ifc, err := net.InterfaceByName(port)
	if err != nil {
		return -1, err
	}
	proto := int(htons(unix.ETH_P_ALL))
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return -1, err
	}
	prog := guestSourceFilter(mac)
	steps := []error{
		unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}),
		unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_IGNORE_OUTGOING, 1),
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1),
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20),
		unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Usec: 200000}),
		unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifc.Index}),
	}
	if err := errors.Join(steps...); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// read adds every frame of fd to the ledger as released by host until stop.
func (w *releaseWatch) read(host string, fd int) {
	defer w.wg.Done()
	buf := make([]byte, 128)
	oob := make([]byte, 128)
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		_, oobn, _, from, err := unix.Recvmsg(fd, buf, oob, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			w.mu.Lock()
			if w.err == nil {
				w.err = fmt.Errorf("read %s's port: %w", host, err)
			}
			w.mu.Unlock()
			return
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue
		}
		at := time.Now()
		if msgs, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
					sec := int64(binary.NativeEndian.Uint64(m.Data[0:8]))
					nsec := int64(binary.NativeEndian.Uint64(m.Data[8:16]))
					at = time.Unix(sec, nsec)
				}
			}
		}
		w.mu.Lock()
		w.ledger.add(host, at)
		w.mu.Unlock()
	}
}

// with runs fn on the ledger under the watch's lock.
func (w *releaseWatch) with(fn func(l *releaseLedger)) {
	w.mu.Lock()
	defer w.mu.Unlock()
	fn(w.ledger)
}

// readErr is the first read error of any port (nil while all are read).
func (w *releaseWatch) readErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// close stops the readers and closes the sockets.
func (w *releaseWatch) close() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	w.wg.Wait()
	for _, fd := range w.fds {
		unix.Close(fd)
	}
	w.fds = nil
}
