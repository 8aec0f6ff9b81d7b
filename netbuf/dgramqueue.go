package netbuf

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
)

// DefaultDgramQueue is the net.unix.max_dgram_qlen the agent asks for with
// RaiseDgramQueue.
const DefaultDgramQueue = 512

// ErrDgramQueue reports that net.unix.max_dgram_qlen could not be read or
// raised; it wraps the underlying error (fs.ErrPermission, EROFS, ...).
var ErrDgramQueue = errors.New("netbuf: cannot raise net.unix.max_dgram_qlen")

const dgramQlenPath = "/proc/sys/net/unix/max_dgram_qlen"

// RaiseDgramQueue makes sure net.unix.max_dgram_qlen is at least want,
// writing want if the current value is lower (a higher value is left alone).
//
// The sysctl caps how many datagrams wait in a unix datagram socket's
// receive queue. Its default, 10, lets only about 11 of QEMU's frames queue
// on the relay's AgentSock before QEMU's sendto gets EAGAIN and QEMU stops
// taking frames from the guest, which throttles guest transmit.
//
// The sysctl is per network namespace: this acts on the calling thread's
// network namespace (the one /proc/sys/net resolves to at open time), which
// must be the one NewRelay is called in. The kernel copies the value into a
// socket when the socket is created, so call this before NewRelay; sockets
// that already exist keep their old limit. Writing needs root
// (CAP_NET_ADMIN over the namespace) and a writable /proc/sys.
func RaiseDgramQueue(want int) error {
	return raiseDgramQueue(dgramQlenPath, want)
}

func raiseDgramQueue(path string, want int) error {
	if want <= 0 || want > math.MaxInt32 {
		return fmt.Errorf("%w: %d is not a valid queue length (1..%d)", ErrDgramQueue, want, math.MaxInt32)
	}
	cur, err := readIntFile(path)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrDgramQueue, err)
	}
	if cur >= want {
		return nil
	}
	// O_WRONLY without O_CREATE or O_TRUNC: a sysctl file exists and takes
	// one write of the new value.
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("%w from %d to %d in this network namespace (needs root and a writable /proc/sys): %w", ErrDgramQueue, cur, want, err)
	}
	_, werr := f.WriteString(strconv.Itoa(want) + "\n")
	cerr := f.Close()
	if err := errors.Join(werr, cerr); err != nil {
		return fmt.Errorf("%w from %d to %d in this network namespace: %w", ErrDgramQueue, cur, want, err)
	}
	return nil
}

func readIntFile(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("parse %s: %w", path, err)
	}
	return n, nil
}
