package logging

import (
	"crypto/tls"
	"net"
	"sync"
)

// batchRecords is the message size above which a write under TLS is batched:
// crypto/tls cuts a message into records of at most 16 KiB and writes each with its
// own write(2).
const batchRecords = 16 << 10

// batchConn is the TCP connection under a log channel's TLS. crypto/tls writes
// every record of a message with its own write(2), and each is a trip through the
// TCP stack (and, in the lab, a bridge and netfilter): a 64 KiB log frame took four.
// While the channel's writer holds it corked (peerConn.write), the records collect in
// a buffer and leave in one write when it uncorks. Writes made meanwhile by anything
// else (crypto/tls answering the peer) join the buffer behind them, so the stream's
// order is the order of the writes.
type batchConn struct {
	net.Conn
	mu     sync.Mutex
	corked bool
	buf    []byte
}

// BatchWrites wraps the TCP connection a log channel's TLS runs over, so that the
// channel writes each message in one write(2) (see batchConn). Give it the conn
// before TLS: tls.Client(BatchWrites(c), cfg).
func BatchWrites(c net.Conn) net.Conn { return &batchConn{Conn: c} }

// BatchListener is a listener whose connections are BatchWrites's: wrap it in
// tls.NewListener.
func BatchListener(ln net.Listener) net.Listener { return batchListener{ln} }

type batchListener struct{ net.Listener }

func (l batchListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return BatchWrites(c), nil
}

// NetConn is the TCP connection (for TCP_INFO).
func (c *batchConn) NetConn() net.Conn { return c.Conn }

func (c *batchConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.corked {
		c.buf = append(c.buf, p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *batchConn) cork() {
	c.mu.Lock()
	c.corked = true
	c.mu.Unlock()
}

// uncork writes what was collected since cork, in one write.
func (c *batchConn) uncork() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.corked = false
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

// batchOf is the batchConn under a log channel's conn, nil if it has none.
func batchOf(c net.Conn) *batchConn {
	if tc, ok := c.(*tls.Conn); ok {
		b, _ := tc.NetConn().(*batchConn)
		return b
	}
	return nil
}
