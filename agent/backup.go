package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ftvmd/ftvmd/arbiter"
	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/journal"
	"github.com/ftvmd/ftvmd/lifecycle"
	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/logspace"
	"github.com/ftvmd/ftvmd/netbuf"
	"github.com/ftvmd/ftvmd/nicdump"
	"github.com/ftvmd/ftvmd/qemu"
	"github.com/ftvmd/ftvmd/replay"
	"github.com/ftvmd/ftvmd/sentinel"
	"github.com/ftvmd/ftvmd/vmspec"
)

// Unauthenticated peers: at most maxUnauthenticated connections may be between
// accept and a checked Hello at once, each for at most peerAuthTimeout (the TLS
// handshake, a certificate from the CA, and the Hello). The peer port is open to the
// network: without the cap, connections that never finish a handshake would cost a
// goroutine and a socket each, without bound.
const (
	maxUnauthenticated = 16
	peerAuthTimeout    = 10 * time.Second
)

// servePeers accepts log channels from primaries. A connection beyond the cap of
// unauthenticated ones is closed at once, with a WARN when the cap is first reached
// (and a count of those refused since, when it is reached again).
func (a *Agent) servePeers(ctx context.Context, ln net.Listener) error {
	go func() { <-ctx.Done(); ln.Close() }()
	limit := a.maxUnauth
	if limit <= 0 {
		limit = maxUnauthenticated
	}
	slots := make(chan struct{}, limit)
	var refused uint64
	full := false
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("peer accept: %w", err)
		}
		select {
		case slots <- struct{}{}:
			full = false
		default:
			refused++
			if !full {
				full = true
				a.log.Warn("peer port: too many unauthenticated connections; refusing new ones until some finish or time out",
					"limit", limit, "refused_so_far", refused, "from", c.RemoteAddr().String())
			}
			c.Close()
			continue
		}
		var once sync.Once
		release := func() { once.Do(func() { <-slots }) }
		go func() {
			defer release()
			a.servePeer(ctx, c, release)
		}()
	}
}

// servePeer serves one connection on the peer port; it calls authenticated once the
// peer has shown a certificate from the CA and a Hello whose name it names (or as it
// gives up on it), freeing its place among the unauthenticated.
func (a *Agent) servePeer(ctx context.Context, c net.Conn, authenticated func()) {
	log := a.log.With("peer", c.RemoteAddr().String())
	timeout := a.authTimeout
	if timeout <= 0 {
		timeout = peerAuthTimeout
	}
	// One deadline for the handshake and the Hello; ReadHello's own, shorter or not,
	// applies within it.
	if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
		log.Warn("peer refused", "err", err)
		c.Close()
		return
	}
	if tc, ok := c.(*tls.Conn); ok {
		hctx, cancel := context.WithTimeout(ctx, timeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			log.Warn("peer refused: TLS handshake", "err", err)
			c.Close()
			return
		}
	}
	var hello peerHello
	if err := logging.ReadHello(c, &hello); err != nil {
		// Includes TLS handshake failures: a peer without the right certificate.
		log.Warn("peer refused", "err", err)
		c.Close()
		return
	}
	if err := c.SetDeadline(time.Time{}); err != nil {
		log.Warn("peer refused", "err", err)
		c.Close()
		return
	}
	reply := func(err error) {
		r := peerReply{OK: err == nil, Host: a.cfg.Host, ConsoleMarks: err == nil, Synced: err == nil,
			// Frames are numbered from the QEMU's start: a replay from a running VM's
			// snapshot starts elsewhere than the primary's count.
			NICDigests: err == nil && hello.Snapshot == nil, NICHash: nicHashFor(hello)}
		if err != nil {
			r.Error = err.Error()
		}
		if werr := logging.WriteHelloReply(c, r); werr != nil {
			log.Warn("peer reply", "err", werr)
		}
	}
	err := checkPeer(c, a.cfg.Host, hello.From, "primary")
	authenticated()
	if err != nil {
		lvl := slog.LevelWarn
		if hello.Op == "ping" && errors.Is(err, errSameName) {
			// A probe of a VM's backup hosts that reached this host itself
			// (named by a host name the prober does not know as its own).
			lvl = slog.LevelDebug
		}
		log.Log(ctx, lvl, "peer refused", "from", hello.From, "err", err)
		reply(err)
		c.Close()
		return
	}
	if hello.Op == "ping" {
		// A primary waiting to protect its VM again sees whether this agent is
		// back (re-protection), and whether it can start a backup of the VM: a
		// copy of it still here (a backup stepped down and tearing down) would
		// refuse it.
		reply(a.stillRunning(hello.Spec.Name))
		c.Close()
		return
	}
	if hello.Op == "checksum" {
		if err := logging.WriteHelloReply(c, a.checksum(hello.Spec.Name)); err != nil {
			log.Warn("checksum reply", "err", err)
		}
		c.Close()
		return
	}
	if hello.Op != "backup" {
		reply(fmt.Errorf("unknown peer operation %q", hello.Op))
		c.Close()
		return
	}
	hello.Spec.Normalize()
	if err := hello.Spec.Validate(); err != nil {
		reply(err)
		c.Close()
		return
	}
	if err := a.usableEngine(hello.Engine); err != nil {
		log.Warn("peer refused", "from", hello.From, "err", err)
		reply(err)
		c.Close()
		return
	}
	if err := a.checkHelloEpoch(ctx, hello); err != nil {
		log.Warn("peer refused", "from", hello.From, "vm", hello.Spec.Name, "err", err)
		reply(err)
		c.Close()
		return
	}
	b, err := a.startBackup(ctx, hello, c)
	if err != nil {
		log.Warn("backup not started", "vm", hello.Spec.Name, "err", err)
		reply(err)
		c.Close()
		return
	}
	reply(nil)
	b.run(c)
}

