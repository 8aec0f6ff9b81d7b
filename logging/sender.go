package logging

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Source is the primary's local rr log file; *os.File fits.
type Source interface {
	ReadAt(p []byte, off int64) (int, error)
}

// Sender defaults.
const (
	DefaultMaxInFlight = 8 << 20
	DefaultMaxFrame    = 64 << 10
)

// SenderConfig configures a Sender. Zero values take defaults.
type SenderConfig struct {
	StartOffset       int64         // first byte to send (normally 12, after the rr header)
	MaxInFlight       int64         // unacked bytes allowed on the wire (default 8 MiB)
	MaxFrame          int           // largest frame data section (default 64 KiB, at most MaxFrameData)
	HeartbeatInterval time.Duration // idle heartbeat period (default 50ms)
	PeerTimeout       time.Duration // silence that ends Run with ErrPeerSilent (default 1s)
	Logger            *slog.Logger
	Now               func() time.Time // clock for timestamps and silence checks (default time.Now)
}

func (c *SenderConfig) validate() error {
	if c.StartOffset < 0 {
		return fmt.Errorf("%w: StartOffset %d is negative", ErrConfig, c.StartOffset)
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.MaxFrame == 0 {
		c.MaxFrame = DefaultMaxFrame
	}
	if c.MaxFrame < 0 || c.MaxFrame > MaxFrameData {
		return fmt.Errorf("%w: MaxFrame %d not in 1..%d", ErrConfig, c.MaxFrame, MaxFrameData)
	}
	if c.MaxInFlight < 0 {
		return fmt.Errorf("%w: MaxInFlight %d is negative", ErrConfig, c.MaxInFlight)
	}
	if c.Logger == nil {
		c.Logger = discardLogger()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return validateTimers(&c.HeartbeatInterval, &c.PeerTimeout)
}

// Ack is the backup's acknowledgement as seen by the primary.
type Ack struct {
	Offset         int64     // the backup durably holds the log up to here
	ReplayedIcount uint64    // the backup QEMU's replayed instruction count
	SentAt         time.Time // backup's clock when it sent the ack
	ReceivedAt     time.Time // our clock when it arrived
	// StallReported: the ack carried the backup's replay stall report, Stall (a
	// backup sends it when the primary asks, see ReceiverConfig.StallReports).
	StallReported bool
	Stall         ReplayStall
}

// SenderStats is a snapshot of a Sender.
type SenderStats struct {
	Published      int64 // latest published boundary
	Sent           int64 // bytes up to here were written (or are being written) to the conn
	Acked          int64 // latest ack offset
	ReplayedIcount uint64
	StallReported  bool        // the latest ack carried Stall
	Stall          ReplayStall // the backup's replay stall report, from the latest ack
	LastAckAt      time.Time
	LastPeerMsgAt  time.Time
	Behind         bool // unsent published data waits because MaxInFlight is reached
	BytesSent      uint64
	Frames         uint64
	Heartbeats     uint64
	AckRegressions uint64 // acks with an offset below an earlier ack (ignored)
	// NIC digests (see Sender.NIC): frames described to the backup, and frames
	// whose digests were dropped on a full queue (the backup skips those).
	NICFrames, NICDropped uint64
}

// MaxNICQueued is how many frames' digests a Sender queues for the backup; beyond
// it new ones are dropped (the backup sees a gap in the numbers and skips those
// frames). About 15 s of a 10 MB/s guest-to-client transfer.
const MaxNICQueued = 1 << 17

type published struct {
	boundary int64
	icount   uint64
}

// Sender streams the primary's rr log to the backup. Publish may be called
// from any goroutine; Run must be called once.
type Sender struct {
	conn net.Conn
	src  Source
	cfg  SenderConfig
	err  error // config error, reported by Run

	pub       atomic.Pointer[published]
	cons      atomic.Pointer[ConsoleMark] // the latest console mark to send (see Console)
	sync      atomic.Pointer[uint64]      // the epoch to send in a Synced, once (see Synced)
	nicMu     sync.Mutex
	nicQ      []NICDigests  // NIC digests to send, oldest first (see NIC)
	nicQueued int           // frames in nicQ
	wake      chan struct{} // cap 1: published or acked moved
	acks      chan Ack      // cap 1, latest wins
	stop      chan error    // cap 1: see Abort

	mu sync.Mutex
	st SenderStats
}

// NewSender returns a Sender that will stream src over conn starting at
// cfg.StartOffset. Run takes ownership of conn and closes it on return.
func NewSender(conn net.Conn, src Source, cfg SenderConfig) *Sender {
	s := &Sender{
		conn: conn,
		src:  src,
		wake: make(chan struct{}, 1),
		acks: make(chan Ack, 1),
		stop: make(chan error, 1),
	}
	s.err = cfg.validate()
	if s.err != nil {
		cfg.Logger, cfg.Now = discardLogger(), time.Now
	}
	s.cfg = cfg
	s.pub.Store(&published{boundary: cfg.StartOffset})
	s.st.Published, s.st.Sent, s.st.Acked = cfg.StartOffset, cfg.StartOffset, cfg.StartOffset
	return s
}

// Publish records that the Source holds data up to boundary, an rr event
// boundary at which the guest's instruction count is icount. It never
// blocks: it only swaps a pointer and nudges Run. Regressions (boundary not
// above the latest) are ignored.
func (s *Sender) Publish(boundary int64, icount uint64) {
	next := &published{boundary: boundary, icount: icount}
	for {
		cur := s.pub.Load()
		if boundary <= cur.boundary {
			return
		}
		if s.pub.CompareAndSwap(cur, next) {
			break
		}
	}
	s.nudge()
}

func (s *Sender) nudge() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Console records the primary's latest console mark; Run sends it soon, after the
// frames it is sending. Only the latest counts (each covers the bytes before it). It
// never blocks. Call it only for a backup that reads console marks (it refuses an
// unknown message type).
func (s *Sender) Console(m ConsoleMark) {
	s.cons.Store(&m)
	s.nudge()
}

// Synced has Run tell the backup, after the frames it is sending, that it now
// protects the VM under epoch (MsgSynced): the backup of a running VM claims a
// lost primary only from then on. Call it once, and only for a backup that reads
// Synced messages (it refuses an unknown message type). It never blocks.
func (s *Sender) Synced(epoch uint64) {
	s.sync.Store(&epoch)
	s.nudge()
}

// NIC queues digests of frames the primary's guest transmitted; Run sends them
// between the log's frames, which keep the priority (the output rule waits for acks
// of the log, never for these). It never blocks: beyond MaxNICQueued queued frames
// the digests are dropped and counted, and it reports false. Call it only for a
// backup that reads NIC digests (it refuses an unknown message type).
func (s *Sender) NIC(d NICDigests) bool {
	if len(d.Frames) == 0 {
		return true
	}
	s.nicMu.Lock()
	ok := s.nicQueued+len(d.Frames) <= MaxNICQueued
	if ok {
		for len(d.Frames) > 0 {
			k := min(len(d.Frames), MaxNICFrames)
			part := NICDigests{First: d.First, At: d.At, Frames: d.Frames[:k]}
			s.nicQ = append(s.nicQ, part)
			s.nicQueued += k
			d.First += uint64(k)
			d.Frames = d.Frames[k:]
		}
	}
	s.nicMu.Unlock()
	if !ok {
		s.mu.Lock()
		s.st.NICDropped += uint64(len(d.Frames))
		s.mu.Unlock()
		return false
	}
	s.nudge()
	return true
}

// nextNIC takes the oldest queued NIC digests.
func (s *Sender) nextNIC() (NICDigests, bool) {
	s.nicMu.Lock()
	defer s.nicMu.Unlock()
	if len(s.nicQ) == 0 {
		return NICDigests{}, false
	}
	d := s.nicQ[0]
	s.nicQ[0] = NICDigests{}
	s.nicQ = s.nicQ[1:]
	s.nicQueued -= len(d.Frames)
	return d, true
}

// Abort makes Run return an error wrapping ErrAborted and why, after telling the
// backup why with an Error (not a Bye): the primary failed and stops recording. Only
// the first call counts; it never blocks.
func (s *Sender) Abort(why error) {
	select {
	case s.stop <- why:
	default:
	}
}

// Acks delivers the latest ack. The channel holds one value; an unread ack
// is replaced by a newer one, so a slow reader never stalls the Sender.
func (s *Sender) Acks() <-chan Ack { return s.acks }

// Stats returns a snapshot.
func (s *Sender) Stats() SenderStats {
	s.mu.Lock()
	st := s.st
	s.mu.Unlock()
	st.Published = s.pub.Load().boundary
	st.Behind = st.Sent < st.Published && st.Sent-st.Acked >= s.cfg.MaxInFlight
	return st
}

// Run streams frames, sends heartbeats when idle and reads acks until ctx
// ends (nil), the peer is silent for PeerTimeout (ErrPeerSilent), the peer
// breaks the protocol (ErrProtocol, ErrAckBeyondSent), says Bye
// (ErrPeerClosed) or Error (ErrPeerRefused), or the conn fails. Before
// returning it tells the peer why (Bye or Error, best effort) and closes
// the conn.
func (s *Sender) Run(ctx context.Context) (err error) {
	if s.err != nil {
		s.conn.Close()
		return s.err
	}
	log := s.cfg.Logger
	pc := &peerConn{conn: s.conn, log: log, timeout: s.cfg.PeerTimeout}
	now := s.cfg.Now()
	s.mu.Lock()
	s.st.LastPeerMsgAt = now
	s.mu.Unlock()

	errc, stop := pc.runIO(s.handle)
	defer func() {
		stop(err)
		if err != nil {
			log.Warn("log sender stopped", "err", err)
		}
	}()

	// A write stuck on a peer that stopped reading is bounded by its
	// PeerTimeout deadline; it is not cut short when ctx ends, because
	// interrupting a TLS write corrupts the stream.
	period := tickEvery(s.cfg.HeartbeatInterval, s.cfg.PeerTimeout)
	tick := time.NewTicker(period)
	defer tick.Stop()
	buf := make([]byte, 0, HeaderSize+FrameHeaderSize+s.cfg.MaxFrame)
	lastWrite := now
	var lastConsole int64 // the console mark sent last
	log.Info("log sender running", "start", s.cfg.StartOffset, "max_in_flight", s.cfg.MaxInFlight)

	onTick := func() error {
		now := s.cfg.Now()
		s.mu.Lock()
		last := s.st.LastPeerMsgAt
		s.mu.Unlock()
		if d := now.Sub(last); d > s.cfg.PeerTimeout {
			return fmt.Errorf("%w: nothing from the backup for %s (timeout %s)", ErrPeerSilent, d.Round(time.Millisecond), s.cfg.PeerTimeout)
		}
		// Ticks jitter: allow half a period of slack so an idle sender
		// really beats every interval.
		if now.Sub(lastWrite) >= s.cfg.HeartbeatInterval-period/2 {
			if err := pc.write(appendHeartbeat(buf[:0], now)); err != nil {
				return fmt.Errorf("sending heartbeat: %w", err)
			}
			lastWrite = now
			s.mu.Lock()
			s.st.Heartbeats++
			s.mu.Unlock()
		}
		return nil
	}

	// handleTick runs onTick and says whether Run must return, and with what.
	handleTick := func() (bool, error) {
		err := onTick()
		switch {
		case err == nil:
			return false, nil
		case ctx.Err() != nil:
			return true, nil
		case errors.Is(err, ErrPeerSilent):
			return true, err
		default:
			return true, explain(errc, err)
		}
	}

	for {
		// Without blocking: stop, fail, or tick first.
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case why := <-s.stop:
			return fmt.Errorf("%w: %w", ErrAborted, why)
		case <-tick.C:
			if done, err := handleTick(); done {
				return err
			}
		default:
		}
		if m := s.cons.Load(); m != nil && m.Bytes > lastConsole {
			if err := pc.write(appendConsole(buf[:0], *m)); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return explain(errc, fmt.Errorf("sending console mark: %w", err))
			}
			lastConsole, lastWrite = m.Bytes, s.cfg.Now()
		}
		if e := s.sync.Swap(nil); e != nil {
			if err := pc.write(appendSynced(buf[:0], *e)); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return explain(errc, fmt.Errorf("sending synced: %w", err))
			}
			lastWrite = s.cfg.Now()
		}
		// One NIC message per round, between frames of the log.
		if d, ok := s.nextNIC(); ok {
			if err := pc.write(appendNIC(buf[:0], d)); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return explain(errc, fmt.Errorf("sending NIC digests: %w", err))
			}
			lastWrite = s.cfg.Now()
			s.mu.Lock()
			s.st.NICFrames += uint64(len(d.Frames))
			s.mu.Unlock()
			s.nudge() // more may be queued: come round again
		}
		var sent bool
		buf, sent, err = s.sendFrame(pc, buf[:0])
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, ErrSource) {
				return err
			}
			return explain(errc, err)
		}
		if sent {
			lastWrite = s.cfg.Now()
			continue
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case why := <-s.stop:
			return fmt.Errorf("%w: %w", ErrAborted, why)
		case <-tick.C:
			if done, err := handleTick(); done {
				return err
			}
		case <-s.wake:
		}
	}
}

