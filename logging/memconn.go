package logging

import (
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
)

// MemLink is an in-memory connection between two endpoints, A and B, built
// on net.Pipe (synchronous, with deadlines), with fault-injection controls
// in the style of hashicorp/raft's InmemTransport. It is production code so
// that other packages can test against it.
type MemLink struct {
	a, b      *memConn
	closeOnce sync.Once
}

// NewMemLink returns a connected pair.
func NewMemLink() *MemLink {
	pa, pb := net.Pipe()
	return &MemLink{a: &memConn{Conn: pa}, b: &memConn{Conn: pb}}
}

// A returns the first endpoint.
func (l *MemLink) A() net.Conn { return l.a }

// B returns the second endpoint.
func (l *MemLink) B() net.Conn { return l.b }

// Disconnect breaks the link: pending and future I/O on both ends fails.
func (l *MemLink) Disconnect() {
	l.closeOnce.Do(func() {
		l.a.Conn.Close()
		l.b.Conn.Close()
	})
}

// Side names one end of a MemLink.
type Side int

// The two ends of a MemLink.
const (
	SideA Side = iota
	SideB
)

// Drop makes writes from side vanish silently while on is true: the writer
// sees success, the reader sees nothing, as with a network that loses every
// packet in one direction.
func (l *MemLink) Drop(side Side, on bool) {
	if side == SideA {
		l.a.drop.Store(on)
	} else {
		l.b.drop.Store(on)
	}
}

type memConn struct {
	net.Conn
	drop atomic.Bool
}

func (c *memConn) Write(p []byte) (int, error) {
	if c.drop.Load() {
		return len(p), nil
	}
	return c.Conn.Write(p)
}

// MemLog is an in-memory rr log: a Source for a Sender and a Sink for a
// Receiver. Bytes before the base offset are not stored.
type MemLog struct {
	mu   sync.Mutex
	base int64
	data []byte
}

// NewMemLog returns an empty log that starts at offset base.
func NewMemLog(base int64) *MemLog { return &MemLog{base: base} }

// Append implements Sink: off must be the current end.
func (m *MemLog) Append(off int64, p []byte) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if end := m.base + int64(len(m.data)); off != end {
		return fmt.Errorf("memlog: append at %d, end is %d", off, end)
	}
	m.data = append(m.data, p...)
	return nil
}

// ReadAt implements Source.
func (m *MemLog) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off < m.base {
		return 0, fmt.Errorf("memlog: read at %d, before base %d", off, m.base)
	}
	i := off - m.base
	if i >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[i:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// End returns the offset just past the stored bytes.
func (m *MemLog) End() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.base + int64(len(m.data))
}

// Bytes returns a copy of the stored bytes (from base).
func (m *MemLog) Bytes() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data...)
}