// backup replays the primary's log as it arrives.
type backup struct {
	a       *Agent
	spec    vmspec.Spec
	log     *slog.Logger
	dir     string
	peer    string
	started time.Time
	conn    net.Conn

	logFile  *os.File
	feed     *qemu.Feed
	m        *qemu.Machine
	recv     *logging.Receiver
	emitted  atomic.Uint64 // frames the replaying QEMU sent (must stay 0)
	netSock  *net.UnixConn
	dataPath DataPath // the primary's NIC type, which the replay must match
	netTap   string   // the replay's tap on the tap path (on no bridge)
	emitSeen atomic.Bool
	// nicCap: the replay's guest's transmitted frames, captured by its QEMU (the
	// divergence sentinel's NIC half).
	nicCap *nicdump.Capture
	// nicHash is the frame checksum the primary's digests carry (nicHashFor).
	nicHash     func([]byte) uint64
	nicHashName string
	// handedOff: the replaying QEMU went live in place and belongs to the primary
	// now, with its tap: the backup's teardown leaves both alone.
	handedOff atomic.Bool
	epoch     uint64          // the epoch the primary is protected under (0: no shared storage)
	img       *disk.ImageInfo // the primary's image, copied before the log
	// snap: the backup starts from a snapshot of the running VM (protect.go) at
	// log offset start; nil (and start the header's end) for a backup from boot.
	snap  *snapshotStart
	start int64
	// returnAddr is the primary's agent address (peerHello.ReturnAddr): after
	// going live this copy protects the VM again with it.
	returnAddr string
	cutPoints  *cutPoints       // recent safe cut points; the newest is the feed's limit
	positions  *replayPositions // replayed count -> log offset, for the stall report
	blocks     *blockIDs        // block completions in the log, for go-live
	diskPath   string
	cancel     context.CancelFunc
	finished   chan struct{}
	wg         sync.WaitGroup
	stopOnce   sync.Once
	// life decides the backup's lifecycle (package lifecycle); the backup carries
	// out what it asks and feeds it what happens.
	life *driver
	// health: whether the replaying QEMU answers the liveness probe (watchVMQEMU).
	health qemuHealth
	// goLive turns the replay into the live VM under epoch (goLiveFromReplay; a test
	// puts a fake in its place).
	goLive func(ctx context.Context, epoch uint64, claim time.Duration) error
	// stallReports: the primary reads acks with the stall report (peerHello).
	stallReports bool
	// logs bounds the disk space of the received rr log and the console log (set in
	// run, under mu).
	logs *logKeeper

	// flipConsole: test knob (OpTestDiverge): the sentinel sees one byte of the
	// replay's console flipped.
	flipConsole atomic.Bool

	mu sync.Mutex
	// recvDone closes when the receiver's Run has returned (nil before it runs);
	// aborted: the lifecycle had the receiver tell the primary why this backup
	// stepped down, and the teardown waits for that to go out.
	recvDone chan struct{}
	// qemuStartDone closes when the replaying QEMU's start has ended, started
	// or not (nil before it begins).
	qemuStartDone chan struct{}
	aborted       bool
	replayed      uint64
	// The divergence sentinel: console bytes checked against the primary's marks,
	// and what differed (empty while nothing did).
	consoleChecked int64
	nic            nicSentinel // the NIC half: frames compared with the primary's digests
	divergence     string
	stall          stallState // the replay's current or last stall (see pollReplay)
	// stallDown: the stall step-down was sent (pollReplay's goroutine only).
	stallDown bool
	// sentinelDown: the sentinel stepped this backup down (sentinelStepDown).
	sentinelDown bool
	// evidence: where the sentinel's step-down left what it found (stepdown.json
	// in the backup's directory, kept with the log and console; see keepEvidence).
	evidence string
	cleanups cleanupStack
}

// logSink appends received frames to the backup's local log and lets the feed pass
// only up to a safe cut point to the replaying QEMU: frames may end mid-event, and a
// go-live must be able to stop the replay exactly where the feed stopped with no
// block request in flight (savevm refuses while replay events are queued).
type logSink struct {
	f    *os.File
	feed feedLimit
	cut  *replay.Cutter
	// points holds recent safe cut points (see safeCut) and their instruction counts;
	// the newest is the feed's limit.
	points *cutPoints
	// positions maps a replayed count back to a log offset, for the stall report.
	positions *replayPositions
	blocks    *blockIDs // block completions seen, for go-live
}

// feedLimit is the part of qemu.Feed the sink drives: how far the replay may read.
type feedLimit interface{ Notify(limit int64) }

// newLogSink appends to f the log from offset start, where the instruction count
// is icount (the header's end and 0 from boot; a snapshot's offset and count).
func newLogSink(f *os.File, feed feedLimit, start int64, icount uint64) logSink {
	s := logSink{f: f, feed: feed, cut: replay.NewCutter(start, icount), points: new(cutPoints),
		positions: newReplayPositions(), blocks: newBlockIDs()}
	s.points.add(start, icount)
	s.positions.add(start, icount)
	s.cut.OnEvent(func(ev replay.Event) {
		if ev.Kind == replay.KindAsyncBlock {
			s.blocks.completed(ev.ID, ev.Offset)
		}
		if safeCut(ev.Kind) {
			s.points.add(ev.Offset+int64(ev.Size), s.cut.Icount())
		}
	})
	return s
}

// safeCut reports whether the log may be cut right after an event of this kind.
// QEMU writes a vCPU's executed instructions lazily, as an INSTRUCTION event just
// before the next event, and queues a block request's completion to be written (as
// an ASYNC event) at the top of the next loop: [INSTRUCTION n][ASYNC_BLOCK id][31].
// Cut after the INSTRUCTION or inside the async run and the replay executes the
// instructions that issued a request whose completion it never reads, so savevm
// refuses forever. Such a group is written by one thread in one go, before any
// network send of that thread can flush it, so no released frame's stamp falls
// inside it: backing off to before it drops no output a client has seen.
func safeCut(k replay.Kind) bool {
	return k != replay.KindInstruction && !k.IsAsync()
}

func (s logSink) Append(off int64, data []byte) error {
	if _, err := s.f.WriteAt(data, off); err != nil {
		return err
	}
	if _, err := s.cut.Write(data); err != nil {
		// The primary sent bytes that are not an rr log: refuse them (the receiver
		// stops and the channel ends) rather than feed them to QEMU.
		return fmt.Errorf("received log does not parse: %w", err)
	}
	p := s.points.newest()
	s.positions.add(p.off, p.icount)
	s.feed.Notify(p.off)
	return nil
}

// AckLimit is logging.AckLimiter: the backup acknowledges only up to its newest safe
// cut point, the offset a go-live would replay to. Every offset the primary sees
// acked, and so every stamp of a frame it releases, is then at or below the cut a
// go-live of this backup uses: stamp <= ack <= cut holds by construction, not by an
// argument about where stamps fall.
func (s logSink) AckLimit() int64 { return s.points.last() }

