package netbuf

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/ftvmd/ftvmd/throttle"
)

// ShaperCounters are a tap's counters at one instant: what went to QEMU, and what
// the shaping qdisc (when installed) holds and held back.
type ShaperCounters struct {
	// TxBytes is the tap's transmit byte counter: bytes QEMU read from the tap,
	// i.e. the network's frames the guest received.
	TxBytes uint64
	// Installed: the shaping qdisc is the tap's root; the fields below are its.
	Installed bool
	// Backlog is the bytes the qdisc holds now, BacklogFrames the frames.
	Backlog, BacklogFrames uint32
	// Overlimits counts the times the qdisc held a frame back for want of
	// tokens, Drops the frames it dropped (its queue was full), Packets the frames
	// it let through. All three start at 0 when the qdisc is installed.
	Overlimits, Drops, Packets uint64
}

// Shaper is the kernel boundary of a TapPacer: a token bucket (tbf) as one tap's
// root qdisc. The netlink implementation is NewTapShaper; tests use a fake.
type Shaper interface {
	// Set installs the qdisc, or changes it in place: rate in bytes/s, burst and
	// limit (the queue) in bytes.
	Set(rate uint64, burst, limit uint32) error
	// Clear removes the qdisc: the tap's default root comes back. No qdisc is
	// fine.
	Clear() error
	// Counters reads the tap's and the qdisc's counters.
	Counters() (ShaperCounters, error)
}

// TapPacerConfig configures a TapPacer.
type TapPacerConfig struct {
	// Pacer decides the rate; the TapPacer takes it over and serialises all
	// access to it.
	Pacer *throttle.Pacer
	// Shaper applies the rate to the tap.
	Shaper Shaper
	// QueueBytes is the qdisc's queue (the pacer's --pace-queue-bytes): frames
	// beyond it are dropped and counted.
	QueueBytes int
	// MTU is the largest frame the tap carries, Ethernet header included (0:
	// DefaultTapFrame); the bucket always holds two, as tbf requires one.
	MTU    int
	Logger *slog.Logger
	Now    func() time.Time
}

// ErrTapPacerConfig reports an invalid TapPacerConfig.
var ErrTapPacerConfig = errors.New("netbuf: invalid tap pacer config")

// DefaultTapFrame is the largest frame of a tap with the usual 1500-byte MTU: its
// Ethernet header and a VLAN tag on top. Larger (GSO) frames tbf cuts into
// segments that fit the bucket.
const DefaultTapFrame = 1500 + 14 + 4

// shapeBurstTime is how much sending time the bucket saves up while idle: the
// throttle.Pacer's own burst, so both paths pace alike.
const shapeBurstTime = 10 * time.Millisecond

// TapPacer paces the network's frames to a protected guest on the tap data path,
// in the kernel: the frames the host hands to QEMU leave the tap through its
// egress, so a tbf qdisc as the tap's root limits them to the throttle.Pacer's
// Rate while the pacer is active, and is removed when it releases. The frames
// never pass the agent: at each lag sample the TapPacer reads the tap's and the
// qdisc's counters and tells the pacer what went through (throttle.Pacer.Account).
//
// A qdisc that cannot be installed or changed is logged and counted (ApplyErrors),
// never fatal: the VM keeps running, its CPU quota still works. Pace, ReleasePacing,
// Stats and Close are safe for concurrent use.
type TapPacer struct {
	cfg TapPacerConfig
	log *slog.Logger

	// io serialises the calls to the Shaper (the kernel's); mu guards the
	// state below and is never held across one, so PacerStats never waits on the
	// kernel.
	io        sync.Mutex
	mu        sync.Mutex
	pacer     *throttle.Pacer
	installed bool            // the qdisc is in place as far as we know
	applied   uint64          // rate the qdisc has, bytes/s
	last      *ShaperCounters // counters at the last sample; nil before the first
	backlog   uint32          // bytes held at the last sample
	backlogN  uint32          // frames held at the last sample
	frames    uint64          // frames through the qdisc over all installs
	errs      uint64
	closed    bool
}

