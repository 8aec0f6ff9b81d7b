// Package agent is the per-host ftvmd daemon: it runs protected VMs as primaries or
// backups, serves the local CLI on a root-only unix socket and talks to the peer agent
// over mutual TLS. Decisions live in pure packages (outputrule, throttle, arbiter);
// this package wires them to QEMU, the network and the log channel.
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
	"sort"
	"sync"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/journal"
	"github.com/ftvmd/ftvmd/lifecycle"
	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/logspace"
	"github.com/ftvmd/ftvmd/netbuf"
	"github.com/ftvmd/ftvmd/qemu"
	"github.com/ftvmd/ftvmd/throttle"
	"github.com/ftvmd/ftvmd/vmspec"
)

// dgramQueue is the unix datagram queue length the agent asks for.
const dgramQueue = 512

// DefaultPeerPort is where agents listen for each other.
const DefaultPeerPort = 7800

// Config is one agent's settings. DefaultConfig fills a usable set; Validate checks
// how the values relate.
type Config struct {
	Host       string // this host's name, as in its certificate
	StateDir   string // VM specs, logs, consoles, keys
	Listen     string // peer listener, host:port
	Socket     string // control socket
	KeysDir    string // TLS keys made by `ftvmd keys`
	FlushLib   string // libftflush.so; needed only by an engine that does not stream its log (checkFlushLib)
	QEMU       string // qemu-system-x86_64 binary; "" picks ftvmd's build, then the distribution's (qemu.DetectEngine)
	CPUs       string // cpuset for this host's QEMUs ("" = any)
	Bridge     string // host bridge the VM taps join
	CgroupRoot string // normally /sys/fs/cgroup; "" disables cgroups
	SharedDir  string // shared storage for epoch claims; "" disables failover

	HeartbeatInterval time.Duration
	PeerTimeout       time.Duration
	DialTimeout       time.Duration
	// StallAfter is how long a backup's replay may make no progress while the backup
	// holds log beyond it before it is reported stalled (0: DefaultStallAfter).
	StallAfter time.Duration
	// StallStepDown is how long a backup's replay may stay stalled (as StallAfter
	// measures it) before the divergence sentinel steps the backup down, so that its
	// primary protects the VM again from a fresh start; 0 only reports stalls
	// (DefaultStallStepDown in DefaultConfig). At least StallAfter when set.
	StallStepDown time.Duration
	// QEMUUnresponsiveAfter is how long the oldest unanswered liveness probe of a
	// VM's QEMU may be out before the QEMU is reported unresponsive (0:
	// DefaultQEMUUnresponsiveAfter; see qemuwatch.go for why 10 s).
	QEMUUnresponsiveAfter time.Duration

	// PaceQueueBytes is how many bytes of frames from the network a primary holds
	// while it paces them (throttle.Pacer); 0 turns pacing off, leaving the CPU
	// quota alone to hold the lag bound.
	PaceQueueBytes int

	// LogRetention is how much rr log a backup keeps beyond what its replay needs
	// (logspace.Retention: the whole log while it is within the retention, from the
	// boot it replays from, else nothing more).
	LogRetention logspace.Retention
	// UnprotectedLogKeep is how much rr log a VM that nothing replays (ftvmd run, a
	// survivor after failover, a primary whose protection ended) keeps behind its
	// end; -1 keeps it whole.
	UnprotectedLogKeep int64
	// ConsoleMaxBytes is the size at which a VM's console log is rotated (0: never);
	// ConsoleKeep how many rotated copies are kept.
	ConsoleMaxBytes int64
	ConsoleKeep     int
	// LogCheckEvery is how often a VM's logs are freed and measured.
	LogCheckEvery time.Duration

	// TestAckDelay delays every ack the backup sends (test-only: proves the hold).
	TestAckDelay time.Duration
	// TestKnobs enables test-only control operations (OpTestAckDelay).
	TestKnobs bool
	// CheckInvariant makes the relay verify the output rule on every release.
	CheckInvariant bool
	// DataPath is how the guest's frames reach the network on the VMs this agent
	// starts (DataPathRelay when empty). A backup follows its primary's choice.
	DataPath DataPath

	// Journal keeps the agent's events (`ftvmd events`); nil opens JournalFile
	// in the state directory.
	Journal journal.Journal

	Logger *slog.Logger

	// Notify, when set, receives the agent's service state as sd_notify(3)
	// assignments: READY=1 once the control socket and the peer port listen,
	// STATUS= lines (what it serves, its VMs), STOPPING=1 when it shuts down.
	Notify func(lines ...string)
}

