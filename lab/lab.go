// Package lab drives the one-machine lab of test/lab/lab.sh from Go: hypervisor hosts
// A and B (agents), a spare hypervisor host D (its agent runs only in the tests that
// start it), a client host C, a bridge between them and a shared-storage directory. It
// is a non-test package (like hashicorp/raft's testing.go) so both the end-to-end
// tests and `ftvmd bench` use it.
package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/control"
)

// Fixed lab layout; the same constants as test/lab/lab.env.
const (
	NSA, NSB, NSC = "ftlab-a", "ftlab-b", "ftlab-c"
	NSD           = "ftlab-d"
	NSNet         = "ftlab-net" // the bridge between the hosts: ports port-a, port-b, port-c, port-d
	IPA, IPB, IPC = "10.77.0.1", "10.77.0.2", "10.77.0.10"
	IPD           = "10.77.0.3"
	GuestIP       = "10.77.0.100"
	GuestPort     = 7000
	GuestMAC      = "52:54:00:12:34:56"
	Root          = "/var/lib/ftvmd-lab"
	PeerPort      = 7800
	// IperfPort is where the guest's iperf3 server listens (test/guest/build.sh).
	IperfPort = 5201
	// CgroupRoot is where the lab binds /sys/fs/cgroup for agents in namespaces.
	CgroupRoot = "/run/ftvmd-lab-cgroup"
	// LockPath is locked (flock) by whoever has the lab up, from Up to Down. The
	// machine has one lab and bringing one up tears the old one down: without the
	// lock a second user (a test, a benchmark, test/demo.sh) silently kills the
	// first one's agents and namespaces mid-run. The file names the holder.
	LockPath = "/run/ftvmd-lab.lock"
)

// ErrInUse: another process has the lab up.
var ErrInUse = errors.New("the lab is in use")

// lockLab takes the lab's lock without waiting and records who holds it. The
// descriptor is close-on-exec, so agents and QEMUs the holder starts do not keep
// the lock after it exits.
func lockLab(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lab lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder, _ := io.ReadAll(io.LimitReader(f, 512))
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (%s: %s); wait for it or stop it first", ErrInUse, path, strings.TrimSpace(string(holder)))
		}
		return nil, fmt.Errorf("lab lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(fmt.Sprintf("pid %d: %s\n", os.Getpid(), strings.Join(os.Args, " "))), 0)
	}
	return f, nil
}

func bindCgroups() error {
	if out, err := exec.Command("mountpoint", "-q", CgroupRoot).CombinedOutput(); err == nil {
		return nil
	} else if len(out) > 0 {
		return fmt.Errorf("mountpoint %s: %s", CgroupRoot, out)
	}
	if err := os.MkdirAll(CgroupRoot, 0o755); err != nil {
		return err
	}
	if out, err := exec.Command("mount", "--rbind", "/sys/fs/cgroup", CgroupRoot).CombinedOutput(); err != nil {
		return fmt.Errorf("bind cgroups for the lab: %v: %s", err, out)
	}
	return nil
}

// Host is one hypervisor host of the lab.
type Host struct {
	Name   string // "a", "b" or "d"
	NS     string
	IP     string
	Dir    string
	Socket string
	CPUs   string
}

// Hosts of the lab.
var (
	HostA = Host{Name: "a", NS: NSA, IP: IPA, Dir: Root + "/a", Socket: Root + "/a/ftvmd.sock", CPUs: "0"}
	HostB = Host{Name: "b", NS: NSB, IP: IPB, Dir: Root + "/b", Socket: Root + "/b/ftvmd.sock", CPUs: "1"}
	// HostD is a spare host, a backup to fall back on once A or B is lost. It
	// shares A's CPU: a test runs a QEMU on D only after it killed host A, as
	// the machine has two CPUs. No agent runs on D unless a test starts one.
	HostD = Host{Name: "d", NS: NSD, IP: IPD, Dir: Root + "/d", Socket: Root + "/d/ftvmd.sock", CPUs: "0"}
	// Hypervisors are the lab's hosts that can run agents.
	Hypervisors = []Host{HostA, HostB, HostD}
)