func (a *Agent) startBackup(ctx context.Context, hello peerHello, c net.Conn) (_ *backup, err error) {
	b := &backup{
		a: a, spec: hello.Spec, peer: hello.From, started: time.Now(), img: hello.Disk, stallReports: hello.StallReports,
		log:      a.log.With("vm", hello.Spec.Name, "role", "backup"),
		dir:      a.vmDir(hello.Spec.Name, "backup"),
		finished: make(chan struct{}),
		epoch:    hello.Epoch,
		start:    hello.StartOffset,
		snap:     hello.Snapshot,

		returnAddr: hello.ReturnAddr,
	}
	b.nicHashName = nicHashFor(hello)
	b.nicHash, _ = sentinel.HashFunc(b.nicHashName)
	if b.nicHashName == sentinel.HashCRC64 {
		b.nicHashName = "crc64"
	}
	if err := b.newLife(); err != nil {
		return nil, err
	}
	dp, err := ParseDataPath(string(hello.DataPath))
	if err != nil {
		return nil, fmt.Errorf("primary's %w", err)
	}
	b.dataPath = dp
	switch {
	case hello.Snapshot != nil:
		if err := hello.Snapshot.validate(); err != nil {
			return nil, err
		}
		if hello.StartOffset < replay.HeaderSize {
			return nil, fmt.Errorf("log start offset %d of a snapshot is inside the log header", hello.StartOffset)
		}
		if !a.engine.LogStream {
			return nil, fmt.Errorf("a backup from a running VM's snapshot needs ftvmd's QEMU build on this host (%s is %s)", a.engine.Binary, a.engine.Name)
		}
	case hello.StartOffset != replay.HeaderSize:
		return nil, fmt.Errorf("log start offset %d: a backup from boot starts at offset %d", hello.StartOffset, replay.HeaderSize)
	}
	if err := a.register(b.spec.Name, b); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			_ = b.stop(context.Background())
			a.unregister(b.spec.Name, b)
		}
	}()
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"prepare-dir", b.prepareDir},
		{"check-log-space", func(context.Context) error { return checkLogSpace(b.dir, b.spec.MaxLogDisk) }},
		{"open-log", b.openLog},
		{"bind-net", b.bindNet},
		{"nic-capture", b.openNICCapture},
		{"prepare-qemu", b.prepareQEMU},
	}
	for _, s := range steps {
		if err := s.fn(ctx); err != nil {
			return nil, fmt.Errorf("backup %s: %s: %w", b.spec.Name, s.name, err)
		}
	}
	return b, nil
}

func (b *backup) prepareDir(context.Context) error {
	// A backup the sentinel stepped down left what it found here: keep it.
	kept, err := keepEvidence(b.dir)
	if err != nil {
		b.log.Warn("divergence sentinel: the last step-down's evidence is lost", "err", err)
	} else if kept != "" {
		b.log.Info("divergence sentinel: the last step-down's evidence is kept", "dir", kept)
	}
	if err := os.RemoveAll(b.dir); err != nil {
		return err
	}
	return os.MkdirAll(b.dir, 0o700)
}

func (b *backup) openLog(context.Context) error {
	f, err := os.OpenFile(filepath.Join(b.dir, "log.rr"), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	b.logFile = f
	b.cleanups.push(f.Close)
	opts := []qemu.FeedOpt{qemu.WithFeedLogger(b.log)}
	if b.snap != nil {
		// The replay loads the snapshot and reads the log from its offset on.
		opts = append(opts, qemu.WithFeedStart(b.start))
	}
	feed, err := qemu.NewFeed(filepath.Join(b.dir, "log.fifo"), f.Name(), opts...)
	if err != nil {
		return err
	}
	b.feed = feed
	b.cleanups.push(feed.Close)
	return nil
}

// bindNet gives the replaying QEMU's NIC a socket to send to. Replay emits nothing;
// anything that arrives is counted (and shown in status) and dropped. On the tap path
// the NIC is a tap on no bridge, and what QEMU writes to it is counted by the tap.
func (b *backup) bindNet(context.Context) error {
	if b.dataPath == DataPathTap {
		name := backupTapName(b.spec.Name)
		// A tap left by a crashed agent would make CreateTap fail: the name is ours.
		if err := netbuf.DeleteTap(name); err != nil {
			return err
		}
		if _, err := netbuf.CreateTap(name, ""); err != nil {
			return err
		}
		b.netTap = name
		b.cleanups.push(func() error {
			if b.handedOff.Load() {
				return nil // the live VM's NIC now
			}
			return netbuf.DeleteTap(name)
		})
		return nil
	}
	path := filepath.Join(b.dir, "net-agent.sock")
	uc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return err
	}
	b.netSock = uc
	b.cleanups.push(uc.Close)
	go func() {
		buf := make([]byte, 65536)
		for {
			if _, _, err := uc.ReadFrom(buf); err != nil {
				return
			}
			if b.emitted.Add(1) == 1 {
				b.log.Error("the replaying QEMU emitted a network frame; it must not")
			}
		}
	}()
	return nil
}

// openNICCapture creates the FIFO the replaying QEMU dumps its guest's transmitted
// frames to (the divergence sentinel's NIC half); it must exist before QEMU starts.
// A replay from a running VM's snapshot gets none: the primary numbers its frames
// from its QEMU's start and sends it no digests.
func (b *backup) openNICCapture(context.Context) error {
	if b.snap != nil {
		return nil
	}
	c, err := openNICCapture(b.dir, &b.cleanups)
	if err != nil {
		return err
	}
	b.nicCap = c
	return nil
}

// prepareQEMU checks and builds the replaying QEMU's config. QEMU itself starts in run:
// in replay mode it blocks reading its log before it even opens its QMP socket, so it
// can only finish starting once the primary streams.
func (b *backup) prepareQEMU(context.Context) error {
	cfg := qemu.Config{
		Name: b.spec.Name, Binary: b.a.cfg.QEMU, MemoryMB: b.spec.MemoryMB,
		Kernel: b.spec.Kernel, Initrd: b.spec.Initrd, Append: b.spec.Append,
		Mode: qemu.ModeReplay, RRFile: b.feed.Path(), IcountShift: b.spec.Shift(),
		NIC:        nicFor(b.dataPath, b.spec.MAC, b.dir, b.netTap),
		QMPSocket:  filepath.Join(b.dir, "qmp.sock"),
		ConsoleLog: filepath.Join(b.dir, "console.log"),
		Dir:        b.dir,
		// savevm at go-live needs a qcow2 drive; a backup from a running VM's
		// snapshot receives the primary's, holding the snapshot's VM state.
		SnapshotDrive: filepath.Join(b.dir, "snapshot.qcow2"),
	}
	if b.snap != nil {
		cfg.RRSnapshot = b.snap.Tag
	}
	if b.nicCap != nil {
		cfg.NIC.TxDump = b.nicCap.Path()
	}
	if b.img != nil {
		b.diskPath = filepath.Join(b.dir, "disk.qcow2")
	}
	opts := []qemu.Opt{qemu.WithLogger(b.log)}
	if b.a.cfg.CgroupRoot != "" {
		cg, err := newCgroupFor(b.a, b.spec.Name+"-backup")
		if err != nil {
			return err
		}
		b.cleanups.push(cg.Remove)
		opts = append(opts, qemu.WithCgroup(cg.Add))
	}
	// Validate before replying to the primary; the disk copy arrives only after.
	if err := cfg.Validate(); err != nil {
		return err
	}
	cfg.Disks = disks(b.diskPath)
	m, err := qemu.New(cfg, opts...)
	if err != nil {
		return err
	}
	b.m = m
	return nil
}

