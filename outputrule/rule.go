// Package outputrule decides when a frame the guest transmitted may leave the
// primary host.
//
// The output rule of VMware FT: a frame is held until the backup has
// acknowledged the replay log up to the offset that preceded the frame (the
// frame's stamp). Rule is a pure state machine in the style of etcd's raft
// package: events come in through methods (Frame, Sent, Ack, SetMode), time
// comes in as a value, and the frames that may leave are collected and handed
// out by Ready. The caller writes them and then calls Advance. Rule does no
// I/O, starts no goroutines, reads no clock and is not safe for concurrent
// use; wrap it in one owner (netbuf.Relay does, behind a mutex).
package outputrule

import (
	"errors"
	"fmt"
	"time"
)

// Mode is what the rule does with guest output.
type Mode int

const (
	// Protected holds each frame until the backup acknowledges its stamp.
	Protected Mode = iota
	// Unprotected releases every frame at once (no backup, or the backup is
	// gone and this side won the epoch claim).
	Unprotected
	// Halted releases nothing, ever again. It is terminal: this side lost the
	// epoch claim and must not emit output.
	Halted
)

func (m Mode) String() string {
	switch m {
	case Protected:
		return "protected"
	case Unprotected:
		return "unprotected"
	case Halted:
		return "halted"
	default:
		return fmt.Sprintf("mode(%d)", int(m))
	}
}

// ParseMode is the inverse of Mode.String.
func ParseMode(s string) (Mode, error) {
	for _, m := range []Mode{Protected, Unprotected, Halted} {
		if m.String() == s {
			return m, nil
		}
	}
	return 0, fmt.Errorf("%w: %q", ErrInvalidMode, s)
}

// Defaults for a zero Config.
const (
	DefaultMaxHeldBytes  int64 = 4 << 20
	DefaultMaxHeldFrames int   = 4096
)

// Sentinel errors. Callers match them with errors.Is.
var (
	// ErrFull: accepting the frame would exceed Config bounds. The frame was
	// not taken; the caller must apply backpressure and offer it again once
	// room is freed (after an Ack or an Advance). Frames are never dropped.
	ErrFull = errors.New("outputrule: held queue full")
	// ErrHalted: the rule is halted; the frame was discarded (and counted).
	ErrHalted = errors.New("outputrule: halted, output discarded")
	// ErrAckBeyondSent: an ack for log the primary never sent. Ignored.
	ErrAckBeyondSent = errors.New("outputrule: ack beyond sent offset")
	// ErrInvalidFrame: negative stamp or size.
	ErrInvalidFrame = errors.New("outputrule: invalid frame")
	// ErrInvalidMode: unknown Mode value.
	ErrInvalidMode = errors.New("outputrule: invalid mode")
	// ErrInvalidConfig: negative bounds.
	ErrInvalidConfig = errors.New("outputrule: invalid config")
	// ErrEarlyRelease: CheckRelease found the output rule violated.
	ErrEarlyRelease = errors.New("outputrule: frame released before its stamp was acknowledged")
)

// Frame is one network frame the guest transmitted.
type Frame struct {
	// Seq is assigned by the rule (1, 2, ...) in arrival order; the caller's
	// value is ignored.
	Seq uint64
	// Stamp is the rr log offset that precedes the frame (the log file's size
	// when the frame arrived). A stamp lower than the previous frame's is
	// clamped up to it and counted.
	Stamp int64
	// Size in bytes; 0 means len(Data).
	Size int
	// ArrivedAt is when the frame reached the agent; zero means "now" as given
	// to Frame. Output delay is measured from it.
	ArrivedAt time.Time
	// Data is owned by the rule from Frame until Advance. It may be nil when
	// the frame itself is held elsewhere (in the kernel) and only its Tag
	// travels through the rule.
	Data []byte
	// Tag is the caller's name for the frame, carried unchanged: the kernel's
	// id of a frame held in an NFQUEUE, for one.
	Tag uint64
}

// Config bounds the memory the held queue may use. Frames handed out by Ready
// but not yet Advanced count against the bounds too.
type Config struct {
	MaxHeldBytes  int64 // 0 means DefaultMaxHeldBytes
	MaxHeldFrames int   // 0 means DefaultMaxHeldFrames
}

// Validate rejects negative bounds and fills in defaults.
func (c *Config) Validate() error {
	if c.MaxHeldBytes < 0 {
		return fmt.Errorf("%w: MaxHeldBytes %d < 0", ErrInvalidConfig, c.MaxHeldBytes)
	}
	if c.MaxHeldFrames < 0 {
		return fmt.Errorf("%w: MaxHeldFrames %d < 0", ErrInvalidConfig, c.MaxHeldFrames)
	}
	if c.MaxHeldBytes == 0 {
		c.MaxHeldBytes = DefaultMaxHeldBytes
	}
	if c.MaxHeldFrames == 0 {
		c.MaxHeldFrames = DefaultMaxHeldFrames
	}
	return nil
}