// JournalFile is the agent's journal in its state directory (journal.File: JSON
// lines, rotated by size to JournalFile+".1").
const JournalFile = "events.jsonl"

// DefaultConfig returns the defaults for a host named host with state under dir.
func DefaultConfig(host, dir string) Config {
	return Config{
		Host:              host,
		StateDir:          dir,
		Listen:            fmt.Sprintf(":%d", DefaultPeerPort),
		Socket:            filepath.Join(dir, "ftvmd.sock"),
		KeysDir:           filepath.Join(dir, "keys"),
		Bridge:            "br0",
		CgroupRoot:        "/sys/fs/cgroup",
		HeartbeatInterval: 50 * time.Millisecond,
		PeerTimeout:       time.Second,
		DialTimeout:       5 * time.Second,
		StallAfter:        DefaultStallAfter,
		StallStepDown:     DefaultStallStepDown,

		QEMUUnresponsiveAfter: DefaultQEMUUnresponsiveAfter,

		UnprotectedLogKeep: DefaultUnprotectedLogKeep,
		ConsoleMaxBytes:    DefaultConsoleMaxBytes,
		ConsoleKeep:        DefaultConsoleKeep,
		LogCheckEvery:      DefaultLogCheckEvery,
	}
}

// DataPath is how a VM's frames travel between QEMU and the host bridge.
type DataPath string

const (
	// DataPathRelay: QEMU's NIC is a unix datagram socket; the agent relays every
	// frame between it and the VM's tap and holds the guest's frames in memory.
	DataPathRelay DataPath = "relay"
	// DataPathTap: QEMU's NIC is the VM's tap on the bridge; frames from the
	// network reach QEMU without the agent, and the guest's frames wait in the
	// kernel (an NFQUEUE) for the agent's verdict (netbuf.Hold).
	DataPathTap DataPath = "tap"
)

// ParseDataPath accepts "relay", "tap" and "" (relay, the default: tap was made
// the default in session 14 and put back when CI's chaos test on it left a client
// connection unanswered at a storage cut; docs/benchmarks.md, "Tap becomes the
// default").
func ParseDataPath(s string) (DataPath, error) {
	switch d := DataPath(s); d {
	case "":
		return DataPathRelay, nil
	case DataPathRelay, DataPathTap:
		return d, nil
	}
	return "", fmt.Errorf("data path %q: want %q or %q", s, DataPathRelay, DataPathTap)
}

