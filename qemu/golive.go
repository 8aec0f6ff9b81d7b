package qemu

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/replay"
)

// Going live: the backup's replaying QEMU becomes the primary without a
// guest reboot (design.md, "Going live"). QEMU cannot switch a running
// process from replay to record, so the guest moves through a snapshot:
//
//  1. cut the log at the last complete event <= the acked offset; the
//     target icount T is the start icount plus every INSTRUCTION count;
//  2. feed the replay exactly up to the cut, then one CHECKPOINT_RESET
//     byte (38). Replay checks that checkpoint only at machine creation, so
//     it never consumes it: replay_get_instructions then returns 0 for ever
//     and the guest parks at T. The FIFO stays open: an EOF is exit(1);
//  3. poll query-replay until icount == T and stays there;
//  4. savevm <tag> (qcow2 snapshot drive), retrying "Try once more later";
//  5. end the replaying QEMU;
//  6. start a recording QEMU (rr=record, a new rrfile, the flush library
//     unless the engine writes its log as a stream)
//     with -loadvm <tag>: only an rr QEMU can load the snapshot's "replay"
//     section, and recording keeps the same execution engine;
//  7. announce-self, so switches learn the MAC's new port.
//
// On an engine that can go live in place (Engine.InPlaceGoLive, GoLiveConfig.InPlace)
// steps 2-6 become: feed the replay up to the cut, then an EVENT_END byte,
// which nothing consumes either, and ask the replaying QEMU to carry on
// recording into a new log (QMP x-replay-go-live). QEMU refuses until the
// replay has consumed every event before EVENT_END, and checks the icount,
// so the same call that finds the replay parked also switches it: no
// savevm, no new QEMU, no loadvm, and the same process keeps running.

// Go-live defaults.
const (
	DefaultGoLivePoll  = 10 * time.Millisecond
	DefaultParkStable  = 50 * time.Millisecond
	DefaultParkStall   = 10 * time.Second
	DefaultSaveTimeout = 10 * time.Second
	DefaultReplayGrace = time.Second
	// DefaultInPlacePoll is how often an in-place go-live asks the replay to
	// switch once the feed has finished: the switch waits for the next ask.
	DefaultInPlacePoll = 2 * time.Millisecond
)

// Errors of GoLive and of Feed.Halt/Finish.
var (
	// ErrOvershoot: the replay went past the target icount, so the log
	// it was fed does not end where GoLive cut it.
	ErrOvershoot = errors.New("replay went past the cut")
	// ErrParkStalled: the replay's icount stopped short of the target.
	ErrParkStalled = errors.New("replay stalled before the cut")
	// ErrSnapshotBusy: savevm kept answering "Try once more later" (rr's
	// async event queue never emptied).
	ErrSnapshotBusy = errors.New("savevm refused while replay events are queued")
	// ErrFeedFinished: Finish was already called.
	ErrFeedFinished = errors.New("feed already finished")
	// ErrNoCut: the log holds no complete event where a cut is needed.
	ErrNoCut = errors.New("no event boundary to cut at")
	// ErrNotAtLogEnd: x-replay-go-live refused because the replay has not
	// consumed every event before the end of its log yet (a retry may succeed).
	ErrNotAtLogEnd = errors.New("replay has not reached the end of its log")
)

// FedPastCutError is Finish's error when the Feed had already written more
// of the source than the cut.
type FedPastCutError struct{ Fed, Cut int64 }

func (e *FedPastCutError) Error() string {
	return fmt.Sprintf("feed already wrote up to offset %d, past the cut at %d", e.Fed, e.Cut)
}

