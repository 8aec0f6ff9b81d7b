package logging

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Sink is the backup's local log store. Append is called with consecutive
// offsets; the receiver acks only bytes for which Append returned nil, so
// Append must return only once the bytes are as durable as acks promise. data is
// valid only during the call (the receiver reuses it): keep a copy, not the slice.
type Sink interface {
	Append(off int64, data []byte) error
}

// AckLimiter is a Sink that holds bytes it must not acknowledge yet: the receiver
// acks at most AckLimit, read after every Append. The backup's sink limits acks to
// the newest point where its log may be cut for a go-live, so that every offset the
// primary sees acknowledged (and releases output up to) is one the backup can
// replay to exactly: stamp <= ack <= cut. AckLimit must not exceed the end of what
// Append was given; a limit that moves backwards is ignored.
type AckLimiter interface {
	AckLimit() int64
}

// ReceiverConfig configures a Receiver. Zero values take defaults.
type ReceiverConfig struct {
	StartOffset       int64         // first expected byte (normally 12)
	HeartbeatInterval time.Duration // an ack goes out at least this often (default 50ms)
	PeerTimeout       time.Duration // silence that ends Run with ErrPeerSilent (default 1s)
	// AckDelay delays each ack by this much after its frame was appended.
	// TEST-ONLY: it proves that the primary's output rule holds frames until
	// acked. Leave it 0 in production.
	AckDelay time.Duration
	// StallReports makes every ack carry the replay stall report set by SetStall
	// (AckStallSize). Set it only when the primary said it reads them: an older
	// primary refuses such acks as a protocol violation.
	StallReports bool
	// OnConsole, when set, is called (on the reader goroutine; it must not block)
	// with each console mark the primary sends. A backup that sets it says so in
	// its handshake; without it a console mark is a protocol violation.
	OnConsole func(ConsoleMark)
	// OnSynced, when set, is called (on the reader goroutine; it must not block)
	// with the epoch of a Synced message: the backup of a running VM protects it
	// from now on. Without it a Synced message is a protocol violation.
	OnSynced func(epoch uint64)
	// OnNIC, likewise, is called with the digests of the frames the primary's guest
	// transmitted (MsgNIC); without it such a message is a protocol violation.
	OnNIC  func(NICDigests)
	Logger *slog.Logger
	Now    func() time.Time // default time.Now
}