// startQEMU starts the replaying QEMU; it returns once QMP answers, which needs log.
func (b *backup) startQEMU(ctx context.Context) error {
	if err := b.m.Start(ctx); err != nil {
		return err
	}
	b.cleanups.push(func() error {
		if b.handedOff.Load() {
			return nil // live in place: the primary owns it
		}
		// A replaying QEMU has nothing to save: kill it rather than let it read on.
		if err := b.m.Kill(); err != nil {
			return err
		}
		<-b.m.Exited()
		return nil
	})
	return nil
}

// run receives the log until the channel ends and tells the lifecycle how it ended;
// what follows (stop, claim and go live, go live after a planned failover, step
// down) is the lifecycle's decision, carried out by exec.
func (b *backup) run(conn net.Conn) {
	ctx, cancel := context.WithCancel(context.Background())
	b.mu.Lock()
	b.cancel, b.conn = cancel, conn
	b.mu.Unlock()
	var icount uint64
	if b.snap != nil {
		icount = b.snap.Icount
	}
	start := b.start
	if start == 0 {
		start = replay.HeaderSize // from boot
	}
	sink := newLogSink(b.logFile, b.feed, start, icount)
	b.cutPoints = sink.points
	b.positions = sink.positions
	b.blocks = sink.blocks
	// Console marks from the primary, for the sentinel. The receiver must not block:
	// a full queue drops the mark (a later one covers the same bytes and more).
	marks := make(chan logging.ConsoleMark, 64)
	nicDigests := make(chan logging.NICDigests, nicBatchQueue)
	recv := logging.NewReceiver(b.conn, sink, logging.ReceiverConfig{
		OnConsole: func(m logging.ConsoleMark) {
			select {
			case marks <- m:
			default:
			}
		},
		StartOffset: start,
		OnSynced: func(epoch uint64) {
			// The reader goroutine must not block on the lifecycle's lock.
			b.wg.Add(1)
			go func() {
				defer b.wg.Done()
				b.log.Info("the primary is protected by this backup now", "epoch", epoch)
				_ = b.life.step(lifecycle.Synced(epoch, epoch > 0 && b.a.store != nil))
			}()
		},
		OnNIC: b.onNIC(nicDigests),
		// Acks carry the replayed icount, the primary's only view of the backup's
		// progress: send them often so the measured lag is not ack cadence.
		HeartbeatInterval: min(b.a.cfg.HeartbeatInterval, ackEvery),
		PeerTimeout:       b.a.cfg.PeerTimeout,
		AckDelay:          b.a.cfg.TestAckDelay,
		StallReports:      b.stallReports,
		Logger:            b.log,
	})
	logs := newLogKeeper(b.log, b.logFile.Name(), b.m.Config().ConsoleLog, b.spec.MaxLogDisk, b.a.cfg, b.logPlan)
	b.mu.Lock()
	b.recv = recv
	b.logs = logs
	b.mu.Unlock()
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		logs.run(ctx, b.a.cfg.LogCheckEvery)
	}()
	var lerr error
	if b.snap != nil {
		lerr = b.life.startSyncing(b.peer)
	} else {
		lerr = b.life.start(b.epoch, b.peer, b.epoch > 0 && b.a.store != nil)
	}
	if lerr != nil {
		b.log.Error("lifecycle start", "err", lerr)
	}
	if b.img != nil {
		b.log.Info("receiving disk image", "bytes", b.img.Size)
		// The partial copy lives outside the run directory (prepareDir empties
		// that at every protect) so an interrupted copy resumes at the next one.
		info, err := disk.ReceiveImage(ctx, conn, b.diskPath, disk.CopyConfig{
			ResumeDir: filepath.Join(b.a.cfg.StateDir, "partial"), ResumeKey: b.spec.Name, Logger: b.log,
		})
		if err != nil {
			_ = b.life.step(lifecycle.Fault(fmt.Errorf("disk copy from primary: %w", err)))
			return
		}
		b.log.Info("disk image received", "bytes", info.Size, "sha256", info.SHA256)
	}
	if b.snap != nil {
		if err := b.receiveSnapshot(ctx, conn); err != nil {
			_ = b.life.step(lifecycle.Fault(err))
			return
		}
	}
	b.log.Info("backup replaying", "from", b.peer)
	detach := b.a.peers.attach(b.peer, b.spec.Name, conn, func() time.Time { return recv.Stats().LastPeerMsgAt })
	// From here the receiver runs (or is about to): a step-down aborts it, and its
	// Error tells the primary why.
	recvDone := make(chan struct{})
	startDone := make(chan struct{})
	b.mu.Lock()
	b.recvDone = recvDone
	b.qemuStartDone = startDone
	b.mu.Unlock()
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		sctx, scancel := context.WithTimeout(ctx, 5*time.Minute)
		err := b.startQEMU(sctx)
		scancel()
		close(startDone)
		if err != nil {
			if ctx.Err() == nil {
				b.stepDown(fmt.Errorf("replaying qemu did not start: %w", err))
			}
			return
		}
		b.log.Info("replaying qemu running", "pid", b.m.PID())
		b.wg.Add(1)
		go func() {
			defer b.wg.Done()
			peer := func() string { b.mu.Lock(); defer b.mu.Unlock(); return b.peer }
			b.a.watchVMQEMU(ctx, b.log, b.spec.Name, "backup", peer, b.m, &b.health, b.life.step)
		}()
		b.wg.Add(1)
		go func() { defer b.wg.Done(); b.checkConsole(ctx, marks) }()
		if b.nicCap != nil {
			b.wg.Add(1)
			go func() { defer b.wg.Done(); b.checkNIC(ctx, nicDigests, recvDone) }()
		}
		b.pollReplay(ctx)
	}()
	err := recv.Run(ctx)
	close(recvDone)
	detach(channelEndReason(err, ctx.Err() != nil))
	if ctx.Err() != nil {
		return // stopping
	}
	ev := channelEnded(err)
	switch {
	case ev.Type == lifecycle.EventFault:
		b.log.Error("log channel ended here", "err", err)
	case ev.Bye:
		b.log.Info("log channel closed by primary")
	default:
		b.log.Error("primary lost", "err", err)
	}
	_ = b.life.step(ev)
}

