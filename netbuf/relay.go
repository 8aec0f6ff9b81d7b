package netbuf

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/outputrule"
	"github.com/ftvmd/ftvmd/throttle"
)

// Defaults for RelayConfig.
const (
	// DefaultMaxFrame is the largest guest frame accepted: QEMU's net buffer
	// (NET_BUFSIZE) is 4096+65536 bytes, so any frame QEMU can send fits.
	DefaultMaxFrame = 4096 + 65536
	// MinFrame is an Ethernet header; shorter datagrams are truncated frames.
	MinFrame           = 14
	DefaultRcvBuf      = 4 << 20
	DefaultSendTimeout = 100 * time.Millisecond
)

// Sentinel errors for the relay.
var (
	ErrConfig         = errors.New("netbuf: invalid relay config")
	ErrAlreadyRunning = errors.New("netbuf: relay already running or closed")
	ErrOversized      = errors.New("netbuf: oversized frame from QEMU")
	ErrTruncated      = errors.New("netbuf: truncated frame from QEMU")
	ErrStamp          = errors.New("netbuf: cannot stamp frame")
	ErrInvariant      = errors.New("netbuf: output rule violated")
)

// TapDevice is the host side of the VM's NIC: one Read or Write is one
// Ethernet frame. *os.File from OpenTap satisfies it; SetReadDeadline is how
// Run stops the reader.
type TapDevice interface {
	io.ReadWriter
	SetReadDeadline(time.Time) error
}