// GoLiveConfig describes one go-live.
type GoLiveConfig struct {
	// Replay is the running replaying QEMU. Its Config has SnapshotDrive
	// set and RRFile is Feed's FIFO.
	Replay *Machine
	// Feed feeds Replay from LogPath. GoLive finishes it and closes it
	// once Replay has exited.
	Feed *Feed
	// LogPath is the backup's local copy of the log (a regular file).
	LogPath string
	// AckedOffset is the last offset acknowledged to the primary: the
	// replay runs exactly to the last complete event at or before it (or,
	// if the Feed has already written more, to the first boundary at or
	// after what it wrote).
	AckedOffset int64
	// StartIcount is the icount at offset 12 (0 when protected from boot).
	StartIcount uint64
	// Resume optionally names a known event boundary at or before
	// AckedOffset and its icount (a replay.Mark the agent kept): the scan
	// for the cut starts there instead of at offset 12 with StartIcount.
	Resume replay.Mark
	// Record is the new recording QEMU: ModeRecord, a new RRFile, the
	// flush library or LogStream, the same machine (memory, kernel, NIC and MAC, disks)
	// as Replay. GoLive sets LoadVM to Tag and, when empty, SnapshotDrive
	// to Replay's.
	Record Config
	// PendingBlocks, if set, returns the block request ids (blkreplay's
	// numbering, in increasing order) that a replay fed exactly to cut may
	// have issued without their completion in the log. Park appends an
	// ASYNC_BLOCK completion for each after the cut: the replay completes the
	// ones it holds and parks at the first it never issued. Without them a
	// request in flight at the cut stays queued and savevm is refused forever.
	PendingBlocks func(cut int64) []uint64
	// InPlace makes Replay itself the live VM (Engine.InPlaceGoLive): fed
	// up to the cut and an EVENT_END, it switches to recording into
	// Record.RRFile, keeping its memory, devices, NIC sockets, disks and
	// instruction count. Of Record only RRFile is used; SnapshotDrive, Tag and
	// PendingBlocks are not (block requests in flight at the cut complete
	// live, and are recorded in the new log). GoLive returns Replay.
	InPlace bool
	// Tag is the snapshot's name.
	Tag    string
	Logger *slog.Logger

	// Poll is the query-replay period while parking (DefaultGoLivePoll;
	// DefaultInPlacePoll in place, where it is also the period of the
	// go-live asks).
	// It also wakes the replay's main loop: a replay whose main loop
	// nothing wakes does not consume the main-loop checkpoints in the log
	// and stalls.
	Poll time.Duration
	// ParkStable is how long icount must stay at the target, with the
	// FIFO drained, before savevm (DefaultParkStable): events that follow
	// the last INSTRUCTION have the same icount and are consumed by the
	// vCPU thread or the main loop a little later.
	ParkStable time.Duration
	// ParkStall fails the park when icount has not moved for this long
	// short of the target (DefaultParkStall).
	ParkStall time.Duration
	// SaveTimeout bounds savevm's retries (DefaultSaveTimeout).
	SaveTimeout time.Duration
	// ReplayGrace is how long QMP quit may take to end the replaying QEMU
	// before SIGKILL (DefaultReplayGrace).
	ReplayGrace time.Duration
}

// GoLiveReport is what GoLive measured.
type GoLiveReport struct {
	CutOffset    int64  // log offset the replay was fed to
	TargetIcount uint64 // icount at CutOffset
	Cut          time.Duration
	Park         time.Duration // finish the feed and wait for icount == target
	Save         time.Duration // savevm, retries included
	SaveTries    int
	Stop         time.Duration // end the replaying QEMU
	Start        time.Duration // new QEMU: exec, -loadvm, QMP connected, running
	// InPlace: the replay switched to recording itself; Park then runs up to
	// the switch, and Save, Stop and Start are zero.
	InPlace bool
	// Switch is the x-replay-go-live call that switched it (in place);
	// SwitchTries counts the asks, refused ones included.
	Switch      time.Duration
	SwitchTries int
	Announce    time.Duration
	Total       time.Duration
}