// channelEnded says what the end of the log channel (err, from the receiver) means
// for the lifecycle. This backup's own faults and its refusals of what it received (a
// log that does not parse, a bad frame) are local: it steps down without claiming,
// because a won claim makes a healthy primary halt and a broken backup cannot go
// live. A Bye is the primary's choice; an Error is a primary that failed and said so;
// anything else (silence, a broken connection) is a lost primary. Whether a lost or
// failed primary is claimed after, or the backup stops, is the lifecycle's decision
// (it claims only with shared storage).
func channelEnded(err error) lifecycle.Event {
	for _, local := range []error{logging.ErrAborted, logging.ErrSink, logging.ErrChecksum,
		logging.ErrGap, logging.ErrStale, logging.ErrProtocol, logging.ErrConfig} {
		if errors.Is(err, local) {
			return lifecycle.Fault(fmt.Errorf("log channel: %w", err))
		}
	}
	switch {
	case errors.Is(err, logging.ErrPeerClosed):
		return lifecycle.PeerBye(err)
	case errors.Is(err, logging.ErrPeerRefused):
		return lifecycle.PeerQuit(err)
	}
	return lifecycle.PeerLost(err)
}

// stepDown ends this backup's protection after a local fault: the lifecycle has the
// receiver tell the primary why (an Error on the log channel) and stops without
// claiming an epoch: the primary is healthy and carries on unprotected, its status
// saying why.
func (b *backup) stepDown(err error) {
	_ = b.life.step(lifecycle.Fault(err))
}

// ackEvery is the backup's ack period and replayPollEvery how often it asks its QEMU how
// far it has replayed. The poll also wakes the replaying QEMU's main loop, without
// which an idle replay stalls on checkpoints written by the recorder's main loop.
const (
	ackEvery         = 10 * time.Millisecond
	replayPollEvery  = 10 * time.Millisecond
	replayPollWaking = time.Millisecond
	// feedCheckEvery is how often the backup checks whether its replay has drained
	// the FIFO (a few small /proc reads).
	feedCheckEvery = 5 * time.Millisecond
	// recentInput is how long after the last frame the replay counts as having
	// main-loop work that may need a wake.
	recentInput = 200 * time.Millisecond
)

// replayPollInterval picks the next query-replay poll from the replayed icount now
// and at the previous poll. A query takes the replay mutex from the vCPU, so it costs
// a replay that is executing (measured: a busy replay woken every 0.5 ms took 72 s
// instead of 50 s): while the count moves, poll slowly. When it has not moved but
// log arrived recently, the replay is most likely parked on one of the recorder's
// main-loop checkpoints, which it consumes only when its main loop wakes, and a query
// is such a wake: poll fast.
func replayPollInterval(replayed, prev uint64, st logging.ReceiverStats, now time.Time) time.Duration {
	if replayed != prev {
		return replayPollEvery
	}
	if !st.LastFrameAt.IsZero() && now.Sub(st.LastFrameAt) < recentInput {
		return replayPollWaking
	}
	return replayPollEvery
}

// newLife gives the backup its lifecycle machine and the default go-live.
func (b *backup) newLife() error {
	d, err := newDriver(b.a, arbiter.RoleBackup, b.spec.Name, 0, b.log, b.exec)
	if err != nil {
		return err
	}
	d.notify = b.journalLife
	b.life, b.goLive = d, b.goLiveFromReplay
	return nil
}

// journalLife records the backup's lifecycle changes in the agent's journal.
func (b *backup) journalLife(prev, cur lifecycle.Status) {
	e := journal.Event{VM: b.spec.Name, Role: "backup", Peer: b.peer, Epoch: cur.Epoch, Detail: cur.Detail}
	switch cur.State {
	case lifecycle.GoingLive:
		e.Kind = journal.KindFailover
		if prev.State == lifecycle.Claiming {
			e.DurationMS, e.Detail = ms(b.life.sinceClaim()), "primary lost: going live"
		} else {
			e.Detail = "planned failover: the primary handed the VM over; going live"
		}
	case lifecycle.Halted:
		e.Kind = journal.KindHalted
	case lifecycle.Failed:
		e.Kind = journal.KindFailed
	default:
		return
	}
	b.a.record(e)
}

// exec carries out one lifecycle action (see driver): without blocking.
func (b *backup) exec(a lifecycle.Action) {
	switch a.Type {
	case lifecycle.ActionGoLive:
		claim := b.life.sinceClaim()
		b.life.spawn(func(ctx context.Context) { b.runGoLive(ctx, a.Epoch, claim) })
	case lifecycle.ActionAbortChannel:
		b.mu.Lock()
		r, c, running := b.recv, b.conn, b.recvDone != nil
		b.aborted = true
		b.mu.Unlock()
		switch {
		case r != nil && running:
			r.Abort(errors.New(a.Reason)) // an Error saying why, then Run returns
		case c != nil:
			c.Close()
		}
	case lifecycle.ActionTeardown:
		b.mu.Lock()
		wait := b.recvDone
		if !b.aborted {
			wait = nil
		}
		b.mu.Unlock()
		if wait == nil {
			b.stopOnce.Do(func() { go b.teardown() })
			return
		}
		// The primary must hear why before the teardown closes the connection.
		go func() {
			select {
			case <-wait:
			case <-time.After(2 * time.Second):
			}
			b.stopOnce.Do(func() { go b.teardown() })
		}()
	default:
		b.log.Error("lifecycle action a backup cannot carry out", "action", a.String())
	}
}

// runGoLive goes live and reports how it went. A go-live that fails leaves this
// backup registered, failed, with the reason in status: the VM does not vanish, and
// the received log, the replay's console and the snapshot stay in the backup's
// directory.
func (b *backup) runGoLive(ctx context.Context, epoch uint64, claim time.Duration) {
	b.log.Warn("this copy owns the VM now: going live", "epoch", epoch)
	t0 := time.Now()
	if err := b.goLive(ctx, epoch, claim); err != nil {
		b.log.Error("go-live failed", "epoch", epoch, "err", err)
		if rerr := b.a.register(b.spec.Name, b); rerr != nil {
			b.log.Error("cannot show the failed backup in status", "err", rerr)
		}
		_ = b.life.step(lifecycle.GoLiveFailed(err))
		return
	}
	// The live VM's own figure (QEMU's park, save and start), as status shows it.
	took := time.Since(t0)
	if v, ok := b.a.lookup(b.spec.Name); ok {
		if st := v.status(); st.FailoverGoLiveMS > 0 {
			took = time.Duration(st.FailoverGoLiveMS * float64(time.Millisecond))
		}
	}
	b.a.record(journal.Event{Kind: journal.KindGoLive, VM: b.spec.Name, Role: "backup", Epoch: epoch, DurationMS: ms(took),
		Detail: fmt.Sprintf("live from the replay under epoch %d", epoch)})
	_ = b.life.step(lifecycle.GoLiveDone())
}