// sendFrame sends the next frame if there is published data and window
// room. The frame ends at the latest published boundary or earlier (MaxFrame,
// window); only a frame ending at the boundary carries its icount.
func (s *Sender) sendFrame(pc *peerConn, buf []byte) ([]byte, bool, error) {
	p := s.pub.Load()
	s.mu.Lock()
	from, acked := s.st.Sent, s.st.Acked
	s.mu.Unlock()
	end := min(p.boundary, from+int64(s.cfg.MaxFrame), acked+s.cfg.MaxInFlight)
	if end <= from {
		return buf, false, nil
	}
	var icount uint64
	if end == p.boundary {
		icount = p.icount
	}
	n := int(end - from)
	// Encode the header with placeholder data, then read the data in place.
	data := buf[HeaderSize+FrameHeaderSize : HeaderSize+FrameHeaderSize+n]
	got, err := s.src.ReadAt(data, from)
	if got < n {
		if err == nil || errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return buf, false, fmt.Errorf("%w: reading %d published bytes at %d: got %d: %w", ErrSource, n, from, got, err)
	}
	buf = AppendFrame(buf[:0], from, icount, data)
	// Count the bytes as sent before writing: an ack for them may arrive
	// before Write returns, and must not look like a lie.
	s.mu.Lock()
	s.st.Sent = end
	s.st.BytesSent += uint64(n)
	s.st.Frames++
	s.mu.Unlock()
	if err := pc.write(buf); err != nil {
		return buf, false, fmt.Errorf("sending frame at %d (%d bytes): %w", from, n, err)
	}
	return buf, true, nil
}