func (c *GoLiveConfig) validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: go-live: "+format, append([]any{ErrInvalidConfig}, a...)...))
	}
	if c.Replay == nil || c.Feed == nil {
		bad("Replay and Feed are required")
	} else {
		rc := c.Replay.Config()
		if rc.Mode != ModeReplay {
			bad("Replay runs in mode %q, not replay", rc.Mode)
		}
		if rc.RRFile != c.Feed.Path() {
			bad("Replay reads %q, not the Feed's FIFO %q", rc.RRFile, c.Feed.Path())
		}
		if !c.InPlace {
			if rc.SnapshotDrive == "" {
				bad("Replay has no SnapshotDrive: savevm needs a qcow2 drive")
			}
			if c.Record.SnapshotDrive == "" {
				c.Record.SnapshotDrive = rc.SnapshotDrive
			} else if c.Record.SnapshotDrive != rc.SnapshotDrive {
				bad("Record.SnapshotDrive %q differs from Replay's %q, which will hold the snapshot", c.Record.SnapshotDrive, rc.SnapshotDrive)
			}
		}
	}
	if c.InPlace {
		if c.Record.RRFile == "" {
			bad("Record.RRFile, the new log, is required")
		}
	} else {
		if c.Record.Mode != ModeRecord {
			bad("Record must be mode record (a non-rr QEMU cannot load the snapshot's replay section), got %q", c.Record.Mode)
		}
		if c.Tag == "" || strings.ContainsAny(c.Tag, " \t\n") {
			bad("Tag %q must be a non-empty word", c.Tag)
		}
	}
	if c.Record.RRFile == c.LogPath {
		bad("Record.RRFile must be a new file, not the log being replayed")
	}
	if c.AckedOffset < LogHeaderSize {
		bad("AckedOffset %d is inside the log header", c.AckedOffset)
	}
	if c.Resume.Offset != 0 && (c.Resume.Offset < LogHeaderSize || c.Resume.Offset > c.AckedOffset) {
		bad("Resume offset %d outside %d..AckedOffset %d", c.Resume.Offset, LogHeaderSize, c.AckedOffset)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	poll := DefaultGoLivePoll
	if c.InPlace {
		poll = DefaultInPlacePoll
	}
	for _, d := range []struct {
		p   *time.Duration
		def time.Duration
	}{{&c.Poll, poll}, {&c.ParkStable, DefaultParkStable}, {&c.ParkStall, DefaultParkStall},
		{&c.SaveTimeout, DefaultSaveTimeout}, {&c.ReplayGrace, DefaultReplayGrace}} {
		if *d.p <= 0 {
			*d.p = d.def
		}
	}
	if !c.InPlace {
		c.Record.LoadVM = c.Tag
	}
	return errors.Join(errs...)
}