// RelayConfig configures a Relay.
type RelayConfig struct {
	// AgentSock is the unix datagram socket the relay binds; QEMU sends each
	// guest frame to it (QEMU's -netdev dgram remote.path). A stale socket
	// file there is replaced.
	AgentSock string
	// QEMUSock is QEMU's own socket (local.path); frames from the network are
	// sent to it. It may appear after the relay starts.
	QEMUSock string
	// Tap carries frames to and from the host network.
	Tap TapDevice
	// Stamp returns the current rr log size; it is called once per guest
	// frame, right after the frame is received.
	Stamp func() (int64, error)
	// Rule is the output rule; the relay takes it over (nobody else may use
	// it afterwards) and serialises all access to it. Nil means
	// outputrule.New(outputrule.Config{}, outputrule.Protected).
	Rule *outputrule.Rule
	// MaxFrame is the largest accepted guest frame (0: DefaultMaxFrame).
	// Larger datagrams are counted, logged and never released.
	MaxFrame int
	// RcvBuf is the SO_RCVBUF asked for AgentSock (0: DefaultRcvBuf).
	RcvBuf int
	// SendTimeout bounds one send of a network frame to QEMU (0:
	// DefaultSendTimeout); after it the frame is dropped and counted, as a
	// full NIC queue would.
	SendTimeout time.Duration
	// Pacer paces the frames from the network to QEMU while the backup is
	// behind (see throttle.Pacer); the relay takes it over and serialises all
	// access to it, and the caller feeds it lag samples through Pace. Nil: every
	// frame goes to QEMU at once.
	Pacer *throttle.Pacer
	// CheckInvariant runs outputrule.CheckRelease on every frame before it
	// is written; a violation is counted, logged and the frame not written.
	CheckInvariant bool
	Logger         *slog.Logger
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

func (c *RelayConfig) validate() error {
	switch {
	case c.AgentSock == "":
		return fmt.Errorf("%w: AgentSock is empty", ErrConfig)
	case c.QEMUSock == "":
		return fmt.Errorf("%w: QEMUSock is empty", ErrConfig)
	case c.AgentSock == c.QEMUSock:
		return fmt.Errorf("%w: AgentSock and QEMUSock are both %q", ErrConfig, c.AgentSock)
	case c.Tap == nil:
		return fmt.Errorf("%w: Tap is nil", ErrConfig)
	case c.Stamp == nil:
		return fmt.Errorf("%w: Stamp is nil", ErrConfig)
	case c.MaxFrame < 0 || (c.MaxFrame > 0 && c.MaxFrame < MinFrame):
		return fmt.Errorf("%w: MaxFrame %d (min %d)", ErrConfig, c.MaxFrame, MinFrame)
	case c.RcvBuf < 0 || c.SendTimeout < 0:
		return fmt.Errorf("%w: negative RcvBuf %d or SendTimeout %s", ErrConfig, c.RcvBuf, c.SendTimeout)
	}
	if c.Rule == nil {
		c.Rule = outputrule.New(outputrule.Config{}, outputrule.Protected)
	}
	if c.MaxFrame == 0 {
		c.MaxFrame = DefaultMaxFrame
	}
	if c.RcvBuf == 0 {
		c.RcvBuf = DefaultRcvBuf
	}
	if c.SendTimeout == 0 {
		c.SendTimeout = DefaultSendTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// RelayStats are the rule's stats plus the relay's own counters.
type RelayStats struct {
	Rule outputrule.Stats

	GuestFrames, GuestBytes uint64 // datagrams accepted from QEMU
	TapFrames, TapBytes     uint64 // guest frames written to the tap
	NetFrames, NetBytes     uint64 // frames from the tap delivered to QEMU
	NetDrops                uint64 // frames from the tap QEMU could not take
	// Pacing is the pacer's state (zero without a pacer); its Drops are frames
	// from the tap dropped on a full pacing queue, not counted in NetDrops.
	Pacing throttle.PacerStats

	BackpressureWaits uint64        // times the guest reader stopped on ErrFull
	BackpressureTime  time.Duration // total time stopped
	Oversized         uint64
	Truncated         uint64
	StampErrors       uint64
	TapWriteErrors    uint64
	Invariant         uint64 // CheckRelease failures (frame not written)
}

type counters struct {
	guestFrames, guestBytes, tapFrames, tapBytes, netFrames, netBytes, netDrops atomic.Uint64
	bpWaits, bpNanos, oversized, truncated, stampErrs, tapWriteErrs, invariant  atomic.Uint64
}

// Relay moves frames between QEMU's datagram NIC and the tap and enforces
// the output rule on the guest's frames. Create it with NewRelay, run it
// once with Run. Ack, Sent, SetMode and Stats are safe for concurrent use.
type Relay struct {
	cfg RelayConfig
	log *slog.Logger

	agent *net.UnixConn // bound at AgentSock

	mu   sync.Mutex // guards rule
	rule *outputrule.Rule
	// halted mirrors rule.Mode()==Halted for the release loop's per-frame
	// check without the lock.
	halted atomic.Bool

	kick chan struct{} // wakes the release loop
	room chan struct{} // wakes a guest reader stopped by backpressure

	// The network->QEMU direction. sendMu makes each pacing decision and the
	// send it allows one step, so that frames reach QEMU in the order they came
	// (the network reader sends what the pacer lets pass at once, the paced
	// loop what it held); paceMu guards the pacer alone, so a lag sample never
	// waits for a send.
	sendMu   sync.Mutex
	toQEMU   *qemuSender
	paceMu   sync.Mutex
	pacer    *throttle.Pacer // nil: no pacing
	paceKick chan struct{}   // wakes the paced loop

	started   atomic.Bool
	closeOnce sync.Once
	closeErr  error
	c         counters
}

// NewRelay validates cfg and binds AgentSock. Call Run, or Close if Run is
// never called.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if err := removeStaleSocket(cfg.AgentSock); err != nil {
		return nil, err
	}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: cfg.AgentSock, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("netbuf: bind %s: %w", cfg.AgentSock, err)
	}
	setRcvBuf(conn, cfg.RcvBuf, cfg.Logger)
	r := &Relay{
		cfg:   cfg,
		log:   cfg.Logger.With("agent_sock", cfg.AgentSock),
		agent: conn,
		rule:  cfg.Rule,
		kick:  make(chan struct{}, 1),
		room:  make(chan struct{}, 1),
		pacer: cfg.Pacer,

		paceKick: make(chan struct{}, 1),
	}
	r.toQEMU = &qemuSender{
		addr:    &net.UnixAddr{Name: cfg.QEMUSock, Net: "unixgram"},
		timeout: cfg.SendTimeout,
		c:       &r.c,
		log:     r.log,
	}
	r.halted.Store(cfg.Rule.Mode() == outputrule.Halted)
	return r, nil
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("netbuf: stat %s: %w", path, err)
	case fi.Mode().Type() != os.ModeSocket:
		return fmt.Errorf("%w: %s exists and is not a socket", ErrConfig, path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("netbuf: remove stale socket %s: %w", path, err)
	}
	return nil
}