// Validate rejects bad or inconsistent settings.
func (c *Config) Validate() error {
	var errs []error
	if d, err := ParseDataPath(string(c.DataPath)); err != nil {
		errs = append(errs, err)
	} else {
		c.DataPath = d
	}
	if c.Host == "" {
		errs = append(errs, errors.New("host name is required"))
	}
	if c.StateDir == "" {
		errs = append(errs, errors.New("state directory is required"))
	}
	if c.HeartbeatInterval <= 0 || c.PeerTimeout <= 0 {
		errs = append(errs, errors.New("heartbeat interval and peer timeout must be positive"))
	} else if c.PeerTimeout < 3*c.HeartbeatInterval {
		errs = append(errs, fmt.Errorf("peer timeout (%s) must be at least 3 heartbeat intervals (%s)", c.PeerTimeout, c.HeartbeatInterval))
	}
	if c.StallAfter < 0 {
		errs = append(errs, fmt.Errorf("stall threshold (%s) must not be negative", c.StallAfter))
	}
	stallAfter := c.StallAfter
	if stallAfter == 0 {
		stallAfter = DefaultStallAfter
	}
	switch {
	case c.StallStepDown < 0:
		errs = append(errs, fmt.Errorf("stall step-down threshold (%s) must not be negative (0 only reports stalls)", c.StallStepDown))
	case c.StallStepDown > 0 && c.StallStepDown < stallAfter:
		errs = append(errs, fmt.Errorf("stall step-down threshold (%s) is shorter than the stall threshold (%s): a stall is reported before the backup steps down for it", c.StallStepDown, stallAfter))
	}
	if c.QEMUUnresponsiveAfter < 0 {
		errs = append(errs, fmt.Errorf("qemu unresponsive threshold (%s) must not be negative", c.QEMUUnresponsiveAfter))
	} else if c.QEMUUnresponsiveAfter > 0 && c.QEMUUnresponsiveAfter < 2*qemuProbeEvery {
		errs = append(errs, fmt.Errorf("qemu unresponsive threshold (%s) is shorter than two probe periods (%s): one late answer would report the QEMU unresponsive", c.QEMUUnresponsiveAfter, 2*qemuProbeEvery))
	}
	if c.PaceQueueBytes < 0 {
		errs = append(errs, fmt.Errorf("pacing queue of %d bytes (0 turns pacing off)", c.PaceQueueBytes))
	} else if c.PaceQueueBytes > 0 && c.PaceQueueBytes < netbuf.DefaultMaxFrame {
		errs = append(errs, fmt.Errorf("pacing queue of %d bytes holds no largest frame (%d bytes); 0 turns pacing off", c.PaceQueueBytes, netbuf.DefaultMaxFrame))
	}
	if c.UnprotectedLogKeep < -1 {
		errs = append(errs, fmt.Errorf("unprotected log keep of %d bytes (-1 keeps the whole log)", c.UnprotectedLogKeep))
	}
	if c.ConsoleMaxBytes < 0 || (c.ConsoleMaxBytes > 0 && c.ConsoleMaxBytes < MinConsoleMaxBytes) {
		errs = append(errs, fmt.Errorf("console rotation at %d bytes: want 0 (never) or at least %d", c.ConsoleMaxBytes, MinConsoleMaxBytes))
	}
	if c.ConsoleKeep < 0 {
		errs = append(errs, fmt.Errorf("%d rotated console copies: must not be negative", c.ConsoleKeep))
	}
	if c.LogCheckEvery == 0 {
		c.LogCheckEvery = DefaultLogCheckEvery
	} else if c.LogCheckEvery < 0 {
		errs = append(errs, fmt.Errorf("log check interval %s: must be positive", c.LogCheckEvery))
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if len(errs) > 0 {
		return fmt.Errorf("agent config: %w", errors.Join(errs...))
	}
	return nil
}

// checkFlushLib requires the flush library unless the engine writes its rr log as
// a stream itself (ftvmd's build with the log-stream patch): a stock QEMU keeps the
// log in a stdio buffer that only the preloaded library flushes.
func checkFlushLib(eng qemu.Engine, lib string) error {
	if eng.LogStream {
		return nil
	}
	if lib == "" {
		return fmt.Errorf("flush library path is required with %s (build it with test/setup.sh)", eng.Name)
	}
	if _, err := os.Stat(lib); err != nil {
		return fmt.Errorf("flush library (needed with %s): %w", eng.Name, err)
	}
	return nil
}

// logFlush says what keeps the primary's rr log on disk fresh.
func (a *Agent) logFlush() string {
	if a.engine.LogStream {
		return "engine (log stream patch)"
	}
	return a.cfg.FlushLib
}

// vmRunner is one VM this agent runs, in either role.
type vmRunner interface {
	status() control.VMStatus
	// stop ends the VM and releases everything it holds.
	stop(ctx context.Context) error
	// shutdown ends this copy because the agent is going away: a protected
	// primary first hands the VM over to its backup (lifecycle.EventShutdown),
	// anything else stops. It returns when the copy is torn down, or an error
	// when ctx ends first (the caller then stops it).
	shutdown(ctx context.Context) error
	done() <-chan struct{}
}

// Agent is the daemon. Create with New, run with Run.
type Agent struct {
	cfg       Config
	engine    qemu.Engine // the QEMU this host runs VMs on
	engineErr error       // why no usable QEMU was found (nil when engine is usable)
	log       *slog.Logger
	specs     vmspec.Store

	store disk.EpochStore // nil without shared storage

	journal journal.Journal // nil in tests that build an Agent by hand
	history vmHistory       // per-VM counters, counted from the events
	peers   peerTable

	mu  sync.Mutex
	vms map[string]vmRunner

	wg sync.WaitGroup // VM goroutines

	// The peer port's cap on unauthenticated connections and their deadline (0: the
	// defaults, maxUnauthenticated and peerAuthTimeout; tests set them).
	maxUnauth   int
	authTimeout time.Duration
}

// New checks the config and prepares the state directory.
func New(cfg Config) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	// A host whose QEMU is missing or broken still runs its agent (status, keys,
	// the control socket), but says so and refuses to run or back up a VM: an
	// operator may be installing QEMU right now.
	eng, engErr := qemu.DetectEngine(context.Background(), cfg.QEMU)
	if engErr != nil {
		eng = qemu.Engine{Binary: cfg.QEMU, Name: "none"}
		if eng.Binary == "" {
			eng.Binary = qemu.DefaultBinary
		}
	}
	cfg.QEMU = eng.Binary
	if engErr == nil {
		if err := checkFlushLib(eng, cfg.FlushLib); err != nil {
			return nil, fmt.Errorf("agent config: %w", err)
		}
	}
	a := &Agent{
		engine:    eng,
		engineErr: engErr,
		cfg:       cfg,
		log:       cfg.Logger.With("host", cfg.Host),
		specs:     vmspec.Store{Dir: filepath.Join(cfg.StateDir, "vms")},
		vms:       map[string]vmRunner{},
		journal:   cfg.Journal,
	}
	if a.journal == nil {
		j, err := journal.Open(filepath.Join(cfg.StateDir, JournalFile), 0)
		if err != nil {
			return nil, err
		}
		a.journal = j
	}
	a.peers.record = a.record
	if cfg.SharedDir != "" {
		st, err := disk.NewDirStore(cfg.SharedDir, disk.WithLogger(a.log))
		if err != nil {
			return nil, fmt.Errorf("shared storage: %w", err)
		}
		a.store = st
	}
	return a, nil
}