// GoLive turns the backup's replaying QEMU into a recording primary at the
// acked offset, without a guest reboot, and returns the new Machine
// (started with opts after WithLogger(cfg.Logger)). On an error before the
// replay is stopped it is left running, but its Feed may already be halted
// or finished (parked): the caller decides whether to retry GoLive's later
// steps or halt the VM. A new QEMU that fails to come up is killed.
func GoLive(ctx context.Context, cfg GoLiveConfig, opts ...Opt) (*Machine, GoLiveReport, error) {
	var rep GoLiveReport
	if err := cfg.validate(); err != nil {
		return nil, rep, err
	}
	log := cfg.Logger.With("tag", cfg.Tag)
	t0 := time.Now()
	phase := func(d *time.Duration, since time.Time) time.Time {
		now := time.Now()
		*d = now.Sub(since)
		return now
	}

	// 1. Cut. Halt the feed first: it must not write past a cut we have
	// not chosen yet.
	fed, err := haltFeed(ctx, cfg)
	if err != nil {
		return nil, rep, err
	}
	from := cfg.Resume
	if from.Offset == 0 {
		from = replay.Mark{Offset: LogHeaderSize, Icount: cfg.StartIcount}
	}
	cut, target, err := findCut(cfg.LogPath, from, cfg.AckedOffset, fed)
	if err != nil {
		return nil, rep, fmt.Errorf("go-live: %w", err)
	}
	if cut > cfg.AckedOffset {
		log.Warn("go-live: the feed had written past the acked offset; the cut moves to the next boundary",
			"acked", cfg.AckedOffset, "fed", fed, "cut", cut)
	}
	rep.CutOffset, rep.TargetIcount = cut, target
	log.Info("go-live: cut", "acked", cfg.AckedOffset, "fed", fed, "cut", cut, "target_icount", target)
	t := phase(&rep.Cut, t0)

	if cfg.InPlace {
		return goLiveInPlace(ctx, cfg, log, &rep, t0, t)
	}

	// 2+3. Finish the feed and park.
	if err := park(ctx, cfg, log, cut, target); err != nil {
		return nil, rep, err
	}
	t = phase(&rep.Park, t)

	// 4. savevm.
	if rep.SaveTries, err = saveVM(ctx, cfg); err != nil {
		return nil, rep, err
	}
	t = phase(&rep.Save, t)

	// 5. End the replay. QMP quit rather than SIGKILL: QEMU then closes
	// the qcow2 snapshot drive in order (its metadata caches flushed), and
	// in play mode quit works even while the replay is parked.
	if err := cfg.Replay.Stop(ctx, cfg.ReplayGrace); err != nil {
		return nil, rep, fmt.Errorf("go-live: stop replaying qemu: %w", err)
	}
	if err := cfg.Feed.Close(); err != nil {
		log.Warn("go-live: close feed", "err", err)
	}
	t = phase(&rep.Stop, t)

	// 6. The new primary.
	m, err := New(cfg.Record, append([]Opt{WithLogger(cfg.Logger)}, opts...)...)
	if err != nil {
		return nil, rep, fmt.Errorf("go-live: %w", err)
	}
	fail := func(err error) (*Machine, GoLiveReport, error) {
		if m.PID() != 0 {
			_ = m.Kill()
			select {
			case <-m.Exited():
			case <-ctx.Done():
			}
		}
		return nil, rep, err
	}
	if err := m.Start(ctx); err != nil {
		return fail(fmt.Errorf("go-live: start recording qemu with -loadvm %s: %w", cfg.Tag, err))
	}
	st, err := m.Status(ctx)
	if err != nil {
		return fail(fmt.Errorf("go-live: %w", err))
	}
	if st != "running" {
		return fail(fmt.Errorf("go-live: new qemu is %q after -loadvm, want running", st))
	}
	t = phase(&rep.Start, t)

	// 7. Announce.
	if err := m.AnnounceSelf(ctx); err != nil {
		return fail(fmt.Errorf("go-live: %w", err))
	}
	phase(&rep.Announce, t)
	rep.Total = time.Since(t0)
	log.Info("go-live: done", "cut", rep.CutOffset, "icount", rep.TargetIcount, "park", rep.Park,
		"save", rep.Save, "save_tries", rep.SaveTries, "stop", rep.Stop, "start", rep.Start,
		"announce", rep.Announce, "total", rep.Total)
	return m, rep, nil
}

// goLiveInPlace finishes GoLive on an engine that goes live in place: it feeds
// the replay to the cut and an EVENT_END, asks it to switch until it does (each
// ask also wakes its main loop), and announces.
func goLiveInPlace(ctx context.Context, cfg GoLiveConfig, log *slog.Logger, rep *GoLiveReport, t0, t time.Time) (*Machine, GoLiveReport, error) {
	rep.InPlace = true
	m := cfg.Replay
	sw, tries, err := parkAndSwitch(ctx, cfg, log, rep.CutOffset, rep.TargetIcount)
	rep.SwitchTries = tries
	if err != nil {
		return nil, *rep, err
	}
	rep.Switch = sw
	now := time.Now()
	rep.Park = now.Sub(t)
	t = now
	// QEMU closed its end of the FIFO when it switched.
	if err := cfg.Feed.Close(); err != nil {
		log.Warn("go-live: close feed", "err", err)
	}
	if err := m.AnnounceSelf(ctx); err != nil {
		return nil, *rep, fmt.Errorf("go-live: %w", err)
	}
	rep.Announce = time.Since(t)
	rep.Total = time.Since(t0)
	log.Info("go-live: done in place", "cut", rep.CutOffset, "icount", rep.TargetIcount, "park", rep.Park,
		"switch", rep.Switch, "switch_tries", rep.SwitchTries, "announce", rep.Announce, "total", rep.Total,
		"rrfile", cfg.Record.RRFile)
	return m, *rep, nil
}