// setRcvBuf asks for a large receive buffer, forcing past rmem_max when
// privileged. Best effort: a smaller buffer only makes QEMU's queue fill
// sooner.
func setRcvBuf(conn *net.UnixConn, n int, log *slog.Logger) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return
	}
	var serr error
	_ = rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n)
	})
	if serr == nil {
		return
	}
	if err := conn.SetReadBuffer(n); err != nil {
		log.Warn("netbuf: cannot set SO_RCVBUF", "want", n, "err", err)
	}
}

func notify(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Close releases the sockets. Run calls it on return.
func (r *Relay) Close() error {
	r.closeOnce.Do(func() {
		r.started.Store(true) // a closed relay cannot be run
		var errs []error
		if err := r.agent.Close(); err != nil {
			errs = append(errs, err)
		}
		if err := os.Remove(r.cfg.AgentSock); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
		if err := errors.Join(errs...); err != nil {
			r.closeErr = fmt.Errorf("netbuf: close %s: %w", r.cfg.AgentSock, err)
		}
	})
	return r.closeErr
}

// Ack records the backup's ack of the log up to off. Non-blocking apart from
// the short rule lock. Lying acks are counted in Stats().Rule.LyingAcks.
func (r *Relay) Ack(off int64) {
	r.mu.Lock()
	err := r.rule.Ack(off, r.cfg.Now())
	more := r.rule.HasReady()
	r.mu.Unlock()
	if err != nil {
		r.log.Warn("netbuf: ack ignored", "off", off, "err", err)
	}
	if more {
		notify(r.kick)
	}
}

// Sent records the highest log offset sent to the backup.
func (r *Relay) Sent(off int64) {
	r.mu.Lock()
	r.rule.Sent(off)
	r.mu.Unlock()
}

// SetMode switches the output rule's mode (see outputrule.Rule.SetMode).
func (r *Relay) SetMode(m outputrule.Mode) {
	r.mu.Lock()
	r.rule.SetMode(m, r.cfg.Now())
	mode := r.rule.Mode()
	r.halted.Store(mode == outputrule.Halted)
	r.mu.Unlock()
	r.log.Info("netbuf: output mode", "mode", mode)
	notify(r.kick)
	notify(r.room)
}

// Protect holds output from now on (SetMode Protected): every frame the
// relay reads after it returns is held until the ack passes its stamp. It
// fails only on a Halted relay, which never releases anything again.
func (r *Relay) Protect() error {
	r.SetMode(outputrule.Protected)
	r.mu.Lock()
	mode := r.rule.Mode()
	r.mu.Unlock()
	if mode != outputrule.Protected {
		return fmt.Errorf("%w: output is %v", ErrNotHeld, mode)
	}
	return nil
}

// Stats returns a snapshot of the counters.
func (r *Relay) Stats() RelayStats {
	r.mu.Lock()
	rs := r.rule.Stats()
	r.mu.Unlock()
	var ps throttle.PacerStats
	if r.pacer != nil {
		r.paceMu.Lock()
		ps = r.pacer.Stats()
		r.paceMu.Unlock()
	}
	c := &r.c
	return RelayStats{
		Pacing:            ps,
		Rule:              rs,
		GuestFrames:       c.guestFrames.Load(),
		GuestBytes:        c.guestBytes.Load(),
		TapFrames:         c.tapFrames.Load(),
		TapBytes:          c.tapBytes.Load(),
		NetFrames:         c.netFrames.Load(),
		NetBytes:          c.netBytes.Load(),
		NetDrops:          c.netDrops.Load(),
		BackpressureWaits: c.bpWaits.Load(),
		BackpressureTime:  time.Duration(c.bpNanos.Load()),
		Oversized:         c.oversized.Load(),
		Truncated:         c.truncated.Load(),
		StampErrors:       c.stampErrs.Load(),
		TapWriteErrors:    c.tapWriteErrs.Load(),
		Invariant:         c.invariant.Load(),
	}
}

// Run relays until ctx is done or a socket fails, then closes the relay. It
// returns nil when stopped by ctx. It runs three goroutines it owns:
// guest->rule (QEMU's datagrams), tap->QEMU, and rule->tap (releases), and
// with a pacer a fourth that sends the frames it held.
func (r *Relay) Run(ctx context.Context) error {
	if !r.started.CompareAndSwap(false, true) {
		return ErrAlreadyRunning
	}
	defer r.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var wg sync.WaitGroup
	errs := make(chan error, 4)
	loop := func(name string, fn func(context.Context) error) {
		wg.Go(func() {
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				errs <- fmt.Errorf("netbuf: %s: %w", name, err)
			}
			cancel()
		})
	}
	loop("guest reader", r.guestLoop)
	loop("network reader", r.netLoop)
	loop("release", r.releaseLoop)
	if r.pacer != nil {
		loop("paced sender", r.pacedLoop)
	}
	wg.Go(func() {
		<-ctx.Done()
		past := time.Unix(1, 0)
		_ = r.agent.SetReadDeadline(past)
		_ = r.cfg.Tap.SetReadDeadline(past)
	})
	wg.Wait()
	r.toQEMU.close()
	_ = r.cfg.Tap.SetReadDeadline(time.Time{}) // the tap belongs to the caller
	close(errs)
	err := <-errs
	if err != nil {
		r.log.Error("netbuf: relay stopped", "err", err)
	}
	return err
}