// Run serves the control socket and the peer listener until ctx is done, then stops
// every VM it runs.
func (a *Agent) Run(ctx context.Context) error {
	if err := a.checkKeys(time.Now()); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	// QEMU sends guest frames as datagrams to the relay; the kernel's default queue
	// of 10 datagrams per unix socket throttles guest transmit.
	if err := netbuf.RaiseDgramQueue(dgramQueue); err != nil {
		a.log.Warn("cannot raise net.unix.max_dgram_qlen; guest transmit may be slow", "err", err)
	}
	ctl, err := control.Listen(a.cfg.Socket)
	if err != nil {
		return err
	}
	// After Listen, which refuses while another agent serves this state
	// directory: that one's VMs are not stale. Before Serve: none of ours runs.
	a.removeStaleCgroups()
	serverTLS, err := logging.ServerTLS(a.cfg.KeysDir)
	if err != nil {
		ctl.Close()
		return fmt.Errorf("peer TLS (run 'ftvmd keys' first): %w", err)
	}
	tcpLn, err := net.Listen("tcp", a.cfg.Listen)
	if err != nil {
		ctl.Close()
		return fmt.Errorf("peer listener: %w", err)
	}
	// The log channel writes each message in one write(2) (logging.BatchWrites).
	peerLn := tls.NewListener(logging.BatchListener(tcpLn), serverTLS)
	if err != nil {
		ctl.Close()
		return fmt.Errorf("peer listener: %w", err)
	}
	a.log.Info("agent started", "control", a.cfg.Socket, "peer", peerLn.Addr().String(), "cpus", a.cfg.CPUs,
		"engine", a.engine.Name, "qemu", a.engine.Binary, "log_flush", a.logFlush())
	if a.engineErr != nil {
		a.log.Error("no usable QEMU: VMs cannot run or be backed up on this host until it is installed", "err", a.engineErr)
	} else if w := a.engine.Warning(); w != "" {
		a.log.Warn("QEMU engine", "engine", a.engine.Name, "warning", w)
	}

	// Two servers, one result each: the wait below reads exactly as many as
	// are still to come.
	servers := 2
	errc := make(chan error, servers)
	go func() { errc <- control.Serve(ctx, ctl, a.handle, a.log) }()
	go func() { errc <- a.servePeers(ctx, peerLn) }()
	// The STATUS sent with READY=1 is the one notifyStatus compares with: read in
	// its goroutine instead, a VM that started in between would never be announced.
	sent := a.serviceStatus(peerLn.Addr().String())
	a.notify("READY=1", "STATUS="+sent)
	statusDone := make(chan struct{})
	go func() { defer close(statusDone); a.notifyStatus(ctx, peerLn.Addr().String(), sent) }()
	certsDone := make(chan struct{})
	go func() { defer close(certsDone); a.watchCerts(ctx) }()
	// Both cases may be ready (a server returns nil once ctx is done): the one
	// taken from errc is not waited for again.
	select {
	case <-ctx.Done():
	case err = <-errc:
		servers--
		cancel()
	}
	<-statusDone
	<-certsDone
	a.notify("STOPPING=1", fmt.Sprintf("STATUS=stopping: %d VMs", a.vmCount()))
	for ; servers > 0; servers-- {
		if e := <-errc; err == nil {
			err = e
		}
	}
	a.stopAll()
	a.wg.Wait()
	a.log.Info("agent stopped")
	return err
}

