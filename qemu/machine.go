package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
)

// Errors returned by Machine.
var (
	ErrAlreadyStarted = errors.New("qemu machine already started")
	ErrNotStarted     = errors.New("qemu machine not started")
	ErrExited         = errors.New("qemu process has exited")
)

// DefaultQMPTimeout bounds a QMP call whose context has no deadline.
const DefaultQMPTimeout = 5 * time.Second

// Handler is one named step of Machine.Start.
type Handler struct {
	Name string
	Fn   func(context.Context, *Machine) error
}

// HandlerList is an ordered list of start handlers. Its methods return a
// new list and leave the receiver unchanged.
type HandlerList []Handler

// Names of the default start handlers.
const (
	ValidateHandlerName            = "validate"
	CreateSnapshotDriveHandlerName = "create-snapshot-drive"
	StartProcessHandlerName        = "start-process"
	PlaceCgroupHandlerName         = "place-cgroup"
	ConnectQMPHandlerName          = "connect-qmp"
)

// DefaultHandlers is the start pipeline.
func DefaultHandlers() HandlerList {
	return HandlerList{
		{ValidateHandlerName, validateHandler},
		{CreateSnapshotDriveHandlerName, createSnapshotDriveHandler},
		{StartProcessHandlerName, startProcessHandler},
		{PlaceCgroupHandlerName, placeCgroupHandler},
		{ConnectQMPHandlerName, connectQMPHandler},
	}
}

// Append returns the list with hs added at the end.
func (l HandlerList) Append(hs ...Handler) HandlerList {
	return append(l[:len(l):len(l)], hs...)
}

// AppendAfter returns the list with h inserted after the handler named name
// (at the end if there is none).
func (l HandlerList) AppendAfter(name string, h Handler) HandlerList {
	out := make(HandlerList, 0, len(l)+1)
	done := false
	for _, x := range l {
		out = append(out, x)
		if !done && x.Name == name {
			out = append(out, h)
			done = true
		}
	}
	if !done {
		out = append(out, h)
	}
	return out
}

// Swap returns the list with every handler named h.Name replaced by h.
func (l HandlerList) Swap(h Handler) HandlerList {
	out := make(HandlerList, len(l))
	for i, x := range l {
		if x.Name == h.Name {
			x = h
		}
		out[i] = x
	}
	return out
}

// Remove returns the list without handlers named name.
func (l HandlerList) Remove(name string) HandlerList {
	out := make(HandlerList, 0, len(l))
	for _, x := range l {
		if x.Name != name {
			out = append(out, x)
		}
	}
	return out
}

// Has reports whether a handler named name is in the list.
func (l HandlerList) Has(name string) bool {
	for _, x := range l {
		if x.Name == name {
			return true
		}
	}
	return false
}

// Opt configures a Machine.
type Opt func(*Machine)

// WithLogger sets the logger (default: slog.Default()).
func WithLogger(l *slog.Logger) Opt { return func(m *Machine) { m.log = l } }

// WithCgroup sets a hook that places the process into a cgroup right after
// it starts. QEMU's first threads exist by then; they move with the process
// only where the hook writes to cgroup.procs (v1 and v2 do that).
func WithCgroup(fn func(pid int) error) Opt { return func(m *Machine) { m.cgroup = fn } }

// WithStdout sets the writer for QEMU's stdout.
func WithStdout(w io.Writer) Opt { return func(m *Machine) { m.stdout = w } }

// WithStderr sets the writer for QEMU's stderr.
func WithStderr(w io.Writer) Opt { return func(m *Machine) { m.stderr = w } }

// WithExtraFiles passes files to QEMU as fds 3, 4, ... (for example tap fds
// or the flush library's FTVMD_FLUSH_DEBUG fd).
func WithExtraFiles(files ...*os.File) Opt { return func(m *Machine) { m.extraFiles = files } }

// WithEnv adds KEY=VALUE entries to QEMU's environment.
func WithEnv(kv ...string) Opt { return func(m *Machine) { m.env = kv } }

// WithQMPTimeout sets the deadline of QMP calls whose context has none.
func WithQMPTimeout(d time.Duration) Opt { return func(m *Machine) { m.qmpTimeout = d } }

// Machine is one QEMU process.
type Machine struct {
	// Handlers is the start pipeline; edit it before Start.
	Handlers HandlerList

	cfgMu      sync.Mutex // guards cfg, which GoLiveInPlace changes
	cfg        Config
	log        *slog.Logger
	cgroup     func(pid int) error
	stdout     io.Writer
	stderr     io.Writer
	qmpTimeout time.Duration
	extraFiles []*os.File
	env        []string

	startMu sync.Mutex
	started bool

	cmd      *exec.Cmd
	cleanups []func() error

	monMu    sync.Mutex  // guards mon, raw, procGone
	mon      qmp.Monitor // a qmp.SocketMonitor on QEMU's socket (a test puts qmptest's fake here)
	raw      *raw.Monitor
	procGone bool

	cleanupOnce sync.Once
	cleanupErr  error

	exitCh  chan struct{}
	exitErr error // written before exitCh closes

	watch *runWatch // QMP events for WaitIOError

	calls sync.WaitGroup // QMP call goroutines

	probeMu sync.Mutex
	probe   *probeCall // the liveness probe in flight (see Probe); nil when none
}

