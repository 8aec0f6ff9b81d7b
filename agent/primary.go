package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/ftvmd/ftvmd/arbiter"
	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/journal"
	"github.com/ftvmd/ftvmd/lifecycle"
	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/logspace"
	"github.com/ftvmd/ftvmd/netbuf"
	"github.com/ftvmd/ftvmd/netbuf/nfq"
	"github.com/ftvmd/ftvmd/nicdump"
	"github.com/ftvmd/ftvmd/outputrule"
	"github.com/ftvmd/ftvmd/qemu"
	"github.com/ftvmd/ftvmd/replay"
	"github.com/ftvmd/ftvmd/rrcheck"
	"github.com/ftvmd/ftvmd/sentinel"
	"github.com/ftvmd/ftvmd/throttle"
	"github.com/ftvmd/ftvmd/vmspec"
)

// peerHello opens a VM's log channel: the primary asks the peer to run a backup.
type peerHello struct {
	Op          string      `json:"op"` // "backup"
	From        string      `json:"from"`
	Spec        vmspec.Spec `json:"spec"`
	StartOffset int64       `json:"start_offset"`
	// Epoch is the shared-storage epoch the primary claimed for this protection
	// (0 without shared storage: no automatic failover).
	Epoch uint64 `json:"epoch"`
	// Disk describes the VM's image; the primary streams it right after the reply.
	Disk *disk.ImageInfo `json:"disk,omitempty"`
	// Engine names the QEMU build that records (qemu.Engine.Name): a log replays
	// only on the build that recorded it, so the backup refuses another.
	Engine string `json:"engine,omitempty"`
	// StallReports: this primary reads acks carrying the backup's replay stall
	// report (logging.ReceiverConfig.StallReports). An older primary leaves it out
	// and gets the plain acks it understands; an older backup ignores it.
	StallReports bool `json:"stall_reports,omitempty"`
	// DataPath is the primary's NIC type: the replay must use the same (a log
	// recorded on a tap does not replay on a datagram NIC). Empty means relay.
	DataPath DataPath `json:"data_path,omitempty"`
	// NICHash names the frame checksum (package sentinel) the primary offers for
	// its NIC digests; the backup's reply says which one both use (an older
	// backup ignores it and both use sentinel.HashCRC64).
	NICHash string `json:"nic_hash,omitempty"`
	// Snapshot: the backup starts from a snapshot of the running VM (protect.go),
	// at StartOffset of the log, and protects it only once told (MsgSynced).
	Snapshot *snapshotStart `json:"snapshot,omitempty"`
	// ReturnAddr is the primary's agent address as seen from the backup: after a
	// failover the live copy protects itself again with it.
	ReturnAddr string `json:"return_addr,omitempty"`
}

type peerReply struct {
	OK    bool   `json:"ok"`
	Error string `json:"error,omitempty"`
	Host  string `json:"host,omitempty"` // the backup's host name (its epoch claims' owner)
	// ConsoleMarks: this backup reads console marks (logging.MsgConsole), the
	// divergence sentinel's input. An older backup leaves it out and gets none.
	ConsoleMarks bool `json:"console_marks,omitempty"`
	// Synced: this backup can start from a running VM's snapshot and reads
	// MsgSynced.
	Synced bool `json:"synced,omitempty"`
	// NICDigests: this backup reads the digests of the frames the primary's guest
	// transmits (logging.MsgNIC), the sentinel's NIC half; the primary then has its
	// QEMU capture them. An older backup leaves it out and gets none.
	NICDigests bool `json:"nic_digests,omitempty"`
	// NICHash is the frame checksum both ends compute for them: the hello's
	// NICHash when this backup knows it, else empty (sentinel.HashCRC64, what an
	// older backup computes).
	NICHash string `json:"nic_hash,omitempty"`
}

// primary runs the recording QEMU, streams its log and holds its output.
type primary struct {
	a       *Agent
	spec    vmspec.Spec
	log     *slog.Logger
	dir     string
	peer    string
	started time.Time

	m        *qemu.Machine
	guest    guestControl // m, as the lifecycle's actions use it
	rr       *os.File
	out      outputPath // holds the guest's frames under the output rule
	pace     inputPacer // paces the network's frames to QEMU; nil when nothing does
	health   qemuHealth // whether QEMU answers the liveness probe (watchVMQEMU)
	dataPath DataPath
	cg       *throttle.Cgroup
	tap      string
	sender   *logging.Sender // nil when unprotected
	conn     net.Conn
	epoch    uint64 // the epoch claimed at start (the lifecycle's is the current one)
	live     *liveStart
	// life decides the primary's lifecycle (package lifecycle); the primary carries
	// out what it asks and feeds it what happens.
	life *driver
	own  ownership // what the owner check saw (run, protect)
	// keepDiskCopy keeps a copy of the disk as it was before recording, which
	// `ftvmd rr check` replays on; keepLog keeps the whole rr log (and the console
	// unrotated) for it.
	keepDiskCopy bool
	keepLog      bool
	// logs bounds the disk space of the rr and console logs (set in startStreams,
	// under mu).
	logs *logKeeper
	// stopSender ends the log channel with a Bye; backupHost is the backup's name.
	stopSender context.CancelFunc
	senderDone <-chan struct{} // closed when the sender's Run has returned
	backupHost string
	// consoleMarks: the backup reads console marks (peerReply.ConsoleMarks).
	consoleMarks bool
	// nicDigests: the backup reads NIC digests (peerReply.NICDigests); nicCap is
	// the capture of the guest's transmitted frames they are computed from.
	nicDigests bool
	nicCap     *nicdump.Capture
	nicHash    func([]byte) uint64 // the checksum the backup compares (peerReply.NICHash)

	cancel   context.CancelFunc
	vmCtx    context.Context // the VM's goroutines' context (set in startStreams, under mu)
	finished chan struct{}
	tailWake chan struct{} // cap 1: a held frame waits for the log
	wg       sync.WaitGroup

	mu sync.Mutex
	// act applies the throttle's quota and the input pacing off the ack loop
	// (set in startStreams; nil before: nothing to apply then).
	act         *actuator
	drainGen    uint64 // a planned failover's drain wait stops when this moves
	aborted     bool   // the backup was told this primary failed (AbortChannel)
	written     int64
	boundary    int64
	safePoint   int64  // the newest safe cut point of the log (see safeCut): acks stop there
	safeIcount  uint64 // the instruction count at safePoint
	icount      uint64
	lagMS       float64
	lagBytes    int64
	replayed    int64
	bkIcount    uint64
	bkStall     logging.ReplayStall // the backup's stall report, from the latest ack
	bkStallRep  bool                // the backup sends stall reports
	lags        *lagTracker
	bw          rateMeter
	ipsP        rateMeter // primary's logged instructions per second
	ipsB        rateMeter // backup's replayed instructions per second
	peakRate    float64   // the fastest the backup has replayed (see workLagFor)
	workLagMS   float64
	lagHist     lagHist // age lag samples, one per ack
	workHist    lagHist // work lag samples, likewise
	throttleEp  episode // the quota below 1
	paceEp      episode // the network's frames paced
	ctrl        *throttle.Controller
	quota       float64
	lastObserve time.Time
	copied      disk.Progress
	claimDur    time.Duration
	goLiveDur   time.Duration
	cleanups    cleanupStack
	stopOnce    sync.Once
	// The epoch check (watchEpoch): its period and deadline (0: the defaults), and
	// what its last read said when it could not decide.
	epochEvery, epochTimeout time.Duration
	epochCheck               string
	// Protecting the running VM (protect.go), under mu: its status, and the
	// cancel of the sync in progress.
	sync       *control.SyncStatus
	syncCancel context.CancelFunc
	syncFirst  chan error // the operator's protect waits on it for the snapshot (nil: nobody waits)
	// faultAt: when this copy lost its peer in the last failover it survived
	// (the backup's channel ended; zero if none); aloneAt: when it ran alone
	// after it. The window of vulnerability of a re-protection counts from them.
	faultAt, aloneAt time.Time
}

// liveStart makes startPrimary continue a VM from a backup's replay (go-live) instead
// of booting it: launch replaces the plain QEMU start.
type liveStart struct {
	epoch    uint64
	dataPath DataPath      // the replay's NIC type, which the live VM keeps
	disk     string        // the backup's copy of the image, which the live VM keeps using
	claim    time.Duration // how long the epoch claim took
	launch   func(ctx context.Context, rec qemu.Config, opts []qemu.Opt) (*qemu.Machine, error)
	// inPlace is set when launch makes the replaying QEMU itself the live VM
	// (qemu.Engine.InPlaceGoLive) rather than starting a new one.
	inPlace *inPlaceLive
	// icount is the instruction count where the live VM starts its new log (the
	// cut's): the primary counts its log's instructions from there, so that its
	// counts, like a backup's replayed count, are counted from boot.
	icount uint64
	// lostAt: when the backup lost its primary (its claim started); reprotect:
	// the lost primary's agent address, to protect the VM again with once it
	// answers ("" for none).
	lostAt    time.Time
	reprotect string
}