// goLiveFromReplay turns this backup into the live VM from the log it holds.
func (b *backup) goLiveFromReplay(ctx context.Context, epoch uint64, claim time.Duration) error {
	// A replaying QEMU still starting is the VM now: let its start end first.
	b.awaitReplayStart(ctx)
	// Stop polling: GoLive polls the replay itself while it parks, and kills it.
	b.cancel()
	b.wg.Wait()
	held := b.recv.Held()
	// Replay exactly to the last safe cut point of what we hold: it covers every
	// frame the primary can have released (their stamps are at most the ack, and a
	// stamp never falls inside the group safeCut backs off over).
	cut := b.cutPoints.newest()
	inPlace := b.a.engine.InPlaceGoLive
	b.log.Warn("going live", "epoch", epoch, "log_held", held, "cut", cut.off, "in_place", inPlace)
	launch := func(ctx context.Context, rec qemu.Config, opts []qemu.Opt) (*qemu.Machine, error) {
		gl := qemu.GoLiveConfig{
			Replay: b.m, Feed: b.feed, LogPath: b.logFile.Name(), AckedOffset: cut.off,
			// The cut's instruction count is known: GoLive need not scan the log
			// from its start for it (tens to hundreds of ms for a booted guest), and
			// must not: the prefix the replay was fed may have been freed (bounded
			// logs; the feed never passes the newest cut point).
			Resume: replay.Mark{Offset: cut.off, Icount: cut.icount},
			Record: rec, Tag: "ftvmd-live", Logger: b.log, PendingBlocks: b.pendingBlocks,
			InPlace: inPlace,
		}
		m, rep, err := qemu.GoLive(ctx, gl, opts...)
		if err != nil {
			return nil, err
		}
		if rep.InPlace {
			// The replaying QEMU is the live VM now: the backup's teardown must
			// not kill it or take its tap away.
			b.handedOff.Store(true)
			b.log.Warn("live in place", "cut", rep.CutOffset, "icount", rep.TargetIcount, "park_ms", rep.Park.Milliseconds(),
				"switch_ms", rep.Switch.Milliseconds(), "switch_tries", rep.SwitchTries, "total_ms", rep.Total.Milliseconds())
			return m, nil
		}
		b.log.Warn("live", "cut", rep.CutOffset, "icount", rep.TargetIcount, "park_ms", rep.Park.Milliseconds(),
			"save_ms", rep.Save.Milliseconds(), "start_ms", rep.Start.Milliseconds(), "total_ms", rep.Total.Milliseconds())
		return m, nil
	}
	// The VM's disk leaves the backup's run directory, which the next protection of
	// this VM with this host as its backup empties, for a durable place named by the
	// epoch: the live VM's acknowledged writes must outlive that.
	liveDisk := b.diskPath
	if liveDisk != "" {
		dst := liveDiskName(b.a.cfg.StateDir, b.spec.Name, epoch)
		if err := moveLiveDisk(liveDisk, dst); err != nil {
			b.log.Error("go-live: the live disk stays in the backup's run directory; copy it elsewhere before this host backs up this VM again", "disk", liveDisk, "err", err)
		} else {
			b.log.Info("go-live: live disk moved", "from", liveDisk, "to", dst)
			liveDisk = dst
		}
	}
	live := &liveStart{epoch: epoch, dataPath: b.dataPath, disk: liveDisk, claim: claim, launch: launch, icount: cut.icount,
		lostAt: b.lostAt(claim), reprotect: b.returnAddr}
	if inPlace {
		// The live VM keeps the replay's NIC: its sockets (the relay binds the
		// agent's in place of the backup's drain) or its tap (put on the bridge).
		// It keeps writing the disk through its open descriptor, wherever the
		// file was moved.
		nic := *b.m.Config().NIC
		// Its capture FIFO closes with this backup (QEMU then stops dumping).
		nic.TxDump = ""
		live.inPlace = &inPlaceLive{nic: &nic, console: b.m.Config().ConsoleLog}
	}
	b.a.unregister(b.spec.Name, b)
	gctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	return b.a.startPrimary(gctx, b.spec, "", live)
}

// replayStartGrace bounds how long going live waits for a replaying QEMU that is
// still starting.
var replayStartGrace = 30 * time.Second

// awaitReplayStart waits, at most replayStartGrace, until the replaying QEMU's
// start has ended. Going live cancels this backup's context, which is also its
// QEMU's start's: a start cancelled before QMP answers fails, and a failed start
// kills QEMU, the only copy of the VM once its primary is lost. A replay from a
// running VM's snapshot answers QMP only once it has loaded the snapshot (seconds
// for a large VM state on a loaded host), from the log this backup holds already.
func (b *backup) awaitReplayStart(ctx context.Context) {
	b.mu.Lock()
	done := b.qemuStartDone
	b.mu.Unlock()
	if done == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	t0 := time.Now()
	b.log.Warn("going live while the replaying qemu is still starting: waiting for it", "grace", replayStartGrace)
	t := time.NewTimer(replayStartGrace)
	defer t.Stop()
	select {
	case <-done:
		b.log.Info("the replaying qemu's start ended", "waited", time.Since(t0).Round(time.Millisecond))
	case <-t.C:
		b.log.Error("the replaying qemu did not start in time: going live without it", "waited", replayStartGrace)
	case <-ctx.Done():
	}
}

// lostAt is when this backup lost its primary: its claim started claim ago (now
// if it went live on a planned failover's claim).
func (b *backup) lostAt(claim time.Duration) time.Time {
	return time.Now().Add(-claim)
}