// endOfLog follows the cut in the FIFO of an in-place go-live: EVENT_END, which
// nothing consumes, so the replay parks before it, and which x-replay-go-live
// requires as the next event.
var endOfLog = []byte{byte(replay.KindEnd)}

// parkAndSwitch finishes the feed at cut plus EVENT_END and asks the replay
// every cfg.Poll to go live at target until it does. It returns the
// successful call's duration and the number of asks.
func parkAndSwitch(ctx context.Context, cfg GoLiveConfig, log *slog.Logger, cut int64, target uint64) (time.Duration, int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	finished := make(chan error, 1)
	go func() { // owned: parkAndSwitch waits for it on every return path
		finished <- cfg.Feed.Finish(ctx, cut, endOfLog)
	}()
	feedDone := false
	defer func() {
		if !feedDone {
			cancel()
			<-finished
		}
	}()
	tick := time.NewTicker(cfg.Poll)
	defer tick.Stop()
	var (
		last     uint64
		lastMove = time.Now()
		tries    int
	)
	for {
		select {
		case <-ctx.Done():
			return 0, tries, fmt.Errorf("go-live: park at icount %d (at %d): %w", target, last, ctx.Err())
		case err := <-finished:
			feedDone = true
			if err != nil {
				return 0, tries, fmt.Errorf("go-live: finish feed at %d: %w", cut, err)
			}
		case <-tick.C:
		}
		if feedDone {
			tries++
			t0 := time.Now()
			err := cfg.Replay.GoLiveInPlace(ctx, cfg.Record.RRFile, target)
			switch {
			case err == nil:
				return time.Since(t0), tries, nil
			case errors.Is(err, ErrExited):
				return 0, tries, fmt.Errorf("go-live: replaying qemu exited while parking: %w", err)
			case !errors.Is(err, ErrNotAtLogEnd):
				// At the end of the log at another icount, or the new log could not
				// be opened: retrying will not help.
				return 0, tries, fmt.Errorf("go-live: in place at icount %d: %w", target, err)
			}
		}
		// Not there yet: watch progress as park does.
		qctx, qcancel := context.WithTimeout(ctx, time.Second)
		ri, err := cfg.Replay.QueryReplay(qctx)
		qcancel()
		switch {
		case errors.Is(err, ErrExited):
			return 0, tries, fmt.Errorf("go-live: replaying qemu exited while parking: %w", err)
		case err != nil:
			log.Debug("go-live: query-replay", "err", err)
			continue
		case ri.Mode != "play":
			return 0, tries, fmt.Errorf("go-live: replaying qemu is in rr mode %q", ri.Mode)
		case ri.Icount > target:
			return 0, tries, fmt.Errorf("go-live: %w: icount %d, cut at %d has icount %d", ErrOvershoot, ri.Icount, cut, target)
		}
		now := time.Now()
		if ri.Icount != last {
			last, lastMove = ri.Icount, now
		}
		if now.Sub(lastMove) > cfg.ParkStall {
			return 0, tries, fmt.Errorf("go-live: %w: icount %d for %s, target %d (feed finished: %v)",
				ErrParkStalled, last, now.Sub(lastMove).Round(time.Millisecond), target, feedDone)
		}
	}
}