// handle runs on the reader goroutine for each message from the backup.
func (s *Sender) handle(m Message) error {
	now := s.cfg.Now()
	s.mu.Lock()
	s.st.LastPeerMsgAt = now
	s.mu.Unlock()
	switch m.Type {
	case MsgAck:
		w, err := decodeAck(m.Payload)
		if err != nil {
			return err
		}
		return s.onAck(w, now)
	case MsgHeartbeat:
		_, err := decodeHeartbeat(m.Payload)
		return err
	case MsgBye, MsgError:
		return peerGone(m)
	default:
		return fmt.Errorf("%w: unexpected %s message from the backup", ErrProtocol, m.Type)
	}
}

func (s *Sender) onAck(w wireAck, now time.Time) error {
	s.mu.Lock()
	sent, acked := s.st.Sent, s.st.Acked
	if w.Offset > uint64(sent) {
		s.mu.Unlock()
		return fmt.Errorf("%w: ack for offset %d, only %d sent", ErrAckBeyondSent, w.Offset, sent)
	}
	off := int64(w.Offset)
	if off < acked {
		s.st.AckRegressions++
		n := s.st.AckRegressions
		s.mu.Unlock()
		s.cfg.Logger.Debug("ignoring ack regression", "ack", off, "acked", acked, "count", n)
		return nil
	}
	s.st.Acked = off
	s.st.ReplayedIcount = w.Replayed
	s.st.StallReported, s.st.Stall = w.HasStall, w.Stall
	s.st.LastAckAt = now
	s.mu.Unlock()

	a := Ack{Offset: off, ReplayedIcount: w.Replayed, SentAt: unixNano(w.SentNano), ReceivedAt: now,
		StallReported: w.HasStall, Stall: w.Stall}
	// Latest wins. Only this goroutine sends on s.acks, so after draining
	// one stale value the send below cannot fail for lack of room except
	// when the reader raced us to it, which is as good.
	select {
	case s.acks <- a:
	default:
		select {
		case <-s.acks:
		default:
		}
		select {
		case s.acks <- a:
		default:
		}
	}
	if off > acked {
		s.nudge()
	}
	return nil
}