// HostByName is the hypervisor host named name ("a", "b" or "d").
func HostByName(name string) (Host, bool) {
	for _, h := range Hypervisors {
		if h.Name == name {
			return h, true
		}
	}
	return Host{}, false
}

// Peer is the host's agent address.
func (h Host) Peer() string { return net.JoinHostPort(h.IP, fmt.Sprint(PeerPort)) }

// Lab is a running lab. Create with Up, end with Down.
type Lab struct {
	Repo     string
	Bin      string // build/ftvmd
	FlushLib string
	Kernel   string
	Initrd   string
	Logf     func(format string, args ...any)

	mu     sync.Mutex
	agents map[string]*exec.Cmd
	waits  map[string]chan error
	lock   *os.File // LockPath, held from Up to Down
}

// FindRepo walks up from the working directory to the directory holding go.mod.
func FindRepo() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.mod")); err == nil {
			return d, nil
		}
		p := filepath.Dir(d)
		if p == d {
			return "", errors.New("lab: go.mod not found above the working directory")
		}
		d = p
	}
}

// Check reports what is missing to run the lab: root, the built binary, the flush
// library, the guest image, QEMU.
func Check(repo string) error {
	var errs []error
	if os.Getuid() != 0 {
		errs = append(errs, errors.New("must run as root"))
	}
	for _, p := range []string{"build/ftvmd", "build/libftflush.so", "build/guest/vmlinuz", "build/guest/initrd.img"} {
		if _, err := os.Stat(filepath.Join(repo, p)); err != nil {
			errs = append(errs, fmt.Errorf("%s missing (run test/setup.sh)", p))
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		errs = append(errs, errors.New("qemu-system-x86_64 not installed (run test/setup.sh)"))
	}
	return errors.Join(errs...)
}

// Up brings the lab up (fresh: an old lab is torn down first) and makes TLS keys.
// It fails with ErrInUse while another process has the lab up.
func Up(ctx context.Context, repo string, logf func(string, ...any)) (_ *Lab, err error) {
	if err := Check(repo); err != nil {
		return nil, err
	}
	lock, err := lockLab(LockPath)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			lock.Close()
		}
	}()
	l := &Lab{lock: lock,
		Repo: repo, Bin: filepath.Join(repo, "build/ftvmd"), FlushLib: filepath.Join(repo, "build/libftflush.so"),
		Kernel: filepath.Join(repo, "build/guest/vmlinuz"), Initrd: filepath.Join(repo, "build/guest/initrd.img"),
		Logf: logf, agents: map[string]*exec.Cmd{}, waits: map[string]chan error{},
	}
	script := filepath.Join(repo, "test/lab/lab.sh")
	if out, err := exec.CommandContext(ctx, "bash", script, "down", "--purge").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("lab down: %v: %s", err, out)
	}
	if out, err := exec.CommandContext(ctx, "bash", script, "up").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("lab up: %v: %s", err, out)
	}
	// `ip netns exec` mounts a fresh /sys, hiding the cgroup hierarchy: agents in the
	// lab reach it through a bind mount instead.
	if err := bindCgroups(); err != nil {
		return nil, err
	}
	ca := filepath.Join(Root, "ca")
	if _, err := l.Run(ctx, "", "keys", "init", "--ca", ca); err != nil {
		return nil, err
	}
	for _, h := range Hypervisors {
		if _, err := l.Run(ctx, "", "keys", "issue", h.Name, "--ca", ca, "--out", filepath.Join(h.Dir, "keys"), "--ip", h.IP); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// Down stops the agents (SIGTERM, then the lab script kills what is left) and removes
// the namespaces. Logs stay in Root for inspection unless purge.
func (l *Lab) Down(purge bool) error {
	// Both at once: an agent stopped alone hands a protected VM over to its
	// backup first (docs/failover-guarantees.md), a go-live the teardown would
	// only wait for and then stop. Stopped together, the backup's stop ends the
	// handover at once. (A host whose agent is not running is skipped.)
	var wg sync.WaitGroup
	for _, h := range Hypervisors {
		wg.Add(1)
		go func() { defer wg.Done(); l.StopAgent(h) }()
	}
	wg.Wait()
	args := []string{filepath.Join(l.Repo, "test/lab/lab.sh"), "down"}
	if purge {
		args = append(args, "--purge")
	}
	out, err := exec.Command("bash", args...).CombinedOutput()
	if l.lock != nil {
		l.lock.Close() // releases the flock
		l.lock = nil
	}
	if err != nil {
		return fmt.Errorf("lab down: %v: %s", err, out)
	}
	return nil
}

// AgentLog is where a host's agent writes its log.
func AgentLog(h Host) string { return filepath.Join(Root, "agent-"+h.Name+".log") }

// StartAgent runs `ftvmd agent` inside the host's namespace and waits for its socket.
func (l *Lab) StartAgent(ctx context.Context, h Host, extra ...string) error {
	logf, err := os.OpenFile(AgentLog(h), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	// --config "": a config file this host may have (/etc/ftvmd/agent.toml) is
	// not the lab's; the lab sets everything on the command line.
	args := append([]string{"netns", "exec", h.NS, l.Bin, "agent", "--config", "",
		"--host", h.Name, "--state-dir", h.Dir, "--listen", h.Peer(), "--cpus", h.CPUs,
		"--flush-lib", l.FlushLib, "--cgroup-root", CgroupRoot, "--peer-timeout", "3s", "--test-knobs", "--check-invariant", "--shared-dir", Root + "/shared", "--bridge", "br0", "--log-level", "debug"}, extra...)
	cmd := exec.Command("ip", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("start agent %s: %w", h.Name, err)
	}
	wait := make(chan error, 1)
	go func() { wait <- cmd.Wait(); logf.Close() }()
	l.mu.Lock()
	l.agents[h.Name], l.waits[h.Name] = cmd, wait
	l.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := control.Call(cctx, h.Socket, control.Request{Op: control.OpPing})
		cancel()
		if err == nil {
			l.logf("agent %s up (pid %d)", h.Name, cmd.Process.Pid)
			return nil
		}
		select {
		case err := <-wait:
			wait <- err
			return fmt.Errorf("agent %s exited: %v (see %s)", h.Name, err, AgentLog(h))
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent %s did not come up: %v (see %s)", h.Name, err, AgentLog(h))
		}
	}
}

// AgentPID is the pid of the agent this lab started on h, 0 if none runs. `ip netns
// exec` execs the agent in place, so the command's pid is the agent's.
func (l *Lab) AgentPID(h Host) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cmd := l.agents[h.Name]; cmd != nil && cmd.Process != nil {
		return cmd.Process.Pid
	}
	return 0
}