// New returns an unstarted Machine.
func New(cfg Config, opts ...Opt) (*Machine, error) {
	m := &Machine{
		Handlers:   DefaultHandlers(),
		cfg:        cfg,
		log:        slog.Default(),
		qmpTimeout: DefaultQMPTimeout,
		exitCh:     make(chan struct{}),
		watch:      newRunWatch(),
	}
	for _, o := range opts {
		o(m)
	}
	if m.log == nil {
		return nil, errors.New("qemu: nil logger")
	}
	m.log = m.log.With("vm", cfg.Name)
	return m, nil
}

// Config returns the machine's config. After GoLiveInPlace it says what the
// process does now: Mode record, RRFile the new log.
func (m *Machine) Config() Config {
	m.cfgMu.Lock()
	defer m.cfgMu.Unlock()
	return m.cfg
}

// Start runs the handlers in order; at the first error it runs the cleanup
// stack in reverse order and returns the error.
func (m *Machine) Start(ctx context.Context) (err error) {
	m.startMu.Lock()
	if m.started {
		m.startMu.Unlock()
		return ErrAlreadyStarted
	}
	m.started = true
	m.startMu.Unlock()

	defer func() {
		if err != nil {
			if m.cmd != nil && m.cmd.Process != nil {
				_ = m.Kill()
				<-m.exitCh // the wait goroutine runs the cleanups
			} else if cerr := m.doCleanup(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}
	}()
	for _, h := range m.Handlers {
		m.log.Debug("qemu start handler", "handler", h.Name)
		if err := h.Fn(ctx, m); err != nil {
			return fmt.Errorf("qemu start %s: %w", h.Name, err)
		}
	}
	return nil
}

func (m *Machine) addCleanup(fn func() error) { m.cleanups = append(m.cleanups, fn) }

func (m *Machine) doCleanup() error {
	m.cleanupOnce.Do(func() {
		var errs []error
		for i := len(m.cleanups) - 1; i >= 0; i-- {
			if err := m.cleanups[i](); err != nil {
				errs = append(errs, err)
			}
		}
		m.cleanupErr = errors.Join(errs...)
	})
	return m.cleanupErr
}

func validateHandler(_ context.Context, m *Machine) error { return m.cfg.Validate() }

func createSnapshotDriveHandler(ctx context.Context, m *Machine) error {
	p := m.cfg.SnapshotDrive
	if p == "" {
		return nil
	}
	if _, err := os.Stat(p); err == nil {
		return nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("stat snapshot drive: %w", err)
	}
	out, err := exec.CommandContext(ctx, m.cfg.qemuImg(), "create", "-f", "qcow2", p, "64M").CombinedOutput()
	if err != nil {
		return fmt.Errorf("qemu-img create %s: %w: %s", p, err, out)
	}
	m.log.Info("created snapshot drive", "path", p)
	return nil
}

func startProcessHandler(_ context.Context, m *Machine) error {
	c := m.cfg
	// A stale QMP socket would let connect-qmp reach nothing.
	if err := os.Remove(c.QMPSocket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale qmp socket: %w", err)
	}
	if c.NIC != nil && c.NIC.LocalPath != "" {
		if err := os.Remove(c.NIC.LocalPath); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale nic socket: %w", err)
		}
	}
	cmd := exec.Command(c.binary(), c.Args()...) //nolint:gosec // argv built from Config
	cmd.Dir = c.Dir
	cmd.Env = append(append(os.Environ(), c.Env()...), m.env...)
	cmd.ExtraFiles = m.extraFiles
	cmd.Stdout, cmd.Stderr = m.stdout, m.stderr
	if (cmd.Stdout == nil || cmd.Stderr == nil) && c.Dir != "" {
		name := c.Name
		if name == "" {
			name = "qemu"
		}
		f, err := os.OpenFile(filepath.Join(c.Dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return fmt.Errorf("open qemu log: %w", err)
		}
		m.addCleanup(f.Close)
		if cmd.Stdout == nil {
			cmd.Stdout = f
		}
		if cmd.Stderr == nil {
			cmd.Stderr = f
		}
	}
	// Own process group: a terminal's ^C reaches the agent, which then
	// stops QEMU in order (QMP quit writes the log's END).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	m.log.Info("starting qemu", "binary", c.binary(), "args", cmd.Args[1:], "env", c.Env())
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("exec %s: %w", c.binary(), err)
	}
	m.startMu.Lock()
	m.cmd = cmd
	m.startMu.Unlock()
	m.addCleanup(func() error {
		if err := os.Remove(c.QMPSocket); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove qmp socket: %w", err)
		}
		return nil
	})
	go m.waitProcess()
	return nil
}