// inPlaceLive is what a VM that goes live in place keeps of the backup's replay.
type inPlaceLive struct {
	// nic is the replay's NIC. On the relay path the relay binds its agent
	// socket (replacing the backup's, which only drained) and sends to its QEMU
	// socket; on the tap path its tap goes on the bridge.
	nic *qemu.NIC
	// console is the replay's console log, which the guest keeps writing.
	console string
}

func (a *Agent) startPrimary(ctx context.Context, spec vmspec.Spec, backup string, live *liveStart) error {
	return a.startPrimaryKeeping(ctx, spec, backup, live, ownership{}, keepOpts{})
}

// keepOpts are what a primary keeps for `ftvmd rr check`: a copy of the disk as it
// is before recording, and the whole rr log.
type keepOpts struct{ diskCopy, log bool }

// startOwned starts a VM on an operator's request (run, protect) after the owner
// check (checkOwner) saw own, keeping what keep says for `ftvmd rr check`.
func (a *Agent) startOwned(ctx context.Context, spec vmspec.Spec, backup string, own ownership, keep keepOpts) error {
	return a.startPrimaryKeeping(ctx, spec, backup, nil, own, keep)
}

func (a *Agent) startPrimaryKeeping(ctx context.Context, spec vmspec.Spec, backup string, live *liveStart, own ownership, keep keepOpts) (err error) {
	p := &primary{
		a: a, spec: spec, peer: backup, started: time.Now(),
		log:      a.log.With("vm", spec.Name, "role", "primary"),
		dir:      a.vmDir(spec.Name, "primary"),
		finished: make(chan struct{}),
		tailWake: make(chan struct{}, 1),
		lags:     newLagTracker(1 << 16),
		bw:       rateMeter{window: 5 * time.Second},
		ipsP:     rateMeter{window: time.Second},
		ipsB:     rateMeter{window: time.Second},
		ctrl:     throttle.NewController(time.Duration(spec.LagBoundMS) * time.Millisecond),
		quota:    1,
		live:     live,
		own:      own,
		dataPath: a.cfg.DataPath,

		keepDiskCopy: keep.diskCopy,
		keepLog:      keep.log,
	}
	if live != nil {
		p.epoch, p.dataPath = live.epoch, live.dataPath
		p.faultAt = live.lostAt
	}
	if err := p.newLife(); err != nil {
		return err
	}
	if err := a.register(spec.Name, p); err != nil {
		return err
	}
	defer func() {
		if err != nil {
			if p.conn != nil && p.sender == nil {
				// The backup is waiting for the log: a Bye makes it stop, where a
				// closed connection would read as a lost primary and make it claim
				// the next epoch and go live from a log that never started.
				_ = logging.WriteBye(p.conn, "primary failed to start: "+err.Error())
			}
			_ = p.stop(context.Background())
			a.unregister(spec.Name, p)
		}
	}()
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"prepare-dir", p.prepareDir},
		{"check-log-space", p.checkLogSpace},
		{"claim-epoch", p.claimUnprotected},
		{"connect-backup", p.connectBackup},
		{"create-tap", p.createTap},
		{"create-cgroup", p.createCgroup},
		{"start-qemu", p.startQEMU},
		{"open-log", p.openLog},
		{"start-streams", p.startStreams},
		{"adopt-in-place", p.adoptInPlace},
	}
	for _, s := range steps {
		p.log.Debug("start step", "step", s.name)
		if err := s.fn(ctx); err != nil {
			return fmt.Errorf("start %s: %s: %w", spec.Name, s.name, err)
		}
	}
	p.log.Info("vm started", "backup", backup, "pid", p.m.PID())
	p.mu.Lock()
	vmCtx := p.vmCtx
	p.mu.Unlock()
	p.go1(func() { p.a.watchVMQEMU(vmCtx, p.log, spec.Name, "primary", p.bkHost, p.m, &p.health, p.life.step) })
	if backup != "" {
		p.a.record(journal.Event{Kind: journal.KindProtect, VM: spec.Name, Role: "primary", Peer: p.backupHost, Epoch: p.epoch,
			Detail: "protected: backup on " + backup})
	}
	return nil
}

// recordClaim journals an epoch claim this primary made: epoch is the one won, err
// the claim's error.
func (p *primary) recordClaim(epoch uint64, err error, took time.Duration, reason string) {
	e := journal.Event{Kind: journal.KindClaim, VM: p.spec.Name, Role: "primary", Epoch: epoch, Result: journal.ClaimWon,
		DurationMS: ms(took), Detail: reason}
	switch {
	case errors.Is(err, disk.ErrLost) || errors.Is(err, errOwnedElsewhere):
		e.Result = journal.ClaimLost
		e.Detail = fmt.Sprintf("%s: %v", reason, err)
	case err != nil:
		e.Result = journal.ClaimFailed
		e.Detail = fmt.Sprintf("%s: %v", reason, err)
	}
	p.a.record(e)
}

func (p *primary) addCleanup(fn func() error) { p.cleanups.push(fn) }

func (p *primary) runCleanups() { p.cleanups.run(p.log) }

func (p *primary) prepareDir(context.Context) error {
	if err := os.RemoveAll(p.dir); err != nil {
		return err
	}
	return os.MkdirAll(p.dir, 0o700)
}

// checkLogSpace refuses to run or protect a VM whose logs may outgrow the free
// space. A go-live does not check: refusing it would lose the VM.
func (p *primary) checkLogSpace(context.Context) error {
	if p.live != nil {
		return nil
	}
	if err := checkLogSpace(p.dir, p.spec.MaxLogDisk); err != nil {
		return err
	}
	if need := p.a.logNeeds(); need > p.spec.MaxLogDisk {
		p.log.Warn("the VM's log disk limit is below what its logs keep by this agent's settings: it will be reached",
			"max_log_disk", p.spec.MaxLogDisk, "kept", need)
	}
	return nil
}

// claimUnprotected takes the VM's next epoch for `ftvmd run` (a protected start
// claims in connectBackup, a go-live has claimed already): the latest epoch then
// names the host that runs the VM, which the owner check of any other start reads,
// and a copy still live elsewhere halts when it sees it (watchEpoch). A forced run
// whose owner check could not read the store runs without an epoch.
func (p *primary) claimUnprotected(ctx context.Context) error {
	if p.peer != "" || p.live != nil || p.a.store == nil || (p.own.forced != "" && !p.own.known) {
		return nil
	}
	t0 := time.Now()
	e, err := claimOwn(ctx, p.a.store, p.spec.Name, p.a.cfg.Host, p.own, "run")
	p.recordClaim(e, err, time.Since(t0), "run")
	if err != nil {
		return err
	}
	p.epoch = e
	return nil
}

func (p *primary) connectBackup(ctx context.Context) error {
	if p.peer == "" {
		return nil
	}
	// The image first: one that cannot be protected (missing, not a standalone
	// qcow2) is refused before an epoch is claimed or the backup is contacted.
	var img *disk.ImageInfo
	if p.spec.Disk != "" {
		info, err := disk.Inspect(p.spec.Disk)
		if err != nil {
			return fmt.Errorf("vm disk: %w", err)
		}
		img = &info
	}
	if p.a.store != nil {
		t0 := time.Now()
		e, err := claimOwn(ctx, p.a.store, p.spec.Name, p.a.cfg.Host, p.own, "protect")
		p.recordClaim(e, err, time.Since(t0), "protect")
		if err != nil {
			return err
		}
		p.epoch = e
	}
	conn, err := p.dialBackup(ctx)
	if err != nil {
		return err
	}
	p.addCleanup(conn.Close)
	if err := logging.WriteHello(conn, peerHello{Op: "backup", From: p.a.cfg.Host, Spec: p.spec, StartOffset: replay.HeaderSize, Epoch: p.epoch, Disk: img, Engine: p.a.engine.Name, StallReports: true, DataPath: p.dataPath, ReturnAddr: p.a.returnAddr(conn), NICHash: sentinel.HashCRC32Pair}); err != nil {
		return fmt.Errorf("backup %s: %w", p.peer, err)
	}
	var reply peerReply
	if err := logging.ReadHelloReply(conn, &reply); err != nil {
		return fmt.Errorf("backup %s: %w", p.peer, err)
	}
	if !reply.OK {
		return fmt.Errorf("backup %s refused: %s", p.peer, reply.Error)
	}
	if err := checkPeer(conn, p.a.cfg.Host, reply.Host, "backup"); err != nil {
		err = fmt.Errorf("backup %s: %w", p.peer, err)
		// The backup accepted: end its channel with a Bye, or it takes our leaving
		// for a lost primary and claims the next epoch.
		_ = logging.WriteBye(conn, "refused by the primary: "+err.Error())
		return err
	}
	// Bound to the backup's certificate (checkPeer): a planned failover claims the
	// next epoch for this name.
	p.backupHost = reply.Host
	p.consoleMarks = reply.ConsoleMarks
	p.nicDigests = reply.NICDigests
	if h, ok := sentinel.HashFunc(reply.NICHash); ok {
		p.nicHash = h
	} else if p.nicDigests {
		// Not one we offered: digests the backup would misread are worse than none.
		p.log.Warn("divergence sentinel: the backup named an unknown frame checksum; no NIC digests", "nic_hash", reply.NICHash)
		p.nicDigests = false
	}
	if img != nil {
		// The image is quiet: QEMU starts only after the copy.
		p.log.Info("copying disk to backup", "image", p.spec.Disk, "bytes", img.Size)
		err := disk.SendImage(ctx, conn, p.spec.Disk, *img, disk.CopyConfig{Progress: p.copyProgress, Logger: p.log})
		if err != nil {
			return fmt.Errorf("copy disk to backup %s: %w", p.peer, err)
		}
		p.mu.Lock()
		resumed := p.copied.Resumed
		p.mu.Unlock()
		p.log.Info("disk copied", "bytes", img.Size, "resumed", resumed)
	}
	p.conn = conn
	return nil
}