// notify sends service state to the service manager, if there is one.
func (a *Agent) notify(lines ...string) {
	if a.cfg.Notify != nil {
		a.cfg.Notify(lines...)
	}
}

// statusEvery is how often the agent's STATUS line is refreshed (when it changed).
var statusEvery = 5 * time.Second

// notifyStatus keeps the service manager's STATUS line current until ctx ends; last
// is the line sent already.
func (a *Agent) notifyStatus(ctx context.Context, peer, last string) {
	if a.cfg.Notify == nil {
		return
	}
	t := time.NewTicker(statusEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if s := a.serviceStatus(peer); s != last {
			a.notify("STATUS=" + s)
			last = s
		}
	}
}

// serviceStatus is the one line `systemctl status` shows: where the agent
// listens, on which engine, and each VM's role and state.
func (a *Agent) serviceStatus(peer string) string {
	engine := a.engine.Name
	if a.engineErr != nil {
		engine = "NO USABLE QEMU"
	}
	a.mu.Lock()
	vms := make([]control.VMStatus, 0, len(a.vms))
	for _, v := range a.vms {
		vms = append(vms, v.status())
	}
	a.mu.Unlock()
	sort.Slice(vms, func(i, j int) bool { return vms[i].Name < vms[j].Name })
	s := fmt.Sprintf("peers on %s, engine %s; %d VMs", peer, engine, len(vms))
	const maxShown = 8
	for i, v := range vms {
		if i == maxShown {
			s += fmt.Sprintf(", %d more", len(vms)-maxShown)
			break
		}
		sep := ", "
		if i == 0 {
			sep = ": "
		}
		s += fmt.Sprintf("%s%s %s %s", sep, v.Name, v.Role, v.State)
	}
	return s
}

// vmCount is how many VMs the agent runs.
func (a *Agent) vmCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.vms)
}

// stopTimeout bounds every stop: the agent's shutdown (all VMs at once, after
// the handovers) and `ftvmd stop` (whose CLI gives up after a minute).
const stopTimeout = 20 * time.Second

