package logging

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// Defaults shared by both ends.
const (
	DefaultHeartbeatInterval = 50 * time.Millisecond
	DefaultPeerTimeout       = time.Second
	// goodbyeTimeout bounds the write of a final Bye/Error message.
	goodbyeTimeout = 250 * time.Millisecond
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// validateTimers checks and defaults the two timers.
func validateTimers(hb, timeout *time.Duration) error {
	if *hb == 0 {
		*hb = DefaultHeartbeatInterval
	}
	if *timeout == 0 {
		*timeout = DefaultPeerTimeout
	}
	if *hb < 0 || *timeout < 0 {
		return fmt.Errorf("%w: negative HeartbeatInterval (%s) or PeerTimeout (%s)", ErrConfig, *hb, *timeout)
	}
	if *timeout <= *hb {
		return fmt.Errorf("%w: PeerTimeout (%s) must be larger than HeartbeatInterval (%s)", ErrConfig, *timeout, *hb)
	}
	return nil
}

// tickEvery is how often Run checks for silence and idleness.
func tickEvery(hb, timeout time.Duration) time.Duration {
	d := hb
	if q := timeout / 4; q < d {
		d = q
	}
	if d < time.Millisecond {
		d = time.Millisecond
	}
	return d
}

// peerConn is the I/O plumbing shared by Sender and Receiver: a reader
// goroutine that hands each message to a handler, and a single writer (the
// Run goroutine) whose writes are bounded by a deadline.
type peerConn struct {
	conn    net.Conn
	log     *slog.Logger
	timeout time.Duration
}

// readLoop reads messages until the conn fails or handle returns an error;
// it reports the first error on errc (buffered 1) and returns.
func (p *peerConn) readLoop(handle func(Message) error, errc chan<- error) {
	br := bufio.NewReaderSize(p.conn, 64<<10)
	var buf []byte // reused: handle keeps nothing of a message past its call
	for {
		var m Message
		var err error
		m, buf, err = readMessageInto(br, buf)
		if err != nil {
			err = fmt.Errorf("reading from peer: %w", err)
		} else {
			err = handle(m)
		}
		if err != nil {
			errc <- err
			return
		}
	}
}

// write writes b with a deadline of PeerTimeout: a peer that stops draining
// the connection for that long is treated as silent.
func (p *peerConn) write(b []byte) error {
	if err := p.conn.SetWriteDeadline(time.Now().Add(p.timeout)); err != nil {
		return fmt.Errorf("setting write deadline: %w", err)
	}
	var bc *batchConn
	if len(b) > batchRecords {
		if bc = batchOf(p.conn); bc != nil {
			bc.cork()
		}
	}
	_, err := p.conn.Write(b)
	if bc != nil {
		if uerr := bc.uncork(); err == nil {
			err = uerr
		}
	}
	if err != nil {
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("%w: write blocked for %s: %w", ErrPeerSilent, p.timeout, err)
		}
		return fmt.Errorf("writing to peer: %w", err)
	}
	return nil
}

// goodbye tells the peer why we are leaving (Bye for a clean stop, Error for
// a refusal), best effort and briefly, then closes the conn.
func (p *peerConn) goodbye(runErr error) {
	var msg []byte
	switch {
	case runErr == nil:
		msg = appendReason(nil, MsgBye, "shutdown")
	case isRefusal(runErr):
		msg = appendReason(nil, MsgError, runErr.Error())
	}
	if msg != nil {
		d := goodbyeTimeout
		if p.timeout < d {
			d = p.timeout
		}
		if err := p.conn.SetWriteDeadline(time.Now().Add(d)); err == nil {
			if _, err := p.conn.Write(msg); err != nil {
				p.log.Debug("final message not delivered", "err", err)
			}
		}
	}
	if err := p.conn.Close(); err != nil {
		p.log.Debug("closing conn", "err", err)
	}
}

// runIO starts the reader goroutine and returns a stop function that closes
// the conn (after a goodbye) and waits for the reader to exit.
func (p *peerConn) runIO(handle func(Message) error) (errc <-chan error, stop func(runErr error)) {
	ch := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.readLoop(handle, ch)
	}()
	var once sync.Once
	return ch, func(runErr error) {
		once.Do(func() {
			p.goodbye(runErr)
			wg.Wait()
		})
	}
}

// peerGone converts a Bye/Error message into an error.
func peerGone(m Message) error {
	if m.Type == MsgBye {
		return fmt.Errorf("%w: %q", ErrPeerClosed, decodeReason(m.Payload))
	}
	return fmt.Errorf("%w: %q", ErrPeerRefused, decodeReason(m.Payload))
}

// explain picks the better reason when a write failed: if the reader has
// just learned why (the peer said Bye or Error, or sent garbage), that is
// the real cause; give it a moment to arrive.
func explain(errc <-chan error, writeErr error) error {
	t := time.NewTimer(goodbyeTimeout)
	defer t.Stop()
	select {
	case err := <-errc:
		return err
	case <-t.C:
		return writeErr
	}
}