func (c *ReceiverConfig) validate() error {
	if c.StartOffset < 0 {
		return fmt.Errorf("%w: StartOffset %d is negative", ErrConfig, c.StartOffset)
	}
	if c.AckDelay < 0 {
		return fmt.Errorf("%w: AckDelay %s is negative", ErrConfig, c.AckDelay)
	}
	if c.Logger == nil {
		c.Logger = discardLogger()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return validateTimers(&c.HeartbeatInterval, &c.PeerTimeout)
}

// Rejections counts refused input by kind.
type Rejections struct {
	Checksum, Gap, Stale, Protocol uint64
}

// ReceiverStats is a snapshot of a Receiver.
type ReceiverStats struct {
	Held           int64  // bytes up to here are appended to the Sink
	Acked          int64  // highest offset sent in an ack
	BoundaryIcount uint64 // icount of the last frame that ended at an event boundary
	Frames         uint64
	Bytes          uint64
	Acks           uint64
	LastFrameAt    time.Time
	LastPeerMsgAt  time.Time
	Rejected       Rejections
}

type pendingAck struct {
	off int64
	at  time.Time // when it may be acked
}

// Receiver is the backup's end of the log channel.
type Receiver struct {
	conn     net.Conn
	sink     Sink
	cfg      ReceiverConfig
	err      error
	replayed atomic.Uint64
	held     atomic.Int64
	ackLimit atomic.Int64  // the highest offset that may be acked (see AckLimiter)
	ackDelay atomic.Int64  // nanoseconds; starts as cfg.AckDelay, see SetAckDelay
	wake     chan struct{} // cap 1: something new to ack
	abort    chan error    // cap 1: see Abort

	mu      sync.Mutex
	st      ReceiverStats
	pending []pendingAck // only with AckDelay > 0
	stall   ReplayStall  // see SetStall
}

// NewReceiver returns a Receiver that appends frames from conn to sink.
// Run takes ownership of conn and closes it on return.
func NewReceiver(conn net.Conn, sink Sink, cfg ReceiverConfig) *Receiver {
	r := &Receiver{conn: conn, sink: sink, wake: make(chan struct{}, 1), abort: make(chan error, 1)}
	r.err = cfg.validate()
	if r.err != nil {
		cfg.Logger, cfg.Now = discardLogger(), time.Now
	}
	r.cfg = cfg
	r.held.Store(cfg.StartOffset)
	r.ackLimit.Store(cfg.StartOffset)
	r.ackDelay.Store(int64(cfg.AckDelay))
	r.st.Held, r.st.Acked = cfg.StartOffset, cfg.StartOffset
	return r
}

// SetReplayed records the backup QEMU's replayed instruction count. When it has
// moved, an ack carrying it goes out at once (not at the next heartbeat): the
// primary measures the backup's lag, and throttles, from these reports. It never
// blocks on the network.
func (r *Receiver) SetReplayed(icount uint64) {
	if r.replayed.Swap(icount) != icount {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// SetStall records the replay stall report that acks carry (with
// ReceiverConfig.StallReports). When the replay enters or leaves a stall an ack
// goes out at once; while it stays stalled the periodic acks carry the growing
// duration. It never blocks on the network.
func (r *Receiver) SetStall(s ReplayStall) {
	r.mu.Lock()
	changed := s.Stalled() != r.stall.Stalled() || s.Episodes != r.stall.Episodes
	r.stall = s
	r.mu.Unlock()
	if changed {
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

// Abort makes Run return an error wrapping ErrAborted and why, after telling the
// primary why with an Error: the backup failed locally and steps down. Only the first
// call counts; it never blocks.
func (r *Receiver) Abort(why error) {
	select {
	case r.abort <- why:
	default:
	}
}

// SetAckDelay changes the test-only ack delay while running (see
// ReceiverConfig.AckDelay); negative values count as 0.
func (r *Receiver) SetAckDelay(d time.Duration) {
	if d < 0 {
		d = 0
	}
	r.ackDelay.Store(int64(d))
}

// Held is the offset up to which the Sink holds the log.
func (r *Receiver) Held() int64 { return r.held.Load() }

// Stats returns a snapshot.
func (r *Receiver) Stats() ReceiverStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.st
}

// Run receives frames, appends them to the Sink and acks them, and sends an
// ack at least every HeartbeatInterval (it doubles as the heartbeat and
// carries the replayed icount). It returns nil when ctx ends, or the reason
// it stopped: ErrChecksum, ErrGap, ErrStale, ErrProtocol, ErrSink,
// ErrPeerSilent, ErrPeerClosed, ErrPeerRefused or a conn error. Before
// returning it tells the peer why (best effort) and closes the conn.
func (r *Receiver) Run(ctx context.Context) (err error) {
	if r.err != nil {
		r.conn.Close()
		return r.err
	}
	log := r.cfg.Logger
	pc := &peerConn{conn: r.conn, log: log, timeout: r.cfg.PeerTimeout}
	now := r.cfg.Now()
	r.mu.Lock()
	r.st.LastPeerMsgAt = now
	r.mu.Unlock()

	errc, stop := pc.runIO(r.handle)
	defer func() {
		stop(err)
		if err != nil {
			log.Warn("log receiver stopped", "err", err, "held", r.Held())
		}
	}()

	// Blocked writes are bounded by the PeerTimeout deadline (see Sender.Run).
	period := tickEvery(r.cfg.HeartbeatInterval, r.cfg.PeerTimeout)
	tick := time.NewTicker(period)
	defer tick.Stop()
	delay := time.NewTimer(time.Hour)
	delay.Stop()
	defer delay.Stop()
	lastAck := now
	var lastReplayed uint64
	var lastStall ReplayStall // as last sent
	var buf []byte
	log.Info("log receiver running", "start", r.cfg.StartOffset)

	for {
		force := false
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return r.count(err)
		case why := <-r.abort:
			return fmt.Errorf("%w: %w", ErrAborted, why)
		case <-r.wake:
		case <-delay.C:
		case <-tick.C:
			now := r.cfg.Now()
			r.mu.Lock()
			last := r.st.LastPeerMsgAt
			r.mu.Unlock()
			if d := now.Sub(last); d > r.cfg.PeerTimeout {
				return fmt.Errorf("%w: nothing from the primary for %s (timeout %s)", ErrPeerSilent, d.Round(time.Millisecond), r.cfg.PeerTimeout)
			}
			force = now.Sub(lastAck) >= r.cfg.HeartbeatInterval-period/2
		}
		now := r.cfg.Now()
		off, next := r.ackable(now)
		if !next.IsZero() {
			delay.Reset(next.Sub(now))
		}
		replayed := r.replayed.Load()
		r.mu.Lock()
		stall := r.stall
		advanced := off > r.st.Acked || replayed != lastReplayed
		r.mu.Unlock()
		stallMoved := r.cfg.StallReports && (stall.Stalled() != lastStall.Stalled() || stall.Episodes != lastStall.Episodes)
		if !advanced && !stallMoved && !force {
			continue
		}
		buf = appendAck(buf[:0], wireAck{Offset: uint64(off), Replayed: replayed, SentNano: uint64(now.UnixNano()),
			HasStall: r.cfg.StallReports, Stall: stall})
		if err := pc.write(buf); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return r.count(explain(errc, fmt.Errorf("sending ack for %d: %w", off, err)))
		}
		lastAck, lastReplayed, lastStall = now, replayed, stall
		r.mu.Lock()
		r.st.Acked = max(r.st.Acked, off)
		r.st.Acks++
		r.mu.Unlock()
	}
}

// ackable returns the highest offset that may be acked at now and, with
// AckDelay, when the next pending one becomes ackable (zero if none).
func (r *Receiver) ackable(now time.Time) (int64, time.Time) {
	if r.ackDelay.Load() == 0 {
		r.mu.Lock()
		r.pending = nil
		r.mu.Unlock()
		return r.ackLimit.Load(), time.Time{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	off := r.st.Acked
	i := 0
	for ; i < len(r.pending) && !r.pending[i].at.After(now); i++ {
		off = r.pending[i].off
	}
	r.pending = r.pending[i:]
	if len(r.pending) > 0 {
		return off, r.pending[0].at
	}
	return off, time.Time{}
}

// handle runs on the reader goroutine for each message from the primary.
func (r *Receiver) handle(m Message) error {
	now := r.cfg.Now()
	r.mu.Lock()
	r.st.LastPeerMsgAt = now
	r.mu.Unlock()
	switch m.Type {
	case MsgFrame:
		return r.onFrame(m.Payload, now)
	case MsgHeartbeat:
		_, err := decodeHeartbeat(m.Payload)
		return err
	case MsgConsole:
		if r.cfg.OnConsole == nil {
			return fmt.Errorf("%w: unexpected %s message from the primary", ErrProtocol, m.Type)
		}
		cm, err := decodeConsole(m.Payload)
		if err != nil {
			return err
		}
		r.cfg.OnConsole(cm)
		return nil
	case MsgSynced:
		if r.cfg.OnSynced == nil {
			return fmt.Errorf("%w: unexpected %s message from the primary", ErrProtocol, m.Type)
		}
		e, err := decodeSynced(m.Payload)
		if err != nil {
			return err
		}
		r.cfg.OnSynced(e)
		return nil
	case MsgNIC:
		if r.cfg.OnNIC == nil {
			return fmt.Errorf("%w: unexpected %s message from the primary", ErrProtocol, m.Type)
		}
		d, err := DecodeNIC(m.Payload)
		if err != nil {
			return err
		}
		r.cfg.OnNIC(d)
		return nil
	case MsgBye, MsgError:
		return peerGone(m)
	default:
		return fmt.Errorf("%w: unexpected %s message from the primary", ErrProtocol, m.Type)
	}
}

func (r *Receiver) onFrame(p []byte, now time.Time) error {
	f, err := DecodeFrame(p)
	if err != nil {
		return err
	}
	want := r.held.Load()
	switch {
	case f.Offset > want:
		return fmt.Errorf("%w: frame at %d, expected %d (%d bytes missing)", ErrGap, f.Offset, want, f.Offset-want)
	case f.Offset < want:
		return fmt.Errorf("%w: frame at %d (%d bytes), expected %d", ErrStale, f.Offset, len(f.Data), want)
	}
	if err := f.Verify(); err != nil {
		return err
	}
	if err := r.sink.Append(f.Offset, f.Data); err != nil {
		return fmt.Errorf("%w: %d bytes at %d: %w", ErrSink, len(f.Data), f.Offset, err)
	}
	end := f.End()
	r.held.Store(end)
	lim := end
	if l, ok := r.sink.(AckLimiter); ok {
		lim = min(end, l.AckLimit())
	}
	if lim > r.ackLimit.Load() {
		r.ackLimit.Store(lim) // only this goroutine stores it after NewReceiver
	} else {
		lim = r.ackLimit.Load()
	}
	r.mu.Lock()
	r.st.Held = end
	r.st.Frames++
	r.st.Bytes += uint64(len(f.Data))
	r.st.LastFrameAt = now
	if f.Icount != 0 {
		r.st.BoundaryIcount = f.Icount
	}
	if d := time.Duration(r.ackDelay.Load()); d > 0 {
		r.pending = append(r.pending, pendingAck{off: lim, at: now.Add(d)})
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
	return nil
}

// count tallies a refusal by kind and returns err unchanged; Run calls it
// once with the error that stops it.
func (r *Receiver) count(err error) error {
	if err == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case errors.Is(err, ErrChecksum):
		r.st.Rejected.Checksum++
	case errors.Is(err, ErrGap):
		r.st.Rejected.Gap++
	case errors.Is(err, ErrStale):
		r.st.Rejected.Stale++
	case errors.Is(err, ErrProtocol):
		r.st.Rejected.Protocol++
	}
	return err
}