// waitProcess is the one goroutine that owns cmd.Wait.
func (m *Machine) waitProcess() {
	err := m.cmd.Wait()
	m.log.Info("qemu exited", "pid", m.cmd.Process.Pid, "err", err)
	m.monMu.Lock()
	m.procGone = true
	if m.mon != nil {
		// Unblocks any QMP call still waiting for an answer.
		_ = m.mon.Disconnect()
	}
	m.monMu.Unlock()
	m.calls.Wait()
	if cerr := m.doCleanup(); cerr != nil {
		m.log.Warn("qemu cleanup", "err", cerr)
	}
	m.exitErr = err
	close(m.exitCh)
}

func placeCgroupHandler(_ context.Context, m *Machine) error {
	if m.cgroup == nil {
		return nil
	}
	if err := m.cgroup(m.cmd.Process.Pid); err != nil {
		return fmt.Errorf("place pid %d: %w", m.cmd.Process.Pid, err)
	}
	return nil
}

func connectQMPHandler(ctx context.Context, m *Machine) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		mon, err := qmp.NewSocketMonitor("unix", m.cfg.QMPSocket, time.Second)
		if err == nil {
			if err := m.handshake(ctx, mon); err != nil {
				return err
			}
			m.monMu.Lock()
			defer m.monMu.Unlock()
			if m.procGone {
				_ = mon.Disconnect()
				return fmt.Errorf("connect qmp: %w", ErrExited)
			}
			m.mon, m.raw = mon, raw.NewMonitor(mon)
			evs, err := mon.Events(ctx)
			if err != nil {
				return fmt.Errorf("qmp events: %w", err)
			}
			go m.pumpEvents(evs) // ends when waitProcess disconnects the monitor
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("connect qmp %s: %w (last error: %v)", m.cfg.QMPSocket, ctx.Err(), err)
		case <-m.exitCh:
			return fmt.Errorf("connect qmp: %w: %v", ErrExited, m.exitErr)
		case <-tick.C:
		}
	}
}

// handshake runs go-qemu's Connect (banner + qmp_capabilities), which has no
// deadline of its own, under ctx.
func (m *Machine) handshake(ctx context.Context, mon *qmp.SocketMonitor) error {
	ctx, cancel := m.qmpContext(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- mon.Connect() }()
	select {
	case err := <-done:
		if err != nil {
			_ = mon.Disconnect()
			return fmt.Errorf("qmp handshake: %w", err)
		}
		m.log.Debug("qmp connected", "version", mon.Version.String())
		return nil
	case <-ctx.Done():
		_ = mon.Disconnect() // unblocks Connect
		<-done
		return fmt.Errorf("qmp handshake: %w", ctx.Err())
	}
}

// Wait blocks until the process exits or ctx ends. It returns the process's
// exit error.
func (m *Machine) Wait(ctx context.Context) error {
	if !m.isStarted() {
		return ErrNotStarted
	}
	select {
	case <-m.exitCh:
		return m.exitErr
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (m *Machine) isStarted() bool {
	m.startMu.Lock()
	defer m.startMu.Unlock()
	return m.started && m.cmd != nil
}

// Exited is closed once the process has exited and cleanup has run.
func (m *Machine) Exited() <-chan struct{} { return m.exitCh }

// ExitErr is the process's exit error; valid after Exited is closed.
func (m *Machine) ExitErr() error {
	select {
	case <-m.exitCh:
		return m.exitErr
	default:
		return nil
	}
}

// PID is the process id, 0 before start.
func (m *Machine) PID() int {
	m.startMu.Lock()
	defer m.startMu.Unlock()
	if m.cmd == nil || m.cmd.Process == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// Stop ends QEMU in order: QMP quit (a record log gets its final events and
// header), then SIGTERM (also a clean rr exit), then SIGKILL, waiting up to
// grace after each step.
func (m *Machine) Stop(ctx context.Context, grace time.Duration) error {
	if !m.isStarted() {
		return ErrNotStarted
	}
	wait := func() bool {
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-m.exitCh:
			return true
		case <-t.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
	if mon, _ := m.monitor(); mon != nil {
		qctx, cancel := context.WithTimeout(ctx, grace)
		err := m.Quit(qctx)
		cancel()
		if err != nil && !errors.Is(err, ErrExited) {
			m.log.Warn("qmp quit failed", "err", err)
		}
		if wait() {
			return nil
		}
	}
	if err := m.signal(syscall.SIGTERM); err != nil {
		return err
	}
	if wait() {
		return nil
	}
	m.log.Warn("qemu ignored quit and SIGTERM, killing", "pid", m.PID())
	if err := m.Kill(); err != nil {
		return err
	}
	select {
	case <-m.exitCh:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qemu stop: %w", ctx.Err())
	}
}

// Kill sends SIGKILL. A record log then lacks its header and final events.
func (m *Machine) Kill() error { return m.signal(syscall.SIGKILL) }

func (m *Machine) signal(sig syscall.Signal) error {
	if !m.isStarted() {
		return ErrNotStarted
	}
	select {
	case <-m.exitCh:
		return nil
	default:
	}
	if err := m.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %v to qemu: %w", sig, err)
	}
	return nil
}