// haltFeed stops the Feed while nudging the replay: a Feed blocked on a
// full FIFO waits for the replay to read, which may need its main loop.
func haltFeed(ctx context.Context, cfg GoLiveConfig) (int64, error) {
	var fed int64
	err := withNudges(ctx, cfg, func(ctx context.Context) (err error) {
		fed, err = cfg.Feed.Halt(ctx)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("go-live: halt feed: %w", err)
	}
	return fed, nil
}

// withNudges runs fn in a goroutine it owns while it polls query-replay
// every cfg.Poll, and returns fn's error.
func withNudges(ctx context.Context, cfg GoLiveConfig, fn func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	tick := time.NewTicker(cfg.Poll)
	defer tick.Stop()
	for {
		select {
		case err := <-done:
			return err
		case <-tick.C:
			qctx, qcancel := context.WithTimeout(ctx, time.Second)
			_, err := cfg.Replay.QueryReplay(qctx)
			qcancel()
			if errors.Is(err, ErrExited) {
				cancel()
				<-done
				return fmt.Errorf("replaying qemu: %w", err)
			}
		}
	}
}

// findCut scans the log from a known boundary and returns the cut: the
// last complete event at or before acked; if the feed already wrote past
// that (fed), the first boundary at or after fed instead.
func findCut(path string, from replay.Mark, acked, fed int64) (int64, uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, fmt.Errorf("open log: %w", err)
	}
	defer f.Close()
	// The common case, fed <= cut, needs only the prefix and no per-event
	// hook (the scan runs at about 100 MB/s; Resume skips it).
	off, ic, err := replay.LastBoundary(io.NewSectionReader(f, from.Offset, max(acked-from.Offset, 0)), from.Offset, from.Icount)
	if err != nil {
		return 0, 0, fmt.Errorf("scan log: %w", err)
	}
	if off >= fed {
		return off, ic, nil
	}
	// The feed wrote past the acked boundary: go on to the first boundary
	// at or after fed.
	c := replay.NewCutter(off, ic)
	var next *replay.Mark
	c.OnEvent(func(ev replay.Event) {
		if next == nil && ev.End() >= fed {
			next = &replay.Mark{Offset: ev.End(), Icount: c.Icount()}
		}
	})
	r := io.NewSectionReader(f, off, 1<<62)
	buf := make([]byte, 64<<10)
	for next == nil {
		n, rerr := r.Read(buf)
		if _, err := c.Write(buf[:n]); err != nil && next == nil {
			return 0, 0, fmt.Errorf("scan log: %w", err)
		}
		if errors.Is(rerr, io.EOF) {
			break
		}
		if rerr != nil {
			return 0, 0, fmt.Errorf("read log: %w", rerr)
		}
	}
	if next == nil {
		return 0, 0, fmt.Errorf("%w: the feed wrote up to %d but the log (boundary %d) holds no complete event ending there or later",
			ErrNoCut, fed, c.Boundary())
	}
	return next.Offset, next.Icount, nil
}

// parkTail is what follows the cut in the FIFO: completions for block requests
// that may be in flight (see GoLiveConfig.PendingBlocks), then CHECKPOINT_RESET,
// which nothing in a running guest consumes, so the replay parks before it.
func parkTail(cfg GoLiveConfig, cut int64) []byte {
	var tail []byte
	if cfg.PendingBlocks != nil {
		for _, id := range cfg.PendingBlocks(cut) {
			tail = append(tail, byte(replay.KindAsyncBlock))
			tail = binary.BigEndian.AppendUint64(tail, id)
		}
	}
	return append(tail, byte(replay.KindCheckpointReset))
}