// dialBackup opens an authenticated connection to the backup's agent, the dial and
// the TLS handshake bounded by the agent's dial timeout.
func (p *primary) dialBackup(ctx context.Context) (net.Conn, error) {
	return p.dialAgent(ctx, p.peer)
}

// dialAgent is dialBackup for the agent at addr.
func (p *primary) dialAgent(ctx context.Context, addr string) (net.Conn, error) {
	host, _, _ := net.SplitHostPort(addr)
	cfg, err := logging.ClientTLS(p.a.cfg.KeysDir, host)
	if err != nil {
		return nil, err
	}
	conn, err := logging.Dial(ctx, addr, cfg, p.a.cfg.DialTimeout)
	if err != nil {
		return nil, fmt.Errorf("backup host %s does not answer: %w", addr, err)
	}
	return conn, nil
}

func (p *primary) createTap(context.Context) error {
	// The spec's bridge (an imported libvirt domain's) over the agent's default: the
	// spec travels to the backup, so a go-live there joins the same bridge.
	bridge := p.spec.Bridge
	if bridge == "" {
		bridge = p.a.cfg.Bridge
	}
	if p.live != nil && p.live.inPlace != nil && p.live.inPlace.nic.TapName != "" {
		// The replay's own tap, on no bridge until now: the guest keeps its NIC.
		p.tap = p.live.inPlace.nic.TapName
		if err := netbuf.AttachTap(p.tap, bridge); err != nil {
			return err
		}
		p.addCleanup(func() error { return netbuf.DeleteTap(p.tap) })
		return nil
	}
	p.tap = tapName(p.spec.Name)
	// A tap left by an agent that was killed (a power loss, SIGKILL) would make
	// CreateTap fail, and with it a later go-live on this host: the name is this
	// VM's, and this agent runs the VM at most once (register).
	if err := netbuf.DeleteTap(p.tap); err != nil {
		return err
	}
	if _, err := netbuf.CreateTap(p.tap, bridge); err != nil {
		return err
	}
	p.addCleanup(func() error { return netbuf.DeleteTap(p.tap) })
	return nil
}

func (p *primary) createCgroup(context.Context) error {
	if p.a.cfg.CgroupRoot == "" {
		return nil
	}
	cg, err := newCgroupFor(p.a, p.spec.Name)
	if err != nil {
		return err
	}
	p.log.Debug("cgroup", "dirs", cg.Dirs())
	p.cg = cg
	p.addCleanup(cg.Remove)
	return nil
}

func (p *primary) qemuConfig(mode qemu.Mode, rrfile string) qemu.Config {
	return qemu.Config{
		Name: p.spec.Name, Binary: p.a.cfg.QEMU, MemoryMB: p.spec.MemoryMB,
		Kernel: p.spec.Kernel, Initrd: p.spec.Initrd, Append: p.spec.Append,
		Mode: mode, RRFile: rrfile, IcountShift: p.spec.Shift(),
		NIC:        nicFor(p.dataPath, p.spec.MAC, p.dir, p.tap),
		QMPSocket:  filepath.Join(p.dir, "qmp.sock"),
		ConsoleLog: filepath.Join(p.dir, "console.log"),
		// Protecting the VM while it runs saves a snapshot (protect.go).
		SnapshotDrive: filepath.Join(p.dir, "snapshot.qcow2"),
		LogStream:     p.a.engine.LogStream,
		FlushLib:      p.a.cfg.FlushLib,
		Dir:           p.dir,
		Disks:         disks(p.diskPath()),
	}
}

func disks(path string) []qemu.Disk {
	if path == "" {
		return nil
	}
	return []qemu.Disk{{Path: path}}
}

func (p *primary) startQEMU(ctx context.Context) error {
	cfg := p.qemuConfig(qemu.ModeRecord, filepath.Join(p.dir, "log.rr"))
	inPlace := p.live != nil && p.live.inPlace != nil
	if inPlace {
		// The replaying QEMU carries on with its NIC: the relay takes over the
		// sockets it sends to and receives from.
		cfg.NIC = p.live.inPlace.nic
	}
	// The output path must be ready before QEMU starts: the relay's socket must
	// exist before QEMU sends to it, and on the tap path no frame may reach the
	// bridge before the rules that hold it are in place.
	var err error
	switch p.dataPath {
	case DataPathTap:
		err = p.holdInKernel()
	default:
		err = p.startRelay(cfg)
	}
	if err != nil {
		return err
	}
	opts := []qemu.Opt{qemu.WithLogger(p.log)}
	if p.cg != nil {
		opts = append(opts, qemu.WithCgroup(p.cg.Add))
	}
	if p.live == nil {
		// A run from boot can be replayed offline (`ftvmd rr check`); one that
		// continues a backup's replay starts from a snapshot and cannot.
		if err := p.keepForCheck(cfg); err != nil {
			return err
		}
	}
	if p.nicDigests && p.live == nil {
		// After keepForCheck: an offline check replays without a capture.
		c, err := openNICCapture(p.dir, &p.cleanups)
		if err != nil {
			return err
		}
		p.nicCap = c
		cfg.NIC.TxDump = c.Path()
	}
	var m *qemu.Machine
	if p.live != nil {
		t0 := time.Now()
		m, err = p.live.launch(ctx, cfg, opts)
		if err != nil {
			return err
		}
		p.claimDur, p.goLiveDur = p.live.claim, time.Since(t0)
		// An in-place QEMU runs live from here: its adoption (adopt-in-place)
		// waits until the relay carries its frames (start-streams).
	} else {
		m, err = qemu.New(cfg, opts...)
		if err != nil {
			return err
		}
		if err := m.Start(ctx); err != nil {
			return err
		}
	}
	p.m, p.guest = m, m
	p.addCleanup(func() error {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return m.Stop(sctx, 3*time.Second)
	})
	return nil
}

// adoptInPlace takes over a QEMU that went live in place: it moves into this
// VM's cgroup (out of the backup's, which the backup then removes once this VM
// has started), and the VM's directory gets a link to the console log it keeps
// writing in the backup's. It is the last start step, after the relay runs:
// the guest runs live from the switch on, and moving a process between cgroups
// can take tens of milliseconds (the kernel waits for an RCU grace period),
// during which the guest's frames, the announcement first, would wait in the
// relay's socket and the client's would wait on the tap.
func (p *primary) adoptInPlace(context.Context) error {
	if p.live == nil || p.live.inPlace == nil {
		return nil
	}
	m := p.m
	t0 := time.Now()
	if p.cg != nil {
		if err := p.cg.Add(m.PID()); err != nil {
			// It runs on, unthrottled: nothing throttles an unprotected VM anyway.
			p.log.Warn("live in place: move qemu into the cgroup", "pid", m.PID(), "err", err)
		}
	}
	if c := p.live.inPlace.console; c != "" {
		if err := os.Symlink(c, filepath.Join(p.dir, "console.log")); err != nil {
			p.log.Warn("live in place: link the console log", "err", err)
		}
	}
	p.log.Debug("live in place: adopted", "pid", m.PID(), "took", time.Since(t0))
	return nil
}