func (b *backup) pollReplay(ctx context.Context) {
	t := time.NewTimer(feedCheckEvery)
	defer t.Stop()
	watch := qemu.NewFeedWatch(b.m.PID(), b.feed.Path())
	defer watch.Close()
	// The QMP query runs in its own goroutine: a replay that runs out of log while a
	// query is in flight answers it only when more log arrives, and meanwhile the
	// FIFO check below keeps reporting.
	type answer struct {
		icount uint64
		err    error
	}
	answers := make(chan answer, 1)
	inFlight := false
	defer func() {
		if inFlight {
			<-answers // ctx is done: the query returns
		}
	}()
	var replayed, atLastQuery uint64
	var nextQuery time.Time
	stall := newStallDetector(b.a.cfg.StallAfter)
	position := int64(replay.HeaderSize) // how far into the log the replay has got, at least
	report := func(v uint64) {
		if v <= replayed {
			return // a late answer never moves progress back
		}
		replayed = v
		if off, ok := b.positions.at(v); ok {
			position = off
		}
		b.recv.SetReplayed(v)
		b.mu.Lock()
		b.replayed = v
		b.mu.Unlock()
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.m.Exited():
			_ = b.life.step(lifecycle.QEMUExited(b.m.ExitErr()))
			return
		case a := <-answers:
			inFlight = false
			if a.err == nil {
				report(a.icount)
				nextQuery = time.Now().Add(replayPollInterval(a.icount, atLastQuery, b.recv.Stats(), time.Now()))
				atLastQuery = a.icount
			}
			continue
		case <-t.C:
		}
		t.Reset(feedCheckEvery)
		if v, ok := b.replayedFromFeed(watch); ok {
			report(v)
		} else if !inFlight && !time.Now().Before(nextQuery) {
			inFlight = true
			go func() {
				qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				info, err := b.m.QueryReplay(qctx)
				answers <- answer{info.Icount, err}
			}()
		}
		// Sampled on the clock, not on answers: a stuck replay may answer nothing.
		b.watchStall(stall, replaySample{
			At: time.Now(), Icount: replayed, LogIcount: b.cutPoints.newest().icount,
			Position: position, Fed: b.feed.FedOffset(), Held: b.recv.Held(), Feed: b.feed.State(),
		})
	}
}

// watchStall feeds one sample to the stall detector and reports what it finds: a
// WARN when the replay stalls, an INFO when it moves again, and the state to status
// and (in acks) to the primary. Reporting is all it does: what to do about a stalled
// backup is not decided here.
func (b *backup) watchStall(d *stallDetector, s replaySample) {
	change := d.observe(s)
	st := d.state()
	b.mu.Lock()
	b.stall = st
	b.mu.Unlock()
	rs := logging.ReplayStall{Episodes: st.Episodes}
	if st.Stalled {
		rs.For, rs.AtIcount, rs.Beyond = st.For, st.AtIcount, st.Beyond()
	}
	b.recv.SetStall(rs)
	if limit := b.a.cfg.StallStepDown; limit > 0 && st.Stalled && st.For >= limit && s.Icount > 0 && !b.stallDown {
		// A replay that has reported no count yet (a snapshot still loading) is
		// reported stalled, but not stepped down for it: it has not begun.
		b.stallDown = true
		b.stallStepDown(st, s, limit)
	}
	switch change {
	case stallEntered:
		_ = b.life.step(lifecycle.StallEntered())
		b.log.Warn("replay stalled", "icount", st.AtIcount, "log_icount", s.LogIcount,
			"position", st.Position, "fed", st.Fed, "held", st.Held, "held_beyond", st.Beyond(),
			"for", st.For.Round(time.Millisecond), "stalls", st.Episodes, "waiting", st.Waiting,
			"feed_up_to", s.Feed.UpTo, "fifo_unread", s.Feed.Unread)
		b.a.record(journal.Event{Time: s.At, Kind: journal.KindReplayStall, VM: b.spec.Name, Role: "backup", Peer: b.peer,
			Detail: fmt.Sprintf("replay stalled at icount %d with %d log bytes beyond it (stall %d)", st.AtIcount, st.Beyond(), st.Episodes)})
	case stallCleared:
		_ = b.life.step(lifecycle.StallCleared())
		b.log.Info("replay progressing again", "icount", s.Icount, "stalled_at", st.AtIcount,
			"stalled_for", st.For.Round(time.Millisecond), "stalls", st.Episodes)
		b.a.record(journal.Event{Time: s.At, Kind: journal.KindReplayMoving, VM: b.spec.Name, Role: "backup", Peer: b.peer,
			DurationMS: ms(st.For), Detail: fmt.Sprintf("replay moving again at icount %d (stall %d)", s.Icount, st.Episodes)})
	}
}

// stallStepDown: the replay has stayed stalled past limit (--stall-step-down): the
// divergence sentinel steps the backup down, saying where the replay stopped, and
// the primary protects the VM again from a fresh start.
func (b *backup) stallStepDown(st stallState, s replaySample, limit time.Duration) {
	what := fmt.Sprintf("replay stalled for %s (step-down threshold %s) at icount %d, log offset %d; fed %d, held %d (%d bytes beyond it); waiting: %s",
		st.For.Round(100*time.Millisecond), limit, st.AtIcount, st.Position, st.Fed, st.Held, st.Beyond(), st.Waiting)
	b.log.Warn("replay stalled past the step-down threshold: stepping down", "icount", st.AtIcount, "log_offset", st.Position,
		"fed", st.Fed, "held", st.Held, "for", st.For.Round(time.Millisecond), "threshold", limit, "waiting", st.Waiting,
		"fifo_unread", s.Feed.Unread)
	b.sentinelStepDown(what, st.AtIcount, st.Position)
}

// pendingBlocks is GoLiveConfig.PendingBlocks for this backup's log.
func (b *backup) pendingBlocks(cut int64) []uint64 {
	if b.spec.Disk == "" {
		return nil
	}
	ids, ok := b.blocks.pendingAt(cut)
	if !ok {
		b.log.Warn("go-live: cut before remembered block completions; none appended", "cut", cut)
		return nil
	}
	return ids
}

// replayedFromFeed answers "how far has the replay got" without QMP when it can: a
// replay blocked reading its FIFO has executed everything fed (see qemu.FeedWatch).
//
// The FIFO must also hold no unread bytes: a QEMU stopped (SIGSTOP, a frozen host)
// while it sat in read(2) still shows that syscall, though the bytes fed since are
// waiting in the pipe, unexecuted.
// The fed offset is read on both sides of the check and must not move: bytes written
// just before the check may not have woken QEMU yet. What is left is a write that
// lands while QEMU is still being scheduled: a momentary overestimate of well under
// a millisecond of log, corrected by the next check, and only the lag figures and
// the throttle read it (acks of held log, which release output, do not).
func (b *backup) replayedFromFeed(w *qemu.FeedWatch) (uint64, bool) {
	before := b.feed.FedOffset()
	drained, err := w.Drained()
	if err != nil || !drained || b.feed.FedOffset() != before {
		return 0, false
	}
	if n, ok := b.feed.Unread(); !ok || n > 0 {
		return 0, false
	}
	return b.cutPoints.icountAt(before)
}

// emittedFrames is how many frames the replaying QEMU sent: counted by the socket
// reader on the relay path, by the tap's receive counter on the tap path.
func (b *backup) emittedFrames() uint64 {
	if b.netTap == "" {
		return b.emitted.Load()
	}
	n, err := netbuf.TapRxFrames(b.netTap)
	if err != nil {
		return b.emitted.Load()
	}
	b.emitted.Store(n)
	if n > 0 && !b.emitSeen.Swap(true) {
		b.log.Error("the replaying QEMU emitted a network frame; it must not", "frames", n)
	}
	return n
}