// park finishes the feed at cut plus CHECKPOINT_RESET and waits until the
// replay's icount is target, the FIFO is drained, and both stay so for
// cfg.ParkStable.
func park(ctx context.Context, cfg GoLiveConfig, log *slog.Logger, cut int64, target uint64) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	finished := make(chan error, 1)
	go func() { // owned: park waits for it on every return path
		finished <- cfg.Feed.Finish(ctx, cut, parkTail(cfg, cut))
	}()
	feedDone := false
	defer func() {
		if !feedDone {
			cancel()
			<-finished
		}
	}()

	tick := time.NewTicker(cfg.Poll)
	defer tick.Stop()
	var (
		last       uint64
		lastMove   = time.Now()
		stableFrom time.Time
	)
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("go-live: park at icount %d (at %d): %w", target, last, ctx.Err())
		case err := <-finished:
			feedDone = true
			if err != nil {
				return fmt.Errorf("go-live: finish feed at %d: %w", cut, err)
			}
			continue
		case <-tick.C:
		}
		// Every poll also wakes the replay's main loop (see Poll).
		qctx, qcancel := context.WithTimeout(ctx, time.Second)
		ri, err := cfg.Replay.QueryReplay(qctx)
		qcancel()
		switch {
		case errors.Is(err, ErrExited):
			return fmt.Errorf("go-live: replaying qemu exited while parking: %w", err)
		case err != nil:
			log.Debug("go-live: query-replay", "err", err) // a busy QEMU may miss a poll
		case ri.Mode != "play":
			return fmt.Errorf("go-live: replaying qemu is in rr mode %q", ri.Mode)
		case ri.Icount > target:
			return fmt.Errorf("go-live: %w: icount %d, cut at %d has icount %d", ErrOvershoot, ri.Icount, cut, target)
		}
		now := time.Now()
		if err == nil && ri.Icount != last {
			last, lastMove = ri.Icount, now
		}
		if last < target {
			stableFrom = time.Time{}
			if now.Sub(lastMove) > cfg.ParkStall {
				return fmt.Errorf("go-live: %w: icount %d for %s, target %d (feed finished: %v)",
					ErrParkStalled, last, now.Sub(lastMove).Round(time.Millisecond), target, feedDone)
			}
			continue
		}
		if !feedDone {
			continue
		}
		q, err := cfg.Feed.Queued(ctx)
		if err != nil {
			return fmt.Errorf("go-live: %w", err)
		}
		if q > 0 {
			stableFrom = time.Time{}
			continue
		}
		if stableFrom.IsZero() {
			stableFrom = now
		}
		if now.Sub(stableFrom) >= cfg.ParkStable {
			return nil
		}
	}
}

// savevmBusy is the text of migration/savevm.c's refusal while rr's async
// queue is not empty. HMP reports failures only as text.
const savevmBusy = "Try once more later"

// saveVM runs savevm, retrying while replay's async queue is non-empty.
func saveVM(ctx context.Context, cfg GoLiveConfig) (int, error) {
	deadline := time.Now().Add(cfg.SaveTimeout)
	for tries := 1; ; tries++ {
		out, err := cfg.Replay.HMP(ctx, "savevm "+cfg.Tag)
		if err != nil {
			return tries, fmt.Errorf("go-live: savevm %s: %w", cfg.Tag, err)
		}
		out = strings.TrimSpace(out)
		if out == "" {
			return tries, nil
		}
		if !strings.Contains(out, savevmBusy) {
			return tries, fmt.Errorf("go-live: savevm %s: %s", cfg.Tag, out)
		}
		if time.Now().After(deadline) {
			return tries, fmt.Errorf("go-live: savevm %s: %w after %d tries in %s: %s", cfg.Tag, ErrSnapshotBusy, tries, cfg.SaveTimeout, out)
		}
		select {
		case <-ctx.Done():
			return tries, fmt.Errorf("go-live: savevm %s: %w", cfg.Tag, ctx.Err())
		case <-time.After(cfg.Poll):
		}
	}
}

// Feed: stopping at a cut. The feeding goroutine serves these requests
// between chunks (feed.go); after Halt it writes nothing until Finish, and
// after Finish nothing at all. The FIFO stays open until Close.

type feedCtlKind int

const (
	feedHalt feedCtlKind = iota
	feedFinish
	feedQueued
)