// guestLoop reads QEMU's datagrams, stamps them and hands them to the rule.
// On ErrFull it stops reading until room is freed: QEMU then sees EAGAIN and
// queues, so the guest sees a slow link and no frame is dropped.
func (r *Relay) guestLoop(ctx context.Context) error {
	buf := make([]byte, r.cfg.MaxFrame)
	for {
		n, _, flags, _, err := r.agent.ReadMsgUnix(buf, nil)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("read %s: %w", r.cfg.AgentSock, err)
		}
		if flags&unix.MSG_TRUNC != 0 {
			r.c.oversized.Add(1)
			r.log.Error("netbuf: guest frame dropped", "err", fmt.Errorf("%w: more than %d bytes", ErrOversized, r.cfg.MaxFrame))
			continue
		}
		if n < MinFrame {
			r.c.truncated.Add(1)
			r.log.Error("netbuf: guest frame dropped", "err", fmt.Errorf("%w: %d bytes", ErrTruncated, n))
			continue
		}
		stamp, err := r.cfg.Stamp()
		if err != nil || stamp < 0 {
			// Without a stamp the frame can never be proven safe: drop it.
			r.c.stampErrs.Add(1)
			r.log.Error("netbuf: guest frame dropped", "err", fmt.Errorf("%w: stamp %d: %w", ErrStamp, stamp, err))
			continue
		}
		now := r.cfg.Now()
		f := outputrule.Frame{Stamp: stamp, Size: n, ArrivedAt: now, Data: append([]byte(nil), buf[:n]...)}
		r.c.guestFrames.Add(1)
		r.c.guestBytes.Add(uint64(n))
		if err := r.offer(ctx, f); err != nil {
			return err
		}
	}
}