// Ready is what the caller must do next.
type Ready struct {
	// Release lists the frames that may leave now, in arrival order. The slice
	// is owned by the rule; it stays valid until Advance. The rule never
	// writes to its elements, so a caller may read them outside its lock
	// while other events are applied.
	Release []Frame
	// Backpressure is true from a Frame call that returned ErrFull until a
	// Frame call succeeds: the caller must stop taking guest frames and offer
	// the rejected one again when room is freed.
	Backpressure bool
}

// Stats are counters and gauges for monitoring and tests.
type Stats struct {
	Mode  Mode
	Sent  int64 // highest offset sent to the backup
	Acked int64 // highest offset the backup acknowledged

	HeldFrames    int       // waiting for an ack
	HeldBytes     int64     //
	OldestHeldAt  time.Time // ArrivedAt of the oldest held frame; zero if none
	PendingFrames int       // releasable, not yet Advanced
	PendingBytes  int64     //

	ReleasedFrames uint64 // Advanced (written by the caller)
	ReleasedBytes  uint64
	MaxHeldFrames  int   // high-water mark of held+pending frames
	MaxHeldBytes   int64 // high-water mark of held+pending bytes

	FullEvents       uint64 // Frame returned ErrFull
	LyingAcks        uint64 // acks beyond Sent
	StaleAcks        uint64 // duplicate or regressing acks
	StampRegressions uint64 // frames whose stamp was clamped up
	DroppedFrames    uint64 // discarded because halted
	DroppedBytes     uint64

	// Output delay added by holding: release decision time minus ArrivedAt.
	TotalDelay time.Duration
	MaxDelay   time.Duration
	// DelayHist is the distribution of the same per-frame delays, because an
	// average and a maximum hide the tail operators and benchmarks ask about.
	DelayHist DelayHist
}

// Rule is the output-rule state machine. Create it with New.
type Rule struct {
	cfg  Config
	mode Mode

	sent, acked int64
	lastStamp   int64
	nextSeq     uint64
	// unprotectedThrough is the highest Seq released while unprotected before
	// the rule (re)entered Protected; such frames pass CheckRelease.
	unprotectedThrough uint64

	// q holds every frame the rule owns, in arrival order. q[:rel] may be
	// released (pending), q[rel:] wait for an ack (held). q[:handed] were
	// returned by the last Ready and are removed by Advance.
	q         []Frame
	rel       int
	handed    int
	qBytes    int64
	pendBytes int64
	full      bool
	st        Stats
}

// New returns a rule in the given mode. A bad Config (negative bounds) or
// Mode falls back to the defaults and Protected: New never fails, because a
// mistake here must err on the side of holding output. Use Config.Validate to
// catch configuration errors up front.
func New(cfg Config, mode Mode) *Rule {
	if err := cfg.Validate(); err != nil {
		cfg = Config{}
		_ = cfg.Validate()
	}
	if mode < Protected || mode > Halted {
		mode = Protected
	}
	return &Rule{cfg: cfg, mode: mode}
}

// Mode reports the current mode.
func (r *Rule) Mode() Mode { return r.mode }

// Frame offers one guest frame. In Protected mode it is held until its stamp
// is acknowledged (it is releasable at once if already acked); in Unprotected
// mode it is releasable at once; in Halted mode it is discarded and counted
// and ErrHalted is returned. ErrFull means the frame was not taken.
func (r *Rule) Frame(f Frame, now time.Time) error {
	if f.Stamp < 0 || f.Size < 0 {
		return fmt.Errorf("%w: stamp %d size %d", ErrInvalidFrame, f.Stamp, f.Size)
	}
	if f.Size == 0 {
		f.Size = len(f.Data)
	}
	if r.mode == Halted {
		r.st.DroppedFrames++
		r.st.DroppedBytes += uint64(f.Size)
		return ErrHalted
	}
	// A frame larger than the byte bound is accepted into an empty queue so
	// that it can never wedge the caller.
	if len(r.q) > 0 && (len(r.q)+1 > r.cfg.MaxHeldFrames || r.qBytes+int64(f.Size) > r.cfg.MaxHeldBytes) {
		r.st.FullEvents++
		r.full = true
		return fmt.Errorf("%w: %d frames %d bytes held, frame of %d bytes", ErrFull, len(r.q), r.qBytes, f.Size)
	}
	r.full = false
	if f.Stamp < r.lastStamp {
		f.Stamp = r.lastStamp
		r.st.StampRegressions++
	}
	r.lastStamp = f.Stamp
	if f.ArrivedAt.IsZero() {
		f.ArrivedAt = now
	}
	r.nextSeq++
	f.Seq = r.nextSeq
	r.q = append(r.q, f)
	r.qBytes += int64(f.Size)
	if len(r.q) > r.st.MaxHeldFrames {
		r.st.MaxHeldFrames = len(r.q)
	}
	if r.qBytes > r.st.MaxHeldBytes {
		r.st.MaxHeldBytes = r.qBytes
	}
	r.releaseEligible(now)
	return nil
}

// Sent records the highest log offset the primary has sent to the backup.
// Lower values are ignored.
func (r *Rule) Sent(off int64) {
	if off > r.sent {
		r.sent = off
	}
}