// keepForCheck writes what an offline replay of this recording needs beside the
// log: the manifest (QEMU's exact args and config, the engine, the boot files'
// checksums) and, when asked, a copy of the disk as it is before QEMU touches it.
func (p *primary) keepForCheck(cfg qemu.Config) error {
	var copies []string
	if p.keepDiskCopy && len(cfg.Disks) > 0 {
		for i, d := range cfg.Disks {
			name := fmt.Sprintf("disk%d.prerecord.qcow2", i)
			t0 := time.Now()
			n, err := copyFile(d.Path, filepath.Join(p.dir, name))
			if err != nil {
				return fmt.Errorf("pre-record copy of the disk: %w", err)
			}
			p.log.Info("kept a pre-record copy of the disk", "image", d.Path, "copy", name, "bytes", n, "took", time.Since(t0).Round(time.Millisecond))
			copies = append(copies, name)
		}
	}
	m, err := rrcheck.NewManifest(cfg, p.a.engine.Name, copies)
	if err != nil {
		return err
	}
	return m.Write(p.dir)
}

// copyFile copies src to a new file dst and syncs it.
func copyFile(src, dst string) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(out, in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst)
		return 0, fmt.Errorf("copy %s: %w", src, err)
	}
	return n, nil
}

// startRelay puts the agent between QEMU's datagram NIC and the tap.
func (p *primary) startRelay(cfg qemu.Config) error {
	tapf, err := netbuf.OpenTap(p.tap)
	if err != nil {
		return err
	}
	p.addCleanup(tapf.Close)
	rule := outputrule.New(outputrule.Config{}, outputrule.Protected)
	if p.peer == "" {
		rule = outputrule.New(outputrule.Config{}, outputrule.Unprotected)
	}
	var pacer *throttle.Pacer
	if p.a.cfg.PaceQueueBytes > 0 {
		// Every frame from the network is logged: while the backup is behind,
		// the relay paces them, which a CPU quota cannot do. Also for a VM that
		// starts unprotected (a survivor after a failover, `ftvmd run`): it may
		// be protected while it runs, and the pacer only acts on the lag samples
		// a backup's acks bring.
		pacer, err = throttle.NewPacer(throttle.PacerConfig{
			Bound:      time.Duration(p.spec.LagBoundMS) * time.Millisecond,
			QueueBytes: p.a.cfg.PaceQueueBytes,
			// Not on a lag the network's frames are not behind: see the field.
			OnlyOverFloor: true,
		})
		if err != nil {
			return err
		}
	}
	relay, err := netbuf.NewRelay(netbuf.RelayConfig{
		AgentSock:      cfg.NIC.SocketPath,
		QEMUSock:       cfg.NIC.LocalPath,
		Tap:            tapf,
		Stamp:          p.stamp,
		Rule:           rule,
		Pacer:          pacer,
		Logger:         p.log,
		CheckInvariant: p.a.cfg.CheckInvariant,
	})
	if err != nil {
		return err
	}
	p.out = relay
	if pacer != nil {
		p.pace = relay
	}
	return nil
}

// holdInKernel makes the guest's frames wait in an NFQUEUE while the VM is
// protected. QEMU then writes its frames to the tap itself and reads the network's
// frames from it: the agent sees only the ids of held frames. Unprotected, the queue
// is bound but no rule feeds it, so the agent is not on the path at all; protecting
// the running VM installs the rules (Hold.Protect, at the offset output is held
// from) and losing the backup removes them again (the Hold's Bypass).
func (p *primary) holdInKernel() error {
	link, err := net.InterfaceByName(p.tap)
	if err != nil {
		return fmt.Errorf("tap %s: %w", p.tap, err)
	}
	// Queue numbers are per network namespace, like interface indexes.
	queue := uint16(link.Index)
	protected := p.peer != ""
	if !protected {
		// Tables a killed agent left for this tap's name (a primary or a
		// re-protected survivor that ran here) send its frames to a queue nobody
		// reads: every IP frame would be dropped. A protected VM's install
		// replaces them.
		if err := netbuf.RemoveQueueRules(p.tap); err != nil {
			p.log.Warn("stale hold tables of the tap may drop its frames", "tap", p.tap, "err", err)
		}
	}
	conn, err := nfq.Open(queue, nfq.Config{})
	if err != nil {
		if protected {
			return err
		}
		// It ran like this before the tap path could protect a running VM: it
		// still runs, unprotected for good.
		why := fmt.Sprintf("tap %s: bind queue %d: %v", p.tap, queue, err)
		p.log.Warn("guest output cannot be held: the vm cannot be protected while it runs", "tap", p.tap, "queue", queue, "err", err)
		p.out = unheldPath{why: why}
		return nil
	}
	p.addCleanup(conn.Close)
	rules := &tapRules{tap: p.tap, queue: queue}
	p.addCleanup(rules.remove) // before the queue closes: a queued frame always has a reader
	mode := outputrule.Unprotected
	if protected {
		if err := rules.engage(); err != nil {
			return err
		}
		mode = outputrule.Protected
	}
	hold, err := netbuf.NewHold(netbuf.HoldConfig{
		Queue:          conn,
		Stamp:          p.stamp,
		Rule:           outputrule.New(netbuf.HoldRuleConfig(nfq.DefaultMaxLen), mode),
		Bypass:         rules.remove,
		Engage:         rules.engage,
		Bypassed:       !protected,
		CheckInvariant: p.a.cfg.CheckInvariant,
		Logger:         p.log,
	})
	if err != nil {
		return err
	}
	p.out = hold
	p.log.Info("guest output held in the kernel", "tap", p.tap, "queue", queue, "mode", mode)
	// A pacing qdisc a killed agent left on this tap's name would slow the guest's
	// input for no backup: gone before QEMU starts.
	if err := netbuf.RemoveTapShaping(p.tap); err != nil {
		p.log.Warn("a stale pacing qdisc may slow the tap", "tap", p.tap, "err", err)
	}
	if p.a.cfg.PaceQueueBytes > 0 {
		// Unprotected too: nothing is installed until a backup's lag samples
		// engage the pacer, and a running VM may be protected later.
		return p.paceTap(link.MTU)
	}
	return nil
}

// paceTap paces the network's frames to QEMU with a qdisc on the tap: they reach
// QEMU without the agent on this path, and every one of them is logged.
func (p *primary) paceTap(mtu int) error {
	pacer, err := throttle.NewPacer(throttle.PacerConfig{
		Bound:      time.Duration(p.spec.LagBoundMS) * time.Millisecond,
		QueueBytes: p.a.cfg.PaceQueueBytes,
		// Not on a lag the network's frames are not behind: see the field.
		OnlyOverFloor: true,
	})
	if err != nil {
		return err
	}
	sh, err := netbuf.NewTapShaper(p.tap)
	if err != nil {
		return err
	}
	tp, err := netbuf.NewTapPacer(netbuf.TapPacerConfig{
		Pacer:      pacer,
		Shaper:     sh,
		QueueBytes: p.a.cfg.PaceQueueBytes,
		MTU:        mtu + netbuf.DefaultTapFrame - 1500, // its Ethernet header and a VLAN tag
		Logger:     p.log,
	})
	if err != nil {
		return err
	}
	p.addCleanup(tp.Close)
	p.pace = tp
	return nil
}

func (p *primary) copyProgress(pr disk.Progress) {
	p.mu.Lock()
	p.copied = pr
	p.mu.Unlock()
}

// diskPath is the image this copy's QEMU uses.
func (p *primary) diskPath() string {
	if p.live != nil && p.live.disk != "" {
		return p.live.disk
	}
	return p.spec.Disk
}