// offer gives f to the rule, waiting while the rule is full.
func (r *Relay) offer(ctx context.Context, f outputrule.Frame) error {
	var waitStart time.Time
	for {
		r.mu.Lock()
		err := r.rule.Frame(f, r.cfg.Now())
		more := r.rule.HasReady()
		r.mu.Unlock()
		if more {
			// The release loop writes, so that reading QEMU's socket (whose
			// queue holds only net.unix.max_dgram_qlen datagrams) and
			// writing the tap overlap. Writing inline here measured no
			// faster.
			notify(r.kick)
		}
		switch {
		case err == nil, errors.Is(err, outputrule.ErrHalted):
			if !waitStart.IsZero() {
				r.c.bpNanos.Add(uint64(time.Since(waitStart)))
			}
			return nil
		case errors.Is(err, outputrule.ErrFull):
			if waitStart.IsZero() {
				waitStart = time.Now()
				r.c.bpWaits.Add(1)
			}
			notify(r.kick) // make sure pending releases are written
			select {
			case <-r.room:
			case <-ctx.Done():
				return nil
			}
		default:
			// Only ErrInvalidFrame is left, which cannot happen here.
			return fmt.Errorf("offer frame: %w", err)
		}
	}
}

// releaseLoop writes what the rule releases to the tap, in order.
func (r *Relay) releaseLoop(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.kick:
		}
		r.drain()
	}
}

// drain writes every released frame, in order. Only the release loop calls it.
func (r *Relay) drain() {
	for {
		r.mu.Lock()
		rd := r.rule.Ready()
		r.mu.Unlock()
		if len(rd.Release) == 0 {
			return
		}
		for i := range rd.Release {
			if err := r.release(&rd.Release[i]); err != nil {
				break
			}
		}
		r.mu.Lock()
		r.rule.Advance()
		r.mu.Unlock()
		notify(r.room)
	}
}

var errStop = errors.New("halted")

func (r *Relay) release(f *outputrule.Frame) error {
	if r.cfg.CheckInvariant {
		r.mu.Lock()
		err := r.rule.CheckRelease(*f)
		r.mu.Unlock()
		if errors.Is(err, outputrule.ErrHalted) {
			return errStop
		}
		if err != nil {
			r.c.invariant.Add(1)
			r.log.Error("netbuf: frame not written", "err", fmt.Errorf("%w: %w", ErrInvariant, err))
			return nil
		}
	} else if r.halted.Load() {
		return errStop
	}
	if _, err := r.cfg.Tap.Write(f.Data); err != nil {
		// The network may lose a frame; the relay must not stop for it.
		r.c.tapWriteErrs.Add(1)
		r.log.Warn("netbuf: tap write failed", "seq", f.Seq, "err", err)
		return nil
	}
	r.c.tapFrames.Add(1)
	r.c.tapBytes.Add(uint64(len(f.Data)))
	return nil
}

// Pace feeds the pacer one lag sample (the agent's throttle cadence) and wakes
// the paced loop, whose next frame may now go sooner. No-op without a pacer.
func (r *Relay) Pace(sample throttle.Sample) {
	if r.pacer == nil {
		return
	}
	r.paceMu.Lock()
	was := r.pacer.Active()
	r.pacer.Observe(sample, r.cfg.Now())
	now, rate := r.pacer.Active(), r.pacer.Rate()
	r.paceMu.Unlock()
	if was != now {
		r.log.Info("netbuf: pacing network input", "active", now, "rate_bps", rate, "lag_ms", sample.Lag.Milliseconds())
	}
	notify(r.paceKick)
}

// PacerStats are the pacer's counters (zero without a pacer).
func (r *Relay) PacerStats() throttle.PacerStats {
	if r.pacer == nil {
		return throttle.PacerStats{}
	}
	r.paceMu.Lock()
	defer r.paceMu.Unlock()
	return r.pacer.Stats()
}

