package nfq

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Defaults for Config.
const (
	// DefaultMaxLen bounds how many frames the kernel holds for the queue;
	// past it the kernel drops new frames (never passes them).
	DefaultMaxLen = 4096
	// DefaultRcvBuf is the socket buffer asked for the kernel's packet
	// messages (about 100 bytes each in metadata mode).
	DefaultRcvBuf = 4 << 20
	// readBuf is one read's buffer: a metadata message is small, but a
	// netlink error echoes the request.
	readBuf = 8 << 10
)

// Config configures a queue.
type Config struct {
	MaxLen uint32 // 0: DefaultMaxLen
	RcvBuf int    // 0: DefaultRcvBuf
}

// Conn is a socket bound to one queue. Read is for one goroutine; Release,
// Drop and DropOne may be called from others at the same time (each is one
// datagram to the kernel).
type Conn struct {
	queue uint16
	f     *os.File // non-blocking netlink socket, on the runtime poller
	rc    syscall.RawConn

	mu  sync.Mutex // serialises seq and writes
	seq uint32

	buf []byte // Read's buffer; Read is not concurrent
}

// Open binds queue in the calling thread's network namespace, metadata-only
// with GSO frames queued whole. It fails with EPERM (errors.Is(err,
// unix.EPERM)) if another socket has the queue. Bind before the rule that
// fills the queue is added: a rule with no reader drops its frames.
func Open(queue uint16, cfg Config) (*Conn, error) {
	if cfg.MaxLen == 0 {
		cfg.MaxLen = DefaultMaxLen
	}
	if cfg.RcvBuf <= 0 {
		cfg.RcvBuf = DefaultRcvBuf
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("nfq: netfilter netlink socket: %w", err)
	}
	fail := func(err error) (*Conn, error) {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fail(fmt.Errorf("nfq: bind netlink socket: %w", err))
	}
	// A reader that falls behind must cost frames (the kernel drops them),
	// not an ENOBUFS error that would end the reader.
	if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_NO_ENOBUFS, 1); err != nil {
		return fail(fmt.Errorf("nfq: NETLINK_NO_ENOBUFS: %w", err))
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, cfg.RcvBuf); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, cfg.RcvBuf)
	}
	c := &Conn{queue: queue, buf: make([]byte, readBuf)}
	// Configure while the socket still blocks: each request waits for its ack.
	for _, req := range []struct {
		what string
		msg  func(seq uint32) []byte
	}{
		{"bind queue", func(seq uint32) []byte { return bindMsg(seq, queue) }},
		{"set metadata copy, length and GSO", func(seq uint32) []byte { return paramsMsg(seq, queue, cfg.MaxLen) }},
	} {
		if err := c.request(fd, req.msg); err != nil {
			return fail(fmt.Errorf("nfq: queue %d: %s: %w", queue, req.what, err))
		}
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		return fail(fmt.Errorf("nfq: set non-blocking: %w", err))
	}
	c.f = os.NewFile(uintptr(fd), fmt.Sprintf("nfqueue:%d", queue))
	rc, err := c.f.SyscallConn()
	if err != nil {
		c.f.Close()
		return nil, fmt.Errorf("nfq: %w", err)
	}
	c.rc = rc
	return c, nil
}

// request sends one configuration message on the blocking socket and waits
// for its ack. Nothing is queued yet (no rule sends to the queue before Open
// returns), so any packet message here is unexpected and an error.
func (c *Conn) request(fd int, build func(seq uint32) []byte) error {
	c.seq++
	seq := c.seq
	if err := unix.Sendto(fd, build(seq), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return err
	}
	tv := unix.NsecToTimeval((2 * time.Second).Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	for {
		n, _, err := unix.Recvfrom(fd, c.buf, 0)
		if err != nil {
			return fmt.Errorf("waiting for the kernel's answer: %w", err)
		}
		msgs, err := ParseMessages(c.buf[:n], nil)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			switch {
			case m.Kind == KindAck && m.Seq == seq:
				if m.Errno != 0 {
					return m.Errno
				}
				return nil
			case m.Kind == KindPacket:
				return fmt.Errorf("a frame (id %d) was queued before the queue was configured", m.Packet.ID)
			}
		}
	}
}

// Queue is the queue number.
func (c *Conn) Queue() uint16 { return c.queue }

// Read waits for at least one message, then takes every message already
// waiting without blocking again, and appends them to dst. After Close or a
// past read deadline it returns an error wrapping os.ErrClosed or
// os.ErrDeadlineExceeded.
func (c *Conn) Read(dst []Message) ([]Message, error) {
	n, err := c.f.Read(c.buf)
	if err != nil {
		return dst, fmt.Errorf("nfq: read queue %d: %w", c.queue, err)
	}
	if dst, err = ParseMessages(c.buf[:n], dst); err != nil {
		return dst, err
	}
	for {
		var rerr error
		err := c.rc.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), c.buf)
			return true // never wait: an empty socket ends the batch
		})
		if err != nil {
			return dst, fmt.Errorf("nfq: read queue %d: %w", c.queue, err)
		}
		if errors.Is(rerr, unix.EAGAIN) || errors.Is(rerr, unix.EINTR) {
			return dst, nil
		}
		if rerr != nil {
			return dst, fmt.Errorf("nfq: read queue %d: %w", c.queue, rerr)
		}
		if dst, err = ParseMessages(c.buf[:n], dst); err != nil {
			return dst, err
		}
	}
}

// SetReadDeadline makes a blocked or later Read return (Run's way to stop).
func (c *Conn) SetReadDeadline(t time.Time) error { return c.f.SetReadDeadline(t) }

// Release lets every frame queued up to and including id leave, in order.
func (c *Conn) Release(id uint32) error { return c.verdict(Accept, id, true) }

// Drop discards every frame queued up to and including id.
func (c *Conn) Drop(id uint32) error { return c.verdict(Drop, id, true) }

// DropOne discards the one frame id.
func (c *Conn) DropOne(id uint32) error { return c.verdict(Drop, id, false) }

func (c *Conn) verdict(v Verdict, id uint32, batch bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seq++
	if _, err := c.f.Write(verdictMsg(c.seq, c.queue, v, id, batch)); err != nil {
		return fmt.Errorf("nfq: %s up to id %d on queue %d: %w", v, id, c.queue, err)
	}
	return nil
}

// Close unbinds the queue by closing the socket: the kernel drops every frame
// it still holds for it, and frames sent to the queue afterwards are dropped
// too while the rule stays (no bypass flag is ever set).
func (c *Conn) Close() error {
	return c.f.Close()
}