// handoverTimeout bounds a protected primary's handover when the agent shuts
// down: the guest's pause (lifecycle.DefaultPauseTicks), the backup's
// acknowledgement of the log up to it (lifecycle.DefaultHandoverTicks), the claim
// for the backup (operatorClaimTimeout) and the teardown after it, with a margin.
// Each step has its own deadline in the lifecycle; this one only stops waiting.
const handoverTimeout = time.Duration(lifecycle.DefaultPauseTicks+lifecycle.DefaultHandoverTicks)*lifeTick +
	operatorClaimTimeout + 5*time.Second

// shutdownTimeout is the longest the agent's shutdown takes: the handovers, then
// the stops of what did not end with them. packaging/ftvmd-agent.service's
// TimeoutStopSec covers it.
const shutdownTimeout = handoverTimeout + stopTimeout

// stopAll ends every VM at once when the agent shuts down: a protected primary
// hands its VM over to its backup within handoverTimeout (so that an agent
// restart does not take the VM down), every copy still running after that is
// stopped within stopTimeout.
func (a *Agent) stopAll() {
	a.mu.Lock()
	vms := make([]vmRunner, 0, len(a.vms))
	for _, v := range a.vms {
		vms = append(vms, v)
	}
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, v := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hctx, hcancel := context.WithTimeout(context.Background(), handoverTimeout)
			err := v.shutdown(hctx)
			hcancel()
			if err == nil {
				return
			}
			a.log.Warn("vm did not end in time on shutdown; stopping it", "err", err)
			sctx, scancel := context.WithTimeout(context.Background(), stopTimeout)
			defer scancel()
			if err := v.stop(sctx); err != nil {
				a.log.Warn("stop vm", "err", err)
			}
		}()
	}
	wg.Wait()
}

// register claims the VM name on this host; a name runs at most once per agent.
func (a *Agent) register(name string, v vmRunner) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if old, ok := a.vms[name]; ok {
		select {
		case <-old.done():
		default:
			return fmt.Errorf("vm %q is already running on %s as %s", name, a.cfg.Host, old.status().Role)
		}
	}
	a.vms[name] = v
	a.history.known(name)
	return nil
}

// stillRunning says why a VM named name cannot start here now (nil if it can): a
// copy of it is registered and not done (see register).
func (a *Agent) stillRunning(name string) error {
	if name == "" {
		return nil
	}
	v, ok := a.lookup(name)
	if !ok {
		return nil
	}
	select {
	case <-v.done():
		return nil
	default:
	}
	st := v.status()
	return fmt.Errorf("vm %q is still running on %s as %s (%s)", name, a.cfg.Host, st.Role, st.State)
}

// unregister forgets a VM that failed to start, if it is still the registered one.
func (a *Agent) unregister(name string, v vmRunner) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.vms[name] == v {
		delete(a.vms, name)
	}
}

func (a *Agent) lookup(name string) (vmRunner, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	v, ok := a.vms[name]
	return v, ok
}