// testDiverge makes the sentinel see one byte of the replay's console flipped
// (OpTestDiverge): a divergence, as if the replay had written something else.
func (b *backup) testDiverge() {
	b.flipConsole.Store(true)
	b.log.Warn("test knob: the next console bytes the sentinel reads will differ by one bit")
}

func (b *backup) setAckDelay(d time.Duration) error {
	b.mu.Lock()
	r := b.recv
	b.mu.Unlock()
	if r == nil {
		return fmt.Errorf("backup %s is not receiving yet", b.spec.Name)
	}
	r.SetAckDelay(d)
	b.log.Warn("test knob: ack delay set", "delay", d)
	return nil
}

// stop ends the backup and waits until it has, or until ctx ends (see waitStopped).
func (b *backup) stop(ctx context.Context) error {
	_ = b.life.step(lifecycle.Stop(""))
	b.stopOnce.Do(func() { go b.teardown() }) // the lifecycle asked for it already; in case it was past asking
	return waitStopped(ctx, b.finished, b.log, b.spec.Name)
}

// shutdown ends the backup because the agent is going away: it stops (the
// lifecycle's EventShutdown is a stop for a backup); its primary carries on
// unprotected.
func (b *backup) shutdown(ctx context.Context) error {
	_ = b.life.step(lifecycle.Shutdown("agent shutting down"))
	return b.stop(ctx)
}

// teardown runs once, from stop.
func (b *backup) teardown() {
	b.mu.Lock()
	cancel, conn := b.cancel, b.conn
	b.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if conn != nil {
		conn.Close()
	}
	b.wg.Wait()
	b.life.close()
	b.cleanups.run(b.log)
	_ = b.life.step(lifecycle.TeardownDone())
	close(b.finished)
	b.log.Info("backup stopped")
}

func (b *backup) done() <-chan struct{} { return b.finished }

func (b *backup) status() control.VMStatus {
	ls := b.life.state()
	b.mu.Lock()
	defer b.mu.Unlock()
	st := control.VMStatus{
		Name: b.spec.Name, Role: "backup", State: ls.State.String(), Peer: b.peer, Detail: ls.Detail, Epoch: ls.Epoch,
		StartedAt: b.started, Engine: b.a.engine.Name, EngineWarning: b.a.engine.Warning(), Icount: b.replayed, EmittedFrames: b.emittedFrames(),
		DataPath: string(b.dataPath), ConsoleChecked: b.consoleChecked, Divergence: b.divergence, StepDownEvidence: b.evidence,
		NICFrames: b.nic.Replayed, NICChecked: b.nic.Matched, NICSkipped: b.nic.Skipped, NICDropped: b.nic.Dropped,
	}
	if b.m != nil {
		st.PID = b.m.PID()
	}
	b.health.fill(&st, time.Now())
	if b.recv != nil {
		rs := b.recv.Stats()
		st.LogWritten, st.LogAcked = rs.Held, rs.Acked
	}
	if b.feed != nil {
		st.LogReplayed = b.feed.FedOffset()
	}
	if b.dir != "" {
		st.LogOnDisk = onDisk(filepath.Join(b.dir, "log.rr"))
	}
	fillStallStatus(&st, b.stall)
	b.logs.fill(&st)
	return st
}

// logPlan says what the backup's copy of the log must keep: what its replay has not
// been fed yet (the feed reads the file from its fed offset on, and a go-live feeds
// from there to a cut at or before the newest cut point, which the feed never
// passes), and, with a retention, the whole log for as long as it is within it
// (logspace.Retention: a part of the log without the state it starts from replays
// nothing). A copy in any other state (failed, stopping, going live) keeps its log
// as it is.
func (b *backup) logPlan() logPlan {
	state := b.life.state().State
	b.mu.Lock()
	recv := b.recv
	b.mu.Unlock()
	if (state != lifecycle.Replaying && state != lifecycle.Claiming) || recv == nil {
		return logPlan{hold: true, keeps: fmt.Sprintf("all (the backup is %s)", state)}
	}
	return backupLogPlan(b.feed.FedOffset(), recv.Held(), time.Since(b.started), b.a.cfg.LogRetention)
}

// backupLogPlan is a replaying backup's plan: its feed has given the replay the log
// up to fed, it holds held bytes of log that began age ago.
func backupLogPlan(fed, held int64, age time.Duration, ret logspace.Retention) logPlan {
	need := logspace.Keep{Needed: fed}
	const what = "until it is fed to the replay"
	switch {
	case ret.IsZero():
		return logPlan{keep: need, keeps: what}
	case ret.Holds(age, held):
		need.All = true
		return logPlan{keep: need, keeps: fmt.Sprintf("all, from the boot it replays from: within the retention (%s)", ret)}
	}
	return logPlan{keep: need, keeps: fmt.Sprintf("%s: the log since the boot passed the retention (%s), and a part of it replays nothing without the state it starts from", what, ret)}
}

// errEngineMismatch: the primary records on another QEMU build than this host
// would replay on.
var errEngineMismatch = errors.New("QEMU engine mismatch")

// checkEngine refuses to replay a log recorded by another QEMU build: the log's
// version word does not change between builds whose event order differs, so the
// replay would diverge, silently, at the first event that differs. An empty
// primary engine (an agent from before engines were named) is accepted.
func checkEngine(mine, primary string) error {
	if primary == "" || primary == mine {
		return nil
	}
	return fmt.Errorf("%w: the primary records on %q, this host replays on %q; a log replays only on the build that recorded it: install the same build on both hosts (docs/engine.md)", errEngineMismatch, primary, mine)
}

// usableEngine refuses a backup when this host has no usable QEMU, or another
// build than the primary's.
func (a *Agent) usableEngine(primary string) error {
	if a.engineErr != nil {
		return fmt.Errorf("this host cannot replay: %w", a.engineErr)
	}
	return checkEngine(a.engine.Name, primary)
}

// fillStallStatus shows the backup's own stall state.
func fillStallStatus(st *control.VMStatus, s stallState) {
	st.ReplayStallReported, st.ReplayStalls = true, s.Episodes
	if s.Stalled {
		st.ReplayStalled, st.ReplayStalledSec = true, s.For.Seconds()
		st.ReplayStalledAtIcount, st.ReplayStalledLogBeyond = s.AtIcount, s.Beyond()
		st.ReplayStalledWaiting = s.Waiting
	}
}