type feedCtl struct {
	kind  feedCtlKind
	cut   int64
	tail  []byte
	reply chan feedReply // buffered: the goroutine never blocks on it
}

type feedReply struct {
	n   int64
	err error
}

type feedState struct {
	halted, finished bool
}

// Halt stops feeding new source data and returns the source offset written
// so far. It waits for a chunk being written, so the reader must be
// reading.
func (f *Feed) Halt(ctx context.Context) (int64, error) {
	return f.request(ctx, feedCtl{kind: feedHalt})
}

// Finish writes the source from what has been fed up to cut, then tail,
// and stops feeding for good; the FIFO stays open (the reader never sees
// EOF) until Close. It returns when tail is in the FIFO. A cut below what
// was already fed is a *FedPastCutError, after which the Feed is halted
// and Finish may be called again with a later cut.
func (f *Feed) Finish(ctx context.Context, cut int64, tail []byte) error {
	_, err := f.request(ctx, feedCtl{kind: feedFinish, cut: cut, tail: tail})
	return err
}

// Queued is the number of bytes in the FIFO that the reader has not read
// yet (FIONREAD). It waits for a chunk being written.
func (f *Feed) Queued(ctx context.Context) (int, error) {
	n, err := f.request(ctx, feedCtl{kind: feedQueued})
	return int(n), err
}

func (f *Feed) request(ctx context.Context, r feedCtl) (int64, error) {
	r.reply = make(chan feedReply, 1)
	select {
	case f.ctl <- r:
	case <-ctx.Done():
		return 0, fmt.Errorf("feed: %w", ctx.Err())
	case <-f.done:
		return 0, fmt.Errorf("feed: stopped: %w", errors.Join(f.err, os.ErrClosed))
	}
	select {
	case rep := <-r.reply:
		return rep.n, rep.err
	case <-ctx.Done():
		return 0, fmt.Errorf("feed: %w", ctx.Err())
	case <-f.done:
		return 0, fmt.Errorf("feed: stopped: %w", errors.Join(f.err, os.ErrClosed))
	}
}

// control serves one request in the feeding goroutine.
func (f *Feed) control(out *fifoWriter, st *feedState, r feedCtl) {
	switch r.kind {
	case feedHalt:
		st.halted = true
		r.reply <- feedReply{n: f.fed.Load()}
	case feedQueued:
		n, err := out.Queued()
		r.reply <- feedReply{n: int64(n), err: err}
	case feedFinish:
		st.halted = true
		if st.finished {
			r.reply <- feedReply{err: ErrFeedFinished}
			return
		}
		if fed := f.fed.Load(); r.cut < fed {
			r.reply <- feedReply{err: &FedPastCutError{Fed: fed, Cut: r.cut}}
			return
		}
		st.finished = true
		err := f.writeFinal(out, r.cut, r.tail)
		if err != nil {
			f.log.Warn("rr feed finish failed", "fifo", f.fifo, "err", err)
		}
		r.reply <- feedReply{n: f.fed.Load(), err: err}
	}
}

func (f *Feed) writeFinal(out *fifoWriter, cut int64, tail []byte) error {
	in, err := os.Open(f.src)
	if err != nil {
		return fmt.Errorf("feed: open source: %w", err)
	}
	defer in.Close()
	if n, err := io.Copy(out, io.NewSectionReader(in, f.fed.Load(), cut-f.fed.Load())); err != nil {
		f.fed.Add(n)
		return fmt.Errorf("feed: write up to the cut: %w", err)
	} else if f.fed.Add(n) != cut {
		return fmt.Errorf("feed: source ends at %d, before the cut at %d", f.fed.Load(), cut)
	}
	if _, err := out.Write(tail); err != nil {
		return fmt.Errorf("feed: write tail: %w", err)
	}
	f.log.Info("rr feed finished", "fifo", f.fifo, "cut", cut, "tail", len(tail))
	return nil
}