func (a *Agent) handle(ctx context.Context, req control.Request) control.Response {
	fail := func(err error) control.Response {
		a.log.Warn("request failed", "op", req.Op, "vm", req.VM, "err", err)
		return control.Response{Host: a.cfg.Host, Error: err.Error()}
	}
	ok := func(msg string) control.Response { return control.Response{OK: true, Host: a.cfg.Host, Message: msg} }
	switch req.Op {
	case control.OpPing:
		return ok("pong")
	case control.OpDefine:
		if req.Spec == nil {
			return fail(errors.New("define: no spec given"))
		}
		if req.Spec.Disk != "" {
			// protect copies and verify hashes only this file: refuse one that reads
			// data from others (a backing file, an external data file).
			if err := disk.CheckStandalone(req.Spec.Disk); err != nil {
				return fail(fmt.Errorf("define %s: disk: %w", req.Spec.Name, err))
			}
		}
		if err := a.specs.Save(*req.Spec); err != nil {
			return fail(err)
		}
		return ok(fmt.Sprintf("vm %s defined", req.Spec.Name))
	case control.OpStatus:
		resp := a.status(req.VM)
		if req.VM != "" && len(resp.VMs) == 0 {
			return fail(fmt.Errorf("vm %q is not running on %s", req.VM, a.cfg.Host))
		}
		return resp
	case control.OpEvents:
		if a.journal == nil {
			return fail(errors.New("this agent keeps no journal"))
		}
		limit := req.Limit
		if limit <= 0 {
			limit = control.DefaultEventLimit
		}
		evs, err := a.journal.Read(req.VM, min(limit, control.MaxEventLimit))
		if err != nil {
			return fail(err)
		}
		resp := ok("")
		resp.Events = evs
		return resp
	case control.OpProtect, control.OpRun:
		if req.Op == control.OpProtect && req.Backup != "" {
			// A VM that runs here unprotected (ftvmd run, a survivor after a
			// failover) is protected from its running state.
			if v, found := a.lookup(req.VM); found {
				p, isPrimary := v.(*primary)
				select {
				case <-v.done():
				default:
					if !isPrimary {
						return fail(fmt.Errorf("vm %q runs on %s as %s", req.VM, a.cfg.Host, v.status().Role))
					}
					msg, err := p.protectRunning(ctx, withPort(req.Backup))
					if err != nil {
						return fail(err)
					}
					return ok(msg)
				}
			}
		}
		spec, err := a.specs.Load(req.VM)
		if err != nil {
			return fail(err)
		}
		if req.Op == control.OpProtect && req.Backup == "" {
			return fail(errors.New("protect: --backup <host[:port]> is required"))
		}
		backup := ""
		if req.Op == control.OpProtect {
			backup = withPort(req.Backup)
		}
		own, err := a.checkOwner(ctx, spec.Name, req.Force)
		if err != nil {
			return fail(err)
		}
		if err := a.startOwned(ctx, spec, backup, own, keepOpts{diskCopy: req.KeepDiskCopy, log: req.KeepLog || req.KeepDiskCopy}); err != nil {
			return fail(err)
		}
		if backup == "" {
			return ok(fmt.Sprintf("vm %s running unprotected on %s", spec.Name, a.cfg.Host))
		}
		return ok(fmt.Sprintf("vm %s protected: primary on %s, backup on %s", spec.Name, a.cfg.Host, backup))
	case control.OpUnprotect:
		v, found := a.lookup(req.VM)
		p, isPrimary := v.(*primary)
		if !found || !isPrimary {
			return fail(fmt.Errorf("vm %q has no primary on %s", req.VM, a.cfg.Host))
		}
		if err := p.unprotect(ctx, "operator request"); err != nil {
			return fail(err)
		}
		return ok(fmt.Sprintf("vm %s now runs unprotected on %s", req.VM, a.cfg.Host))
	case control.OpFailover:
		v, found := a.lookup(req.VM)
		p, isPrimary := v.(*primary)
		if !found || !isPrimary {
			return fail(fmt.Errorf("vm %q has no primary on %s (run failover on the primary's host)", req.VM, a.cfg.Host))
		}
		if err := p.handover(ctx); err != nil {
			return fail(err)
		}
		return ok(fmt.Sprintf("vm %s handed over to %s", req.VM, p.bkHost()))
	case control.OpVerify:
		v, found := a.lookup(req.VM)
		p, isPrimary := v.(*primary)
		if !found || !isPrimary {
			return fail(fmt.Errorf("vm %q has no primary on %s (run verify on the primary's host)", req.VM, a.cfg.Host))
		}
		msg, err := p.verify(ctx)
		if err != nil {
			return fail(err)
		}
		return ok(msg)
	case control.OpStop:
		v, found := a.lookup(req.VM)
		if !found {
			return fail(fmt.Errorf("vm %q is not running on %s", req.VM, a.cfg.Host))
		}
		sctx, cancel := context.WithTimeout(ctx, stopTimeout)
		defer cancel()
		if err := v.stop(sctx); err != nil {
			return fail(err)
		}
		return ok(fmt.Sprintf("vm %s stopped on %s", req.VM, a.cfg.Host))
	case control.OpTestAckDelay:
		if !a.cfg.TestKnobs {
			return fail(errors.New("test knobs are disabled on this agent (--test-knobs)"))
		}
		v, found := a.lookup(req.VM)
		b, isBackup := v.(*backup)
		if !found || !isBackup {
			return fail(fmt.Errorf("vm %q has no backup on %s", req.VM, a.cfg.Host))
		}
		if err := b.setAckDelay(time.Duration(req.AckDelayMS) * time.Millisecond); err != nil {
			return fail(err)
		}
		return ok(fmt.Sprintf("ack delay of %s set to %d ms", req.VM, req.AckDelayMS))
	case control.OpTestDiverge:
		if !a.cfg.TestKnobs {
			return fail(errors.New("test knobs are disabled on this agent (--test-knobs)"))
		}
		v, found := a.lookup(req.VM)
		b, isBackup := v.(*backup)
		if !found || !isBackup {
			return fail(fmt.Errorf("vm %q has no backup on %s", req.VM, a.cfg.Host))
		}
		b.testDiverge()
		return ok(fmt.Sprintf("the sentinel of %s will see its replay's console differ", req.VM))
	default:
		return fail(fmt.Errorf("unknown operation %q", req.Op))
	}
}