// Ack records that the backup holds the log up to off. An ack beyond Sent is
// a lie: it is ignored, counted, and ErrAckBeyondSent is returned. Duplicate
// and regressing acks are ignored and counted (they are normal when acks are
// reordered) and return nil.
func (r *Rule) Ack(off int64, now time.Time) error {
	if off > r.sent {
		r.st.LyingAcks++
		return fmt.Errorf("%w: ack %d, sent %d", ErrAckBeyondSent, off, r.sent)
	}
	if off <= r.acked {
		r.st.StaleAcks++
		return nil
	}
	r.acked = off
	r.releaseEligible(now)
	return nil
}

// SetMode changes the mode. Protected->Unprotected makes everything held
// releasable. Any mode->Halted drops everything the rule holds, including
// frames handed out by Ready but not yet Advanced (the caller must not write
// them: see CheckRelease), and Halted never changes again. Entering Protected
// from Unprotected starts a new log: Sent and Acked restart at 0, so frames
// are held until acks of the new log arrive.
func (r *Rule) SetMode(m Mode, now time.Time) {
	if r.mode == Halted || m == r.mode || m < Protected || m > Halted {
		return
	}
	switch m {
	case Halted:
		for _, f := range r.q {
			r.st.DroppedFrames++
			r.st.DroppedBytes += uint64(f.Size)
		}
		// No clear(r.q): the caller may still be reading the slice of the
		// last Ready in another goroutine (under its own lock discipline).
		r.q, r.rel, r.handed, r.qBytes, r.pendBytes, r.full = nil, 0, 0, 0, 0, false
	case Protected:
		r.unprotectedThrough = r.nextSeq
		r.sent, r.acked, r.lastStamp = 0, 0, 0
	}
	r.mode = m
	r.releaseEligible(now)
}

// releaseEligible moves the longest releasable prefix of held frames to
// pending. FIFO: a frame never overtakes an earlier one.
func (r *Rule) releaseEligible(now time.Time) {
	for r.rel < len(r.q) {
		f := &r.q[r.rel]
		switch r.mode {
		case Unprotected:
		case Protected:
			if f.Stamp > r.acked {
				return
			}
		default:
			return
		}
		d := now.Sub(f.ArrivedAt)
		if d < 0 {
			d = 0
		}
		r.st.TotalDelay += d
		if d > r.st.MaxDelay {
			r.st.MaxDelay = d
		}
		r.st.DelayHist.Add(d)
		r.pendBytes += int64(f.Size)
		r.rel++
	}
}

// HasReady reports whether frames became releasable since the last Ready.
func (r *Rule) HasReady() bool { return r.rel > r.handed }

// Ready returns the frames that may be written now (all releasable frames,
// including any returned by an earlier Ready not yet Advanced).
func (r *Rule) Ready() Ready {
	r.handed = r.rel
	return Ready{Release: r.q[:r.rel:r.rel], Backpressure: r.full}
}

// Advance tells the rule that the caller has written the frames of the last
// Ready. They are forgotten and their room freed.
func (r *Rule) Advance() {
	n := r.handed
	if n == 0 {
		return
	}
	for i := range n {
		sz := r.q[i].Size
		r.st.ReleasedFrames++
		r.st.ReleasedBytes += uint64(sz)
		r.qBytes -= int64(sz)
		r.pendBytes -= int64(sz)
	}
	clear(r.q[:n])
	r.q = r.q[n:]
	r.rel -= n
	r.handed = 0
	if len(r.q) == 0 {
		r.q = r.q[:0:0] // let the backing array go
	} else if cap(r.q) > 4*len(r.q)+64 {
		r.q = append([]Frame(nil), r.q...)
	}
}

// Stats returns a snapshot of the counters.
func (r *Rule) Stats() Stats {
	s := r.st
	s.Mode = r.mode
	s.Sent = r.sent
	s.Acked = r.acked
	s.PendingFrames = r.rel
	s.PendingBytes = r.pendBytes
	s.HeldFrames = len(r.q) - r.rel
	s.HeldBytes = r.qBytes - r.pendBytes
	if s.HeldFrames > 0 {
		s.OldestHeldAt = r.q[r.rel].ArrivedAt
	}
	return s
}

// CheckRelease verifies the output rule for a frame about to be written: in
// Protected mode its stamp must be acknowledged (unless it was released while
// unprotected, before protection started); in Halted mode nothing may be
// written. The agent calls it for every frame under the same lock as the rule
// when built for tests.
func (r *Rule) CheckRelease(f Frame) error {
	switch r.mode {
	case Halted:
		return fmt.Errorf("%w: frame %d written while halted", ErrHalted, f.Seq)
	case Protected:
		if f.Seq != 0 && f.Seq <= r.unprotectedThrough {
			return nil
		}
		if f.Stamp > r.acked {
			return fmt.Errorf("%w: frame %d stamp %d, acked %d", ErrEarlyRelease, f.Seq, f.Stamp, r.acked)
		}
	}
	return nil
}