// NewTapPacer returns a TapPacer; nothing is installed until the pacer engages.
func NewTapPacer(cfg TapPacerConfig) (*TapPacer, error) {
	switch {
	case cfg.Pacer == nil:
		return nil, fmt.Errorf("%w: no pacer", ErrTapPacerConfig)
	case cfg.Shaper == nil:
		return nil, fmt.Errorf("%w: no shaper", ErrTapPacerConfig)
	case cfg.QueueBytes <= 0 || cfg.QueueBytes > math.MaxUint32:
		return nil, fmt.Errorf("%w: queue of %d bytes", ErrTapPacerConfig, cfg.QueueBytes)
	case cfg.MTU < 0:
		return nil, fmt.Errorf("%w: mtu %d", ErrTapPacerConfig, cfg.MTU)
	}
	if cfg.MTU == 0 {
		cfg.MTU = DefaultTapFrame
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &TapPacer{cfg: cfg, log: cfg.Logger, pacer: cfg.Pacer}, nil
}

// shapeBurst is the bucket for rate: shapeBurstTime of sending, at least two of
// the largest frames (tbf drops what cannot fit its bucket at all).
func shapeBurst(rate uint64, mtu int) uint32 {
	b := float64(rate) * shapeBurstTime.Seconds()
	return uint32(min(max(b, float64(2*mtu)), math.MaxUint32))
}

// Pace feeds the pacer one lag sample with the traffic since the last one, then
// applies its rate to the tap: installs the qdisc when pacing engages, changes it
// when the rate moves, removes it when pacing ends.
//
// The kernel calls (netlink) run outside the lock that PacerStats takes: a call
// that blocks holds up the next Pace, ReleasePacing and Close, never the status.
func (tp *TapPacer) Pace(s throttle.Sample) {
	tp.io.Lock()
	defer tp.io.Unlock()
	tp.mu.Lock()
	closed := tp.closed
	tp.mu.Unlock()
	if closed {
		return
	}
	c, cerr := tp.cfg.Shaper.Counters()
	tp.mu.Lock()
	if tp.closed {
		tp.mu.Unlock()
		return
	}
	tp.pacer.Account(tp.traffic(c, cerr))
	was := tp.pacer.Active()
	tp.pacer.Observe(s, tp.cfg.Now())
	active, rate := tp.pacer.Active(), tp.pacer.Rate()
	tp.mu.Unlock()
	if cerr != nil {
		tp.log.Warn("netbuf: read the tap's counters for pacing", "err", cerr)
	}
	if was != active {
		tp.log.Info("netbuf: pacing network input on the tap", "active", active, "rate_bps", rate, "lag_ms", s.Lag.Milliseconds())
	}
	tp.apply(active, rate)
}

// traffic returns what changed since the last sample, from counters c read just
// now. A failed read counts as no traffic (and an error). Called with mu held.
func (tp *TapPacer) traffic(c ShaperCounters, err error) throttle.Traffic {
	if err != nil {
		tp.errs++
		return throttle.Traffic{}
	}
	var t throttle.Traffic
	prev := tp.last
	if prev != nil && c.TxBytes >= prev.TxBytes {
		t.Bytes = int64(c.TxBytes - prev.TxBytes)
	}
	if c.Installed {
		var over, drops, pkts uint64
		if prev != nil && prev.Installed {
			// A qdisc installed anew starts its counters at 0; one that went back
			// was replaced: count it from 0 too.
			over, drops, pkts = sinceOr0(c.Overlimits, prev.Overlimits), sinceOr0(c.Drops, prev.Drops), sinceOr0(c.Packets, prev.Packets)
		} else {
			over, drops, pkts = c.Overlimits, c.Drops, c.Packets
		}
		t.Drops = drops
		t.Limited = c.Backlog > 0 || over > 0 || drops > 0
		tp.frames += pkts
	}
	tp.backlog, tp.backlogN = c.Backlog, c.BacklogFrames
	if !c.Installed {
		tp.backlog, tp.backlogN = 0, 0
	}
	tp.last = &c
	return t
}

func sinceOr0(now, before uint64) uint64 {
	if now >= before {
		return now - before
	}
	return now
}

// apply makes the qdisc match the pacer's decision (active, rate): a failure is
// counted and tried again at the next sample. Called with io held, mu not.
func (tp *TapPacer) apply(active bool, rate float64) {
	if !active {
		tp.clear()
		return
	}
	r := uint64(math.Round(rate))
	tp.mu.Lock()
	same := tp.installed && r == tp.applied
	tp.mu.Unlock()
	if same {
		return
	}
	burst := shapeBurst(r, tp.cfg.MTU)
	if err := tp.cfg.Shaper.Set(r, burst, uint32(tp.cfg.QueueBytes)); err != nil {
		tp.mu.Lock()
		tp.errs++
		tp.mu.Unlock()
		tp.log.Warn("netbuf: pace the tap: the guest's network input is not paced", "rate_bps", r, "err", err)
		return
	}
	tp.mu.Lock()
	first := !tp.installed
	tp.installed, tp.applied = true, r
	tp.mu.Unlock()
	if first {
		tp.log.Debug("netbuf: tap shaped", "rate_bps", r, "burst", burst, "limit", tp.cfg.QueueBytes)
	}
}

// clear removes the qdisc if it is installed. Called with io held, mu not.
func (tp *TapPacer) clear() {
	tp.mu.Lock()
	installed := tp.installed
	tp.mu.Unlock()
	if !installed {
		return
	}
	if err := tp.cfg.Shaper.Clear(); err != nil {
		tp.mu.Lock()
		tp.errs++
		tp.mu.Unlock()
		tp.log.Warn("netbuf: remove the tap's pacing qdisc", "err", err)
		return // tried again at the next sample
	}
	tp.mu.Lock()
	tp.installed, tp.applied, tp.backlog, tp.backlogN = false, 0, 0, 0
	tp.mu.Unlock()
}

// ReleasePacing ends pacing at once (the VM is no longer protected) and removes
// the qdisc: what it held goes to QEMU.
func (tp *TapPacer) ReleasePacing() {
	tp.mu.Lock()
	tp.pacer.Release()
	// The next protection counts its traffic from its own first sample.
	tp.last = nil
	tp.mu.Unlock()
	tp.io.Lock()
	defer tp.io.Unlock()
	tp.clear()
}

// Close releases pacing for good: later samples change nothing. It returns the
// error of removing the qdisc, if that failed.
func (tp *TapPacer) Close() error {
	tp.mu.Lock()
	tp.closed = true
	tp.pacer.Release()
	tp.mu.Unlock()
	tp.io.Lock()
	defer tp.io.Unlock()
	tp.mu.Lock()
	installed := tp.installed
	tp.mu.Unlock()
	if !installed {
		return nil
	}
	if err := tp.cfg.Shaper.Clear(); err != nil {
		tp.mu.Lock()
		tp.errs++
		tp.mu.Unlock()
		return fmt.Errorf("netbuf: remove the tap's pacing qdisc: %w", err)
	}
	tp.mu.Lock()
	tp.installed = false
	tp.mu.Unlock()
	return nil
}

// PacerStats are the pacer's counters with the qdisc's: the bytes it holds at the
// last sample, the frames that passed through it (paced) and the failures to apply
// the rate.
func (tp *TapPacer) PacerStats() throttle.PacerStats {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	st := tp.pacer.Stats()
	st.QueueBytes, st.QueueFrames = int(tp.backlog), int(tp.backlogN)
	st.Paced = tp.frames
	st.ApplyErrors = tp.errs
	return st
}