// stamp is the rr log's size on disk: QEMU flushes the log before it sends a frame
// (ftvmd's engine in filter-replay; on a stock QEMU libftflush.so hooks sendto on the
// datagram NIC and writev on the tap), so when the
// relay receives a frame, or the hold reads a queued frame's id, this size covers
// every log byte before it.
func (p *primary) stamp() (int64, error) {
	// A frame is waiting for the log before it: read and send that log now rather
	// than at the next tail tick.
	select {
	case p.tailWake <- struct{}{}:
	default:
	}
	st, err := p.rr.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func (p *primary) openLog(ctx context.Context) error {
	path := p.m.Config().RRFile
	deadline := time.Now().Add(10 * time.Second)
	for {
		f, err := os.Open(path)
		if err == nil {
			p.rr = f
			p.addCleanup(f.Close)
			return nil
		}
		if !errors.Is(err, os.ErrNotExist) || time.Now().After(deadline) {
			return fmt.Errorf("rr log: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.m.Exited():
			return fmt.Errorf("qemu exited before creating its log: %v", p.m.ExitErr())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (p *primary) startStreams(context.Context) error {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	var quota func(float64) error
	if p.cg != nil {
		quota = p.cg.SetQuota
	}
	act := newActuator(p.log, p.pace, quota, slowActuation)
	act.start(ctx, p.go1)
	p.mu.Lock()
	p.act = act
	p.vmCtx = ctx
	if p.live != nil {
		p.aloneAt = time.Now() // live after the failover: claim and go-live are behind
	}
	p.mu.Unlock()
	backup := ""
	if p.conn != nil {
		p.sender = logging.NewSender(p.conn, p.rr, logging.SenderConfig{
			StartOffset:       replay.HeaderSize,
			HeartbeatInterval: p.a.cfg.HeartbeatInterval,
			PeerTimeout:       p.a.cfg.PeerTimeout,
			Logger:            p.log,
		})
		backup = p.backupHost
	}
	// Before any goroutine can report what happens: the lifecycle starts protected
	// (with a backup) or unprotected.
	if err := p.life.startPrimary(p.epoch, backup, p.peer, backup != "" && p.a.store != nil && p.epoch > 0); err != nil {
		return err
	}
	p.go1(func() { p.tail(ctx) })
	cfg := p.a.cfg
	if p.keepLog {
		cfg.ConsoleMaxBytes = 0 // rr check compares the whole console
	}
	logs := newLogKeeper(p.log, p.rr.Name(), p.m.Config().ConsoleLog, p.spec.MaxLogDisk, cfg, p.logPlan)
	logs.pause, logs.atLimit = p.pauseAtLimit, "keeping only the log the backup has not acknowledged"
	p.mu.Lock()
	p.logs = logs
	p.mu.Unlock()
	p.go1(func() {
		if err := p.out.Run(ctx); err != nil && ctx.Err() == nil {
			p.fail(fmt.Errorf("network output path: %w", err))
		}
	})
	if p.sender != nil {
		p.startSender(ctx, p.sender)
		s := p.sender
		p.go1(func() { p.ackLoop(ctx, s) })
		if p.consoleMarks {
			p.go1(func() { p.sendConsoleMarksFrom(ctx, s, logs.console, 0) })
		}
		if c := p.nicCap; c != nil {
			done := p.senderDone
			p.go1(func() { p.sendNICDigests(ctx, s, c, done) })
		}
	}
	// After startSender: the keeper reads what it set (senderDone).
	p.go1(func() { logs.run(ctx, p.a.cfg.LogCheckEvery) })
	p.go1(func() {
		select {
		case <-ctx.Done():
		case <-p.m.Exited():
			_ = p.life.step(lifecycle.QEMUExited(p.m.ExitErr()))
		}
	})
	p.go1(func() { p.watchIOError(ctx) })
	if p.a.store != nil && p.epoch > 0 {
		p.go1(func() { p.watchEpoch(ctx) })
	}
	return nil
}

// startSender runs the log channel's sender under its own context: ending
// protection stops it with a Bye (the backup then stops quietly) while the VM runs
// on. A channel that ends otherwise is a lost (or stepped-down) backup. ctx is the
// VM's.
func (p *primary) startSender(ctx context.Context, s *logging.Sender) {
	sctx, scancel := context.WithCancel(ctx)
	senderDone := make(chan struct{})
	p.mu.Lock()
	p.stopSender, p.senderDone = scancel, senderDone
	conn := p.conn
	p.mu.Unlock()
	detach := p.a.peers.attach(p.backupName(), p.spec.Name, conn, func() time.Time { return s.Stats().LastPeerMsgAt })
	p.go1(func() {
		defer close(senderDone)
		err := s.Run(sctx)
		detach(channelEndReason(err, sctx.Err() != nil))
		if sctx.Err() != nil {
			return // protection ended on purpose
		}
		p.backupChannelEnded(err)
	})
}

// backupChannelEnded tells the lifecycle how the log channel to the backup ended
// (err, from the sender; not on purpose).
func (p *primary) backupChannelEnded(err error) {
	switch {
	case errors.Is(err, logging.ErrAborted):
		return // this primary failed and said so
	case errors.Is(err, logging.ErrPeerRefused) && lifecycle.SteppedDownBySentinel(err.Error()):
		// Its replay diverged or stalled: it discarded its copy, and this copy
		// protects the VM again with it from a fresh start.
		p.log.Error("backup stepped down: its divergence sentinel found its replay is no protection", "err", err)
		_ = p.life.step(lifecycle.PeerSteppedDown(err))
	case errors.Is(err, logging.ErrPeerRefused):
		// A backup that failed on its own says so (an Error on the channel) and
		// steps down without claiming: it is not lost, it quit.
		p.log.Error("backup stepped down", "err", err)
		_ = p.life.step(lifecycle.PeerQuit(err))
	default:
		p.log.Error("backup lost", "err", err)
		_ = p.life.step(lifecycle.PeerLost(err))
	}
}

// backupName is the backup's host name (its certificate's) once it answered, else
// the address it was dialled at.
func (p *primary) backupName() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.backupHost != "" {
		return p.backupHost
	}
	return p.peer
}

// snd is the log channel's sender (nil while the VM is unprotected, or until a
// protection of the running VM has one).
func (p *primary) snd() *logging.Sender {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sender
}

// bkHost is the backup's host name, for the journal.
func (p *primary) bkHost() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.backupHost
}

// channelEndReason says why a log channel ended, for the journal.
func channelEndReason(err error, stopped bool) string {
	switch {
	case stopped:
		return "log channel closed by this host"
	case err == nil:
		return "log channel closed"
	}
	return "log channel ended: " + err.Error()
}

// watchIOError fails the VM when its QEMU stops on an I/O error. A recording that
// could not write its log has lost events some frames depend on: nothing more may be
// released, and the VM is not protected any more.
func (p *primary) watchIOError(ctx context.Context) {
	err := p.m.WaitIOError(ctx)
	var le *qemu.LogWriteError
	switch {
	case errors.As(err, &le):
		_ = p.life.step(lifecycle.LogWriteFailed(le.Reason))
	case errors.Is(err, qemu.ErrIOError):
		p.fail(errors.New("qemu stopped the guest on an I/O error (rr log or disk); output stopped"))
	}
}

func (p *primary) go1(fn func()) {
	p.wg.Add(1)
	go func() { defer p.wg.Done(); fn() }()
}

// tailEvery is how often the primary reads new log when no output waits for it. A
// held frame wakes the tail at once (tailWake), so this bounds only how stale the
// backup's copy may be, and with it the lag. Every read is a frame sent, written,
// fed and acked: on a busy guest 1 ms meant thousands of wake-ups a second in each
// agent, CPU the two QEMUs then lacked.
const tailEvery = 5 * time.Millisecond

// tail follows the growing rr log, cuts it at event boundaries and publishes them.
func (p *primary) tail(ctx context.Context) {
	var base uint64
	if p.live != nil {
		base = p.live.icount
	}
	cut := replay.NewCutter(replay.HeaderSize, base)
	safe := int64(replay.HeaderSize)
	safeIcount := base
	cut.OnEvent(func(ev replay.Event) {
		if safeCut(ev.Kind) {
			safe, safeIcount = ev.End(), cut.Icount()
		}
	})
	buf := make([]byte, 256<<10)
	off := int64(replay.HeaderSize)
	tick := time.NewTicker(tailEvery)
	defer tick.Stop()
	for {
		n, err := p.rr.ReadAt(buf, off)
		if n > 0 {
			off += int64(n)
			if _, werr := cut.Write(buf[:n]); werr != nil {
				p.fail(fmt.Errorf("rr log unreadable: %w", werr))
				return
			}
			now := time.Now()
			b, ic := cut.Boundary(), cut.Icount()
			p.mu.Lock()
			p.written = off
			p.boundary, p.icount, p.safePoint, p.safeIcount = b, ic, safe, safeIcount
			p.lags.add(mark{at: now, off: b, icount: ic})
			snd := p.sender
			p.mu.Unlock()
			if snd != nil {
				snd.Publish(b, ic)
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			p.fail(fmt.Errorf("read rr log: %w", err))
			return
		}
		if n == len(buf) {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-p.tailWake:
		}
	}
}

func (p *primary) ackLoop(ctx context.Context, s *logging.Sender) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	// The decisions of this loop belong to the protection it serves: once that
	// ends (actuator.release) they are dropped.
	act := p.actuator()
	gen := act.generation()
	// The first acks of a protection measure the catch-up, not the pair's pace:
	// see catchingUp.
	var cu catchUp
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			p.mu.Lock()
			p.bw.add(time.Now(), p.written)
			p.mu.Unlock()
		case ack := <-s.Acks():
			// Nothing in this case may wait on the kernel beyond the output rule:
			// the acks are what releases the guest's output. The quota and the
			// pacing are applied by the actuator's own goroutines.
			st := s.Stats()
			p.out.Sent(st.Sent)
			p.out.Ack(ack.Offset)
			now := time.Now()
			p.mu.Lock()
			lag, off := p.lags.lag(ack.ReplayedIcount, now)
			p.lagMS = float64(lag) / float64(time.Millisecond)
			p.replayed = off
			p.bkIcount = ack.ReplayedIcount
			prevStall := p.bkStall
			p.bkStall, p.bkStallRep = ack.Stall, ack.StallReported
			p.lagBytes = p.boundary - off
			work := p.workLag(now)
			p.workLagMS = ms(work)
			p.lagHist.add(lag)
			p.workHist.add(work)
			old, q := p.quota, p.quota
			// The controller works at a fixed cadence, not per ack: acks come every
			// few ms and a multiplicative step per ack would collapse the quota. It
			// acts on the age lag, the one the bound is about: since the backup
			// reports progress off its FIFO (qemu.FeedWatch) an idle backup's age lag
			// is a few ms, and the work lag, an estimate from a peak rate, read 82 ms
			// at p99 while the age lag's p99 was 250 ms on a busy guest.
			observe := now.Sub(p.lastObserve) >= throttleEvery && !cu.skip(lag, p.bound(), now)
			if observe {
				p.lastObserve = now
				q = p.ctrl.Observe(throttle.Sample{Lag: lag, PrimaryRate: p.ipsP.rate(), BackupRate: p.ipsB.rate()}, now)
				p.quota = q
			}
			p.mu.Unlock()
			p.logBackupStall(prevStall, ack.Stall)
			if observe {
				// The same sample paces the frames from the network (the quota
				// cannot slow them), at the same cadence for the same reason.
				act.pacing(gen, throttle.Sample{Lag: lag})
				paced := p.pace != nil && p.pace.PacerStats().Active
				p.noteEpisodes(q < 1, paced, now, lag)
			}
			if q < old*0.98 || q > old*1.02 || (q == 1 && old < 1) {
				act.setQuota(gen, q, lag, work)
			}
		}
	}
}

// actuator is p.act, read under mu.
func (p *primary) actuator() *actuator {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.act
}

// bound is the VM's lag bound.
func (p *primary) bound() time.Duration {
	return time.Duration(p.spec.LagBoundMS) * time.Millisecond
}

// catchUp tells the acks of a protection's catch-up from the rest. A backup
// starts behind by however long its start took (a snapshot copied and restored
// while the guest ran on, or a replaying QEMU starting beside a booting one): the
// first lag sample read 4.8 s after each in-place re-protection in the lab. Fed
// to the throttle and the pacer, that sample clamped the quota and engaged pacing
// at its floor (the pacer had no traffic rate yet), both released a second
// later, for a lag the primary's speed did not cause and the output rule does
// not wait on (output is held only once the catch-up is done).
//
// So samples over the bound do not reach them until the lag first falls within
// it, or for at most catchUpGrace from the first ack: a backup that cannot catch
// up with a primary at full speed is throttled after that, as before.
type catchUp struct {
	first time.Time
	done  bool
}

// catchUpGrace is how long the catch-up's samples are kept from the throttle at
// most.
const catchUpGrace = 3 * time.Second

// skip reports whether a sample of lag at now is still the catch-up's.
func (c *catchUp) skip(lag, bound time.Duration, now time.Time) bool {
	if c.done {
		return false
	}
	if c.first.IsZero() {
		c.first = now
	}
	if lag <= bound || now.Sub(c.first) >= catchUpGrace {
		c.done = true
		return false
	}
	return true
}

// logBackupStall logs and journals the backup's replay entering and leaving a
// stall, as its acks report it, so that the primary's log says so too, not only the
// backup's.
func (p *primary) logBackupStall(prev, cur logging.ReplayStall) {
	switch {
	case cur.Stalled() && (!prev.Stalled() || cur.Episodes != prev.Episodes):
		p.log.Warn("backup replay stalled", "icount", cur.AtIcount, "held_beyond", cur.Beyond,
			"for", cur.For.Round(time.Millisecond), "stalls", cur.Episodes)
		p.a.record(journal.Event{Kind: journal.KindReplayStall, VM: p.spec.Name, Role: "primary", Peer: p.bkHost(),
			Detail: fmt.Sprintf("backup's replay stalled at icount %d with %d log bytes beyond it (stall %d)", cur.AtIcount, cur.Beyond, cur.Episodes)})
	case prev.Stalled() && !cur.Stalled():
		p.log.Info("backup replay progressing again", "stalled_for", prev.For.Round(time.Millisecond), "stalls", cur.Episodes)
		p.a.record(journal.Event{Kind: journal.KindReplayMoving, VM: p.spec.Name, Role: "primary", Peer: p.bkHost(),
			DurationMS: ms(prev.For), Detail: fmt.Sprintf("backup's replay moving again (stall %d)", cur.Episodes)})
	}
}

// noteEpisodes journals the throttle and the pacing of network input starting and
// stopping. Called at the throttle's cadence from the ack loop, and with both off
// when protection ends (no acks come then).
func (p *primary) noteEpisodes(throttled, paced bool, now time.Time, lag time.Duration) {
	p.mu.Lock()
	thCh, thFor := p.throttleEp.set(throttled, now)
	pcCh, pcFor := p.paceEp.set(paced, now)
	quota := p.quota
	p.mu.Unlock()
	ev := func(kind string, d time.Duration, detail string) {
		p.a.record(journal.Event{Time: now, Kind: kind, VM: p.spec.Name, Role: "primary", Peer: p.bkHost(), DurationMS: ms(d), Detail: detail})
	}
	switch {
	case thCh && throttled:
		ev(journal.KindThrottleOn, 0, fmt.Sprintf("backup lag %s over the %d ms bound: quota %.0f%% of a CPU", lag.Round(time.Millisecond), p.spec.LagBoundMS, quota*100))
	case thCh:
		ev(journal.KindThrottleOff, thFor, fmt.Sprintf("quota back to a whole CPU after %s", thFor.Round(time.Millisecond)))
	}
	switch {
	case pcCh && paced:
		// The pacer decides on its own goroutine (actuator), so paced is the
		// state after an earlier sample than lag's: the lag that engaged it is
		// the pacer's own.
		if p.pace != nil {
			if el := p.pace.PacerStats().EngagedLag; el > 0 {
				lag = el
			}
		}
		ev(journal.KindPacingOn, 0, fmt.Sprintf("backup lag %s: network input to the guest paced", lag.Round(time.Millisecond)))
	case pcCh:
		ev(journal.KindPacingOff, pcFor, fmt.Sprintf("network input flows freely after %s", pcFor.Round(time.Millisecond)))
	}
}

// workLag is how much execution the backup has still to replay, in time at the
// current instruction rate of the faster side. The throttle acts on it rather than on
// the age of the oldest unreplayed log position: an idle guest's backup trails by a
// few wake-ups in age but has almost nothing to execute, and slowing the primary
// would not bring it closer. Called with p.mu held.
func (p *primary) workLag(now time.Time) time.Duration {
	p.ipsP.add(now, int64(p.icount))
	p.ipsB.add(now, int64(p.bkIcount))
	p.peakRate = max(p.peakRate, p.ipsB.rate())
	return workLagFor(p.icount, p.bkIcount, p.peakRate)
}

// workLagFor is the time a backup at replayed instructions needs to reach primary at
// rate instructions per second. The rate is the fastest the backup has replayed (its
// capacity, seen whenever it catches up, after boot at the latest), not the current
// one: an idle guest averages a million instructions a second in short bursts, and
// dividing a burst still to replay by that average made an idle backup look hundreds
// of ms behind, and throttled an idle guest for nothing. Not the primary's rate
// either: the primary records faster than the backup replays, and dividing by its
// rate halved the busy lag the throttle saw (measured: work lag p99 81 ms while the
// age lag's p99 was 216 ms).
func workLagFor(primary, replayed uint64, rate float64) time.Duration {
	if replayed >= primary || rate <= 0 {
		return 0
	}
	return time.Duration(float64(primary-replayed) / rate * float64(time.Second))
}

// throttleEvery is the throttle controller's period.
const throttleEvery = 100 * time.Millisecond

// guestControl is what the lifecycle's actions need of the primary's QEMU
// (qemu.Machine: QMP stop and cont with deadlines, SIGKILL).
type guestControl interface {
	Pause(context.Context) error
	Cont(context.Context) error
	Kill() error
}

var _ guestControl = (*qemu.Machine)(nil)

// newLife gives the primary its lifecycle machine.
func (p *primary) newLife() error {
	var liveEpoch uint64
	if p.live != nil {
		liveEpoch = p.live.epoch
	}
	var reprotect string
	if p.live != nil {
		reprotect = p.live.reprotect
	}
	d, err := newDriverWith(p.a, lifecycle.Config{Role: arbiter.RolePrimary, VM: p.spec.Name, LiveEpoch: liveEpoch, Reprotect: reprotect, Spares: p.spec.BackupHosts}, p.log, p.exec)
	if err != nil {
		return err
	}
	d.notify = p.journalLife
	p.life = d
	return nil
}

// journalLife records the primary's lifecycle changes in the agent's journal.
func (p *primary) journalLife(prev, cur lifecycle.Status) {
	e := journal.Event{VM: p.spec.Name, Role: "primary", Peer: p.bkHost(), Epoch: cur.Epoch, Detail: cur.Detail}
	switch cur.State {
	case lifecycle.Unprotected:
		if prev.State == lifecycle.Starting {
			return // started alone: nothing was protected
		}
		if prev.State == lifecycle.Claiming {
			now := time.Now()
			p.mu.Lock()
			p.faultAt, p.aloneAt = now.Add(-p.life.sinceClaim()), now
			p.mu.Unlock()
			f := e
			f.Kind, f.DurationMS = journal.KindFailover, ms(p.life.sinceClaim())
			f.Detail = cur.Detail + ": carrying on alone"
			p.a.record(f)
		}
		e.Kind, e.Peer = journal.KindUnprotected, ""
	case lifecycle.Halted:
		e.Kind = journal.KindHalted
	case lifecycle.Failed:
		e.Kind = journal.KindFailed
	case lifecycle.HandedOver:
		e.Kind, e.Detail = journal.KindHandover, "planned failover: handed over to "+p.bkHost()
	default:
		return
	}
	p.a.record(e)
}

// exec carries out one lifecycle action (see driver): without blocking.
func (p *primary) exec(a lifecycle.Action) {
	switch a.Type {
	case lifecycle.ActionReleaseOutput:
		// Output flows freely from now on: no backup to wait for, nothing to pace
		// or throttle for.
		if d := p.life.sinceClaim(); d > 0 {
			p.mu.Lock()
			p.claimDur = d
			p.mu.Unlock()
		}
		p.out.SetMode(outputrule.Unprotected)
		// No backup to wait for: the held frames go, the quota goes back to a
		// whole CPU (on the actuator's goroutines: this must not block), and
		// what this protection's ack loop still decides is dropped.
		p.actuator().release()
		p.noteEpisodes(false, false, time.Now(), 0)
		p.log.Warn("vm unprotected", "reason", a.Reason)
	case lifecycle.ActionHaltOutput:
		if p.out != nil {
			p.out.SetMode(outputrule.Halted)
		}
	case lifecycle.ActionEndChannel:
		p.mu.Lock()
		stop, syncCancel := p.stopSender, p.syncCancel
		p.mu.Unlock()
		if syncCancel != nil {
			syncCancel() // a protection of the running VM in progress ends
		}
		if stop != nil {
			stop() // Bye: the backup stops, or finds its planned-failover claim
		}
	case lifecycle.ActionAbortChannel:
		// An Error saying why (a Bye would make the backup stop quietly): the backup
		// reads it as a failed primary, claims the next epoch and goes live from the
		// log it holds; every frame released here was acknowledged, so it lies before
		// the backup's cut. This copy never claims.
		if snd := p.snd(); snd != nil {
			p.mu.Lock()
			p.aborted = true
			p.mu.Unlock()
			snd.Abort(fmt.Errorf("primary failed: %s", a.Reason))
		}
	case lifecycle.ActionStartSync:
		p.startSync(a.Peer, a.Reason)
	case lifecycle.ActionProbePeer:
		p.life.spawn(func(ctx context.Context) {
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err := p.probePeer(pctx, a.Peer)
			cancel()
			_ = p.life.step(lifecycle.Probed(err))
		})
	case lifecycle.ActionKillQEMU:
		if p.guest != nil {
			if err := p.guest.Kill(); err != nil {
				p.log.Warn("kill qemu", "err", err)
			}
		}
	case lifecycle.ActionPauseGuest:
		p.life.spawn(func(ctx context.Context) {
			// The lifecycle gives up on the pause after its PauseTicks; this
			// deadline only ends the wait on a QEMU that does not answer.
			ctx, cancel := context.WithTimeout(ctx, time.Duration(lifecycle.DefaultPauseTicks)*lifeTick+time.Second)
			defer cancel()
			if err := p.guest.Pause(ctx); err != nil {
				_ = p.life.step(lifecycle.PauseFailed(err))
				return
			}
			_ = p.life.step(lifecycle.GuestPaused())
		})
	case lifecycle.ActionAwaitDrain:
		p.mu.Lock()
		p.drainGen++
		gen := p.drainGen
		p.mu.Unlock()
		p.life.spawn(func(ctx context.Context) { p.awaitDrain(ctx, gen) })
	case lifecycle.ActionResumeGuest:
		p.mu.Lock()
		p.drainGen++ // stops a drain wait
		p.mu.Unlock()
		p.life.spawn(func(ctx context.Context) {
			if err := p.guest.Cont(ctx); err != nil {
				p.log.Error("resume guest", "reason", a.Reason, "err", err)
			}
		})
	case lifecycle.ActionTeardown:
		p.mu.Lock()
		wait := p.senderDone
		if !p.aborted {
			wait = nil
		}
		p.mu.Unlock()
		if wait == nil {
			p.stopOnce.Do(func() { go p.teardown() })
			return
		}
		// The backup must hear why before the teardown's Bye could overtake it.
		go func() {
			select {
			case <-wait:
			case <-time.After(2 * time.Second):
			}
			p.stopOnce.Do(func() { go p.teardown() })
		}()
	default:
		p.log.Error("lifecycle action a primary cannot carry out", "action", a.String())
	}
}

// drainPoll is how often a planned failover looks whether the backup has caught up.
const drainPoll = 20 * time.Millisecond

// awaitDrain steps Drained once the backup holds the log up to the pause and every
// held frame is released; it gives up when a resume moves drainGen (the lifecycle
// counts the deadline in ticks).
func (p *primary) awaitDrain(ctx context.Context, gen uint64) {
	// The vCPU is stopped: the guest emits nothing more. Let the log's last flush and
	// the tail catch up, then wait for the backup to acknowledge the log up to the
	// pause (the paused QEMU may still log clock events after it; they do not change
	// the guest).
	select {
	case <-ctx.Done():
		return
	case <-time.After(50 * time.Millisecond):
	}
	p.mu.Lock()
	// The backup acks only safe cut points (logSink.AckLimit): wait for the newest
	// one the log has at the pause, not for its last event boundary, which may sit
	// inside a group the backup never acks on its own.
	paused := p.safePoint
	p.mu.Unlock()
	t := time.NewTicker(drainPoll)
	defer t.Stop()
	for {
		p.mu.Lock()
		current := p.drainGen == gen
		p.mu.Unlock()
		if !current {
			return
		}
		ss := p.snd().Stats()
		rs := p.out.Stats().Rule
		if ss.Acked >= paused && rs.HeldFrames+rs.PendingFrames == 0 {
			_ = p.life.step(lifecycle.Drained())
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// unprotect ends protection on the operator's request. With shared storage the
// lifecycle claims the next epoch first, so that a backup which already lost the
// channel and is claiming cannot also go live: if the backup won, this copy halts.
func (p *primary) unprotect(ctx context.Context, reason string) error {
	return p.life.request(ctx, lifecycle.OpUnprotect, lifecycle.Unprotect(reason))
}

// handover is the planned failover: the primary pauses its guest, lets the backup
// acknowledge the whole log and releases every held frame, halts its output, claims
// the next epoch for the backup and ends the channel; the backup sees its own claim
// and goes live. No frame is lost and no two copies run.
func (p *primary) handover(ctx context.Context) error {
	return p.life.request(ctx, lifecycle.OpHandover, lifecycle.Handover())
}

// fail ends the VM on a local failure (the lifecycle halts its output first).
func (p *primary) fail(err error) {
	_ = p.life.step(lifecycle.Fault(err))
}

// stop ends the VM and waits until it has, or until ctx ends: then it returns an
// error and the teardown goes on (done() closes when it finishes).
func (p *primary) stop(ctx context.Context) error {
	_ = p.life.step(lifecycle.Stop(""))
	p.stopOnce.Do(func() { go p.teardown() }) // the lifecycle asked for it already; in case it was past asking
	return waitStopped(ctx, p.finished, p.log, p.spec.Name)
}

// shutdown ends the primary because the agent is going away. The lifecycle
// decides (lifecycle.EventShutdown): a protected primary with shared storage hands
// the VM over to its backup and then tears down; any other stops as on stop. It
// waits until the copy is torn down, or until ctx ends (then the caller stops it).
func (p *primary) shutdown(ctx context.Context) error {
	_ = p.life.step(lifecycle.Shutdown("agent shutting down"))
	if p.life.state().State != lifecycle.HandingOver {
		return p.stop(ctx) // stopping, or ended already: make sure it tears down
	}
	p.log.Warn("agent shutting down: handing the VM over to the backup", "backup", p.backupHost)
	return waitStopped(ctx, p.finished, p.log, p.spec.Name)
}

// teardown runs once, from stop: it cancels the VM's goroutines, waits for them and
// undoes its start steps.
func (p *primary) teardown() {
	if p.cancel != nil {
		p.cancel()
	}
	p.wg.Wait()
	p.life.close()
	p.runCleanups()
	_ = p.life.step(lifecycle.TeardownDone())
	close(p.finished)
	p.log.Info("vm stopped")
}

func (p *primary) done() <-chan struct{} { return p.finished }

func (p *primary) status() control.VMStatus {
	ls := p.life.state()
	p.mu.Lock()
	defer p.mu.Unlock()
	epoch := ls.Epoch
	if ls.State == lifecycle.Starting {
		epoch = p.epoch // claimed at start; the lifecycle learns it when it starts
	}
	st := control.VMStatus{
		Name: p.spec.Name, Role: "primary", State: ls.State.String(), Peer: p.peer, Detail: ls.Detail, DataPath: string(p.dataPath),
		Forced: p.own.forced, EpochCheck: p.epochCheck,
		StartedAt: p.started, Engine: p.a.engine.Name, EngineWarning: p.a.engine.Warning(), Epoch: epoch,
		FailoverClaimMS: ms(p.claimDur), FailoverGoLiveMS: ms(p.goLiveDur),
		Disk: p.diskPath(), CopyDone: p.copied.Done, CopyTotal: p.copied.Total, CopyResumed: p.copied.Resumed, CopyRate: p.copied.Rate, LogWritten: p.written, Icount: p.icount, BackupIcount: p.bkIcount,
		LogReplayed: p.replayed, LagBytes: p.lagBytes, LagMS: p.lagMS, WorkLagMS: p.workLagMS, LagBoundMS: p.spec.LagBoundMS,
		LogBandwidth: p.bw.rate(), ThrottleQuota: p.quota, ThrottleAtFloor: p.ctrl.AtFloor(), ThrottledSec: p.ctrl.ThrottledFor().Seconds(),
		LogOnDisk: onDisk(filepath.Join(p.dir, "log.rr")), PacingEnabled: p.pace != nil,
	}
	if p.m != nil {
		st.PID = p.m.PID()
	}
	if p.sender != nil {
		ss := p.sender.Stats()
		st.LogSent, st.LogAcked, st.BackupBehind = ss.Sent, ss.Acked, ss.Behind
		st.NICFrames, st.NICDropped = ss.NICFrames, ss.NICDropped
	}
	if p.sender != nil {
		st.LagHist, st.WorkLagHist = p.lagHist.histogram(), p.workHist.histogram()
	}
	if p.out != nil {
		fillRelayStatus(&st, p.out.Stats())
	}
	if p.pace != nil {
		// The pacer's counters come from the pacer on both data paths (the relay
		// on the relay path, a qdisc on the tap path), never from RelayStats.Pacing:
		// one source, filled once.
		fillPacingStatus(&st, p.pace.PacerStats())
	}
	quotaErrs, paceStuck, quotaStuck := p.act.errors()
	st.PaceErrors += paceStuck
	st.ThrottleErrors = quotaErrs + quotaStuck
	if p.bkStallRep {
		fillBackupStallStatus(&st, p.bkStall)
	}
	p.health.fill(&st, time.Now())
	if p.sync != nil {
		s := *p.sync
		st.Sync = &s
	}
	p.logs.fill(&st)
	return st
}

// logPlan says what the primary's rr log must keep. While the VM is protected (or
// its backup was just lost: a claim, a degraded wait, an unprotect or a handover
// under way) the backup may still need every byte it has not acknowledged: the
// sender reads from its sent offset on, never back (a new protection starts a new
// log), so nothing below the ack is read again. Unprotected, nothing replays the log:
// it keeps the agent's --unprotected-log-keep behind its end, once the sender has
// stopped reading. A copy that failed, halted or handed over keeps its log as the
// evidence of what happened. At the limit only a protected guest may wait (be
// paused) for its backup: in a handover the lifecycle pauses and resumes it.
func (p *primary) logPlan() logPlan {
	state := p.life.state().State
	p.mu.Lock()
	written, senderDone, snd := p.written, p.senderDone, p.sender
	p.mu.Unlock()
	switch state {
	case lifecycle.Protected, lifecycle.Degraded, lifecycle.Claiming, lifecycle.Unprotecting, lifecycle.HandingOver:
		if snd == nil {
			break
		}
		return logPlan{keep: logspace.Keep{Needed: snd.Stats().Acked, All: p.keepLog},
			keeps:   keptText("until the backup acknowledges it", p.keepLog),
			canWait: state != lifecycle.HandingOver}
	case lifecycle.Unprotected:
		needed := written
		if snd != nil && !closed(senderDone) {
			needed = min(needed, snd.Stats().Sent)
		}
		behind := p.a.cfg.UnprotectedLogKeep
		what := fmt.Sprintf("the last %s (nothing replays it; --unprotected-log-keep)", logspace.FormatSize(max(behind, 0)))
		if behind < 0 {
			what = "all (--unprotected-log-keep all)"
		}
		return logPlan{keep: logspace.Keep{Needed: needed, Behind: max(behind, 0), All: p.keepLog || behind < 0},
			keeps: keptText(what, p.keepLog)}
	}
	return logPlan{hold: true, keeps: fmt.Sprintf("all (the VM is %s)", state)}
}

// closed reports whether ch is closed (a nil channel is not).
func closed(ch <-chan struct{}) bool {
	if ch == nil {
		return false
	}
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// keptText adds --keep-log to what a log keeps.
func keptText(what string, keepLog bool) string {
	if keepLog {
		return "all (--keep-log, for ftvmd rr check); else " + what
	}
	return what
}

// pauseAtLimit pauses or resumes the guest for the log keeper.
func (p *primary) pauseAtLimit(ctx context.Context, paused bool) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if paused {
		return p.guest.Pause(ctx)
	}
	return p.guest.Cont(ctx)
}

// fillBackupStallStatus shows the stall report of the primary's backup.
func fillBackupStallStatus(st *control.VMStatus, s logging.ReplayStall) {
	st.ReplayStallReported, st.ReplayStalls = true, s.Episodes
	if s.Stalled() {
		st.ReplayStalled, st.ReplayStalledSec = true, s.For.Seconds()
		st.ReplayStalledAtIcount, st.ReplayStalledLogBeyond = s.AtIcount, s.Beyond
	}
}

// tapName derives a Linux interface name (at most 15 bytes) from the VM name.
func tapName(vm string) string { return ifName("ft-", vm) }

// ifName is prefix+vm when that fits an interface name (15 bytes). A longer one is
// cut and ends in "." and a hash of the whole VM name: cutting alone gave VMs that
// share their first 12 characters one tap, and no VM name has a ".", so a hashed
// name never equals another VM's uncut one.
func ifName(prefix, vm string) string {
	n := prefix + vm
	if len(n) <= 15 {
		return n
	}
	sum := sha256.Sum256([]byte(vm))
	h := hex.EncodeToString(sum[:4])
	return n[:15-1-len(h)] + "." + h
}

func fillRelayStatus(st *control.VMStatus, rs netbuf.RelayStats) {
	r := rs.Rule
	st.HeldFrames, st.HeldBytes = r.HeldFrames+r.PendingFrames, r.HeldBytes+r.PendingBytes
	if !r.OldestHeldAt.IsZero() {
		st.OldestHeldMS = float64(time.Since(r.OldestHeldAt)) / float64(time.Millisecond)
	}
	st.Released = r.ReleasedFrames
	if r.ReleasedFrames > 0 {
		st.AddedDelayMS = float64(r.TotalDelay) / float64(r.ReleasedFrames) / float64(time.Millisecond)
	}
	st.MaxDelayMS = float64(r.MaxDelay) / float64(time.Millisecond)
	st.AddedDelaySumMS = ms(r.TotalDelay)
	if h := r.DelayHist; h.Count() > 0 {
		// A bucket's upper bound can exceed the largest delay seen; the true
		// quantile cannot, so the maximum is the tighter bound there.
		st.AddedDelayP50MS = ms(min(h.Quantile(0.5), r.MaxDelay))
		st.AddedDelayP99MS = ms(min(h.Quantile(0.99), r.MaxDelay))
		st.AddedDelayHist = h.Counts()
	}
	st.Backpressure = rs.BackpressureWaits
	st.NetErrors = rs.Oversized + rs.Truncated + rs.StampErrors + rs.TapWriteErrors
	st.InvariantFails = rs.Invariant
}

func fillPacingStatus(st *control.VMStatus, pc throttle.PacerStats) {
	st.PacingActive, st.PacedSec, st.PacedFrames, st.PaceDrops = pc.Active, pc.PacedFor.Seconds(), pc.Paced, pc.Drops
	st.PaceRateBps, st.PaceQueueBytes, st.PaceEngaged, st.PaceEngagedLagMS = pc.Rate, int64(pc.QueueBytes), pc.Engaged, ms(pc.EngagedLag)
	st.PaceErrors = pc.ApplyErrors
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// fileSize is the size of the file at path, 0 when it cannot be read.
// onDisk is the space a file takes on disk (allocated blocks): an rr log whose
// consumed prefix was freed keeps its size but not its blocks (bounded logs).
func onDisk(path string) int64 {
	u, err := logspace.Stat(path)
	if err != nil {
		return 0
	}
	return u.Allocated
}