// ReleasePacing ends pacing (the VM is no longer protected): held frames go at
// once.
func (r *Relay) ReleasePacing() {
	if r.pacer == nil {
		return
	}
	r.paceMu.Lock()
	r.pacer.Release()
	r.paceMu.Unlock()
	notify(r.paceKick)
}

// netLoop reads frames from the tap and sends each to QEMU, at once or, while
// the pacer limits the rate, through the pacer's queue; QEMU records them in
// the rr log.
func (r *Relay) netLoop(ctx context.Context) error {
	buf := make([]byte, DefaultMaxFrame)
	for {
		n, err := r.cfg.Tap.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, syscall.EINTR) || errors.Is(err, syscall.EAGAIN) {
				continue
			}
			return fmt.Errorf("read tap: %w", err)
		}
		r.sendMu.Lock()
		v := throttle.Send
		if r.pacer != nil {
			r.paceMu.Lock()
			v = r.pacer.Offer(buf[:n], r.cfg.Now())
			r.paceMu.Unlock()
		}
		switch v {
		case throttle.Send:
			r.toQEMU.send(buf[:n])
		case throttle.Held:
			notify(r.paceKick)
		case throttle.Dropped:
			r.log.Debug("netbuf: pacing queue full, frame from the network dropped", "bytes", n)
		}
		r.sendMu.Unlock()
	}
}

// pacedLoop sends the frames the pacer held, each when the pacer lets it go.
func (r *Relay) pacedLoop(ctx context.Context) error {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		if ctx.Err() != nil {
			// Stopping: the held frames are not sent, which with QEMU stuck
			// could take a SendTimeout each.
			return nil
		}
		r.sendMu.Lock()
		r.paceMu.Lock()
		f, wait := r.pacer.Next(r.cfg.Now())
		r.paceMu.Unlock()
		if f != nil {
			r.toQEMU.send(f)
			r.sendMu.Unlock()
			continue
		}
		r.sendMu.Unlock()
		var fire <-chan time.Time
		if wait > 0 {
			timer.Reset(wait)
			fire = timer.C
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.paceKick:
		case <-fire:
		}
		// A timer that fired unread holds no stale value for the next Reset
		// (Go 1.23 timer semantics; go.mod says 1.23 or later).
		timer.Stop()
	}
}

// qemuSender sends frames from the network to QEMU's socket. Only one
// goroutine at a time may use it (the relay's sendMu).
type qemuSender struct {
	addr    *net.UnixAddr
	timeout time.Duration
	q       *net.UnixConn
	c       *counters
	log     *slog.Logger
}

// send delivers one frame; a frame QEMU cannot take within the timeout, or
// while its socket is missing, is dropped and counted.
func (s *qemuSender) send(frame []byte) {
	if s.q == nil {
		// A connected socket: the kernel then reports writability against
		// QEMU's queue, so a full queue is waited out (bounded by the timeout)
		// instead of spun on.
		q, err := net.DialUnix("unixgram", nil, s.addr)
		if err != nil {
			s.c.netDrops.Add(1)
			s.log.Debug("netbuf: QEMU socket not reachable, frame dropped", "qemu_sock", s.addr.Name, "err", err)
			return
		}
		s.q = q
	}
	_ = s.q.SetWriteDeadline(time.Now().Add(s.timeout))
	if _, err := s.q.Write(frame); err != nil {
		s.c.netDrops.Add(1)
		s.log.Debug("netbuf: frame to QEMU dropped", "err", err)
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			s.close() // QEMU restarted or gone: redial next time
		}
		return
	}
	s.c.netFrames.Add(1)
	s.c.netBytes.Add(uint64(len(frame)))
}

func (s *qemuSender) close() {
	if s.q != nil {
		_ = s.q.Close()
		s.q = nil
	}
}