// StopAgent stops a host's agent gracefully (it stops its VMs).
func (l *Lab) StopAgent(h Host) {
	l.mu.Lock()
	cmd, wait := l.agents[h.Name], l.waits[h.Name]
	delete(l.agents, h.Name)
	l.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(os.Interrupt)
	select {
	case <-wait:
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-wait
	}
}

// SignalAgent sends sig to a host's agent and waits up to timeout for it to exit,
// as a service manager's stop or restart does (SIGTERM); the agent is forgotten
// either way, so StartAgent can start it again. It fails when no agent runs there or
// the agent outlives the timeout (it is then SIGKILLed).
func (l *Lab) SignalAgent(h Host, sig os.Signal, timeout time.Duration) error {
	l.mu.Lock()
	cmd, wait := l.agents[h.Name], l.waits[h.Name]
	delete(l.agents, h.Name)
	l.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("no agent of this lab runs on host %s", h.Name)
	}
	if err := cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal agent %s: %w", h.Name, err)
	}
	select {
	case <-wait:
		return nil
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-wait
		return fmt.Errorf("agent %s did not exit within %s of %v; killed", h.Name, timeout, sig)
	}
}

func (l *Lab) logf(format string, args ...any) {
	if l.Logf != nil {
		l.Logf(format, args...)
	}
}

// Run runs the ftvmd CLI against a host's agent ("" runs it in the root namespace
// without a socket, for commands like keys).
func (l *Lab) Run(ctx context.Context, host string, args ...string) (string, error) {
	var cmd *exec.Cmd
	switch host {
	case "":
		cmd = exec.CommandContext(ctx, l.Bin, args...)
	default:
		h, ok := HostByName(host)
		if !ok {
			return "", fmt.Errorf("ftvmd %s: no lab host %q (want a, b or d)", strings.Join(args, " "), host)
		}
		cmd = exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, l.Bin, "--socket", h.Socket}, args...)...)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ftvmd %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// DefineGuest defines the lab guest on a host. appendExtra goes on its kernel
