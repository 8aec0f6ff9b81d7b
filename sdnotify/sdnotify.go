// Package sdnotify tells the service manager about a daemon's state, as
// sd_notify(3) does: "READY=1" once it serves, "STATUS=..." lines an operator sees
// in `systemctl status`, "STOPPING=1" when it shuts down. systemd passes the
// socket to send them to in $NOTIFY_SOCKET (a unix datagram socket: a path, or an
// abstract name starting with '@') to a unit of Type=notify. No library: one
// datagram per call.
package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
)

// EnvSocket is the variable the service manager sets.
const EnvSocket = "NOTIFY_SOCKET"

// Notifier sends state to one notify socket. A nil *Notifier sends nothing, so a
// daemon not started by systemd needs no special case.
type Notifier struct {
	addr *net.UnixAddr
}

// ErrAddress: $NOTIFY_SOCKET names something other than a unix socket.
var ErrAddress = errors.New("sdnotify: unsupported " + EnvSocket)

// FromEnv returns a Notifier for $NOTIFY_SOCKET, or nil when it is not set, and
// unsets it: the daemon's children (QEMU) are not the service and must not
// inherit it.
func FromEnv() (*Notifier, error) {
	addr := os.Getenv(EnvSocket)
	if addr == "" {
		return nil, nil
	}
	os.Unsetenv(EnvSocket)
	return New(addr)
}

// New returns a Notifier for addr: an absolute path, or '@' and an abstract socket
// name (Go's net package maps the '@' to the leading NUL byte of the abstract
// namespace).
func New(addr string) (*Notifier, error) {
	if !strings.HasPrefix(addr, "/") && !strings.HasPrefix(addr, "@") || len(addr) < 2 {
		return nil, fmt.Errorf("%w %q: want an absolute path or @name (vsock addresses are not supported)", ErrAddress, addr)
	}
	return &Notifier{addr: &net.UnixAddr{Name: addr, Net: "unixgram"}}, nil
}

// Notify sends the lines (each "KEY=value") as one datagram. A value must not
// contain a newline: it would start another assignment, so newlines in it are
// replaced by spaces.
func (n *Notifier) Notify(lines ...string) error {
	if n == nil || len(lines) == 0 {
		return nil
	}
	clean := make([]string, len(lines))
	for i, l := range lines {
		clean[i] = strings.ReplaceAll(l, "\n", " ")
	}
	c, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sdnotify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(strings.Join(clean, "\n") + "\n")); err != nil {
		return fmt.Errorf("sdnotify: send to %s: %w", n.addr.Name, err)
	}
	return nil
}

// Addr is the socket the notifier sends to.
func (n *Notifier) Addr() string {
	if n == nil {
		return ""
	}
	return n.addr.Name
}