// Snapshot is the agent's whole status: every VM it runs, its peers and its per-VM
// counters, as `ftvmd status` shows them. The metrics exporter reads it at each
// scrape.
func (a *Agent) Snapshot() control.Response { return a.status("") }

// status is Snapshot for vm's copy only when vm is not empty.
func (a *Agent) status(vm string) control.Response {
	resp := control.Response{OK: true, Host: a.cfg.Host}
	a.mu.Lock()
	runners := make([]vmRunner, 0, len(a.vms))
	for name, v := range a.vms {
		if vm == "" || vm == name {
			runners = append(runners, v)
		}
	}
	a.mu.Unlock()
	for _, v := range runners {
		resp.VMs = append(resp.VMs, v.status())
	}
	sort.Slice(resp.VMs, func(i, j int) bool { return resp.VMs[i].Name < resp.VMs[j].Name })
	resp.Peers = a.peers.snapshot()
	resp.Counters = a.history.snapshot(vm)
	return resp
}

// Close releases what New opened (the journal, when New opened it).
func (a *Agent) Close() error {
	if c, ok := a.journal.(interface{ Close() error }); ok && a.cfg.Journal == nil {
		return c.Close()
	}
	return nil
}

func withPort(hostport string) string {
	if _, _, err := net.SplitHostPort(hostport); err == nil {
		return hostport
	}
	return net.JoinHostPort(hostport, fmt.Sprint(DefaultPeerPort))
}

func (a *Agent) vmDir(name, role string) string {
	return filepath.Join(a.cfg.StateDir, "run", name+"."+role)
}

// newCgroupFor creates (or reuses) the cgroup of this host's copy of a VM: name
// is the VM's, with "-backup" for a backup's replay.
func newCgroupFor(a *Agent, name string) (*throttle.Cgroup, error) {
	return throttle.NewCgroup(a.cfg.CgroupRoot, cgroupPrefix(a.cfg.Host)+name, a.cfg.CPUs)
}

// cgroupPrefix starts the name of every cgroup the agent of host makes.
func cgroupPrefix(host string) string { return host + "-" }

// removeStaleCgroups removes the cgroups of this host's VMs that no process is
// in. The agent removes a VM's cgroup when the VM stops, but an agent that was
// killed (SIGKILL, or a host that is a namespace losing every process in a drill)
// leaves them behind, one or two for every VM it ever ran. Run calls it before
// it serves anything, so no VM of its own is starting; a QEMU that outlived its
// agent keeps its cgroup (throttle.RemoveStale leaves a cgroup with a process).
func (a *Agent) removeStaleCgroups() {
	if a.cfg.CgroupRoot == "" {
		return
	}
	removed, err := throttle.RemoveStale(a.cfg.CgroupRoot, cgroupPrefix(a.cfg.Host))
	if len(removed) > 0 {
		a.log.Info("removed cgroups left by an earlier run", "cgroups", removed)
	}
	if err != nil {
		a.log.Warn("stale cgroups", "err", err)
	}
}