// command line (e.g. "ft.busy=1").
func (l *Lab) DefineGuest(ctx context.Context, h Host, name, appendExtra string, extraFlags ...string) error {
	app := "console=ttyS0 quiet panic=-1 ft.ip=" + GuestIP + "/24 " + appendExtra
	args := append([]string{"vm", "define", name, "--kernel", l.Kernel, "--initrd", l.Initrd,
		"--mac", GuestMAC, "--append", strings.TrimSpace(app)}, extraFlags...)
	_, err := l.Run(ctx, h.Name, args...)
	return err
}

// Status asks a host's agent for one VM's status.
func Status(ctx context.Context, h Host, vm string) (control.VMStatus, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := control.Call(cctx, h.Socket, control.Request{Op: control.OpStatus, VM: vm})
	if err != nil {
		return control.VMStatus{}, err
	}
	if len(resp.VMs) != 1 {
		return control.VMStatus{}, fmt.Errorf("status of %s on %s: %d entries", vm, h.Name, len(resp.VMs))
	}
	return resp.VMs[0], nil
}

// Console is the path of a VM's console log on a host, by role.
func Console(h Host, vm, role string) string {
	return filepath.Join(h.Dir, "run", vm+"."+role, "console.log")
}

// WaitConsole waits until the console file contains substr.
func WaitConsole(ctx context.Context, path, substr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), substr) {
			return nil
		}
		if time.Now().After(deadline) {
			tail := string(b)
			if len(tail) > 500 {
				tail = tail[len(tail)-500:]
			}
			return fmt.Errorf("%q did not appear on %s within %s; console ends: %q", substr, path, timeout, tail)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// DialFromClient opens a TCP connection from the client host's namespace: a real
// client on another host of the lab, not a loopback shortcut.
func DialFromClient(ctx context.Context, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromName(NSC)
	if err != nil {
		return nil, fmt.Errorf("client netns %s: %w", NSC, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		return nil, fmt.Errorf("enter %s: %w", NSC, err)
	}
	defer func() { _ = netns.Set(orig) }()
	// The socket is created in NSC and stays there after we switch back.
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// Client is a line-protocol client of the guest service.
type Client struct {
	Conn net.Conn
	r    *bufio.Reader
}

// NewClient dials the guest's service from the client host, retrying until timeout.
func NewClient(ctx context.Context, timeout time.Duration) (*Client, error) {
	deadline := time.Now().Add(timeout)
	addr := net.JoinHostPort(GuestIP, fmt.Sprint(GuestPort))
	for {
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := DialFromClient(dctx, addr)
		cancel()
		if err == nil {
			return &Client{Conn: c, r: bufio.NewReader(c)}, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("connect to guest %s from client host: %w", addr, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Do sends one request line and reads one response line.
func (c *Client) Do(req string, timeout time.Duration) (string, error) {
	_ = c.Conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c.Conn, "%s\n", req); err != nil {
		return "", err
	}
	line, err := c.r.ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

// Close closes the connection.
func (c *Client) Close() error { return c.Conn.Close() }

// ReadLine reads one response line (for requests written to Conn directly).
func (c *Client) ReadLine() (string, error) {
	line, err := c.r.ReadString('\n')
	return strings.TrimRight(line, "\r\n"), err
}

// Reader is the buffered reader behind the client, for bulk responses.
func (c *Client) Reader() *bufio.Reader { return c.r }

// CreateImage makes a qcow2 image for a lab guest on a host; opts are extra
// qemu-img create options (e.g. "preallocation=full" to write every byte).
func CreateImage(h Host, name string, size string, opts ...string) (string, error) {
	dir := filepath.Join(h.Dir, "images")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	p := filepath.Join(dir, name+".qcow2")
	_ = os.Remove(p)
	args := []string{"create", "-q", "-f", "qcow2"}
	for _, o := range opts {
		args = append(args, "-o", o)
	}
	if out, err := exec.Command("qemu-img", append(args, p, size)...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("qemu-img create %s: %v: %s", p, err, out)
	}
	return p, nil
}
