package agent

import (
	"bytes"
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/throttle"
	"github.com/ftvmd/ftvmd/vmspec"
)

// testCA is a certificate authority made in the test; issue writes a host's keys
// (certificate named name, with 127.0.0.1 as an IP SAN so peers can dial it).
type testCA struct {
	t   *testing.T
	dir string
}

func newTestCA(t *testing.T) testCA {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "ca")
	if err := logging.InitCA(dir, "test CA"); err != nil {
		t.Fatal(err)
	}
	return testCA{t: t, dir: dir}
}

func (ca testCA) issue(name string) string {
	ca.t.Helper()
	out := filepath.Join(ca.t.TempDir(), "keys-"+name)
	if err := logging.IssueHost(ca.dir, out, name, []net.IP{net.IPv4(127, 0, 0, 1)}); err != nil {
		ca.t.Fatal(err)
	}
	return out
}

// testLogger sends an agent's log to the test's log.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(newTestWriter(t, nil), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// testWriter writes to the test's log and keeps a copy for assertions. Lines
// written after the test ended (by a goroutine the agent ends asynchronously, such
// as a teardown) are dropped: t.Log then is a race with the test's end.
type testWriter struct {
	t    *testing.T
	keep *logCopy
	end  *testEnd
}

type testEnd struct {
	mu   sync.Mutex
	done bool
}

func newTestWriter(t *testing.T, keep *logCopy) testWriter {
	e := &testEnd{}
	t.Cleanup(func() { e.mu.Lock(); e.done = true; e.mu.Unlock() })
	return testWriter{t: t, keep: keep, end: e}
}

func (w testWriter) Write(b []byte) (int, error) {
	w.end.mu.Lock()
	defer w.end.mu.Unlock()
	if !w.end.done {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	if w.keep != nil {
		w.keep.mu.Lock()
		w.keep.b.Write(b)
		w.keep.mu.Unlock()
	}
	return len(b), nil
}

type logCopy struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logCopy) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// captureLog makes a log to the test's log and returns what it wrote so far.
func captureLog(t *testing.T, a *Agent) *logCopy {
	keep := new(logCopy)
	a.log = slog.New(slog.NewTextHandler(newTestWriter(t, keep), &slog.HandlerOptions{Level: slog.LevelDebug})).With("host", a.cfg.Host)
	return keep
}

// testAgent is an Agent named host with its keys in keysDir, with no QEMU, control
// socket or shared storage: enough to serve and open peer connections.
func testAgent(t *testing.T, host, keysDir string) *Agent {
	t.Helper()
	cfg := DefaultConfig(host, t.TempDir())
	cfg.KeysDir = keysDir
	cfg.Listen = "127.0.0.1:0"
	cfg.Socket = filepath.Join(cfg.StateDir, "ftvmd.sock")
	cfg.Logger = testLogger(t)
	// Unit tests stay off the host's cgroups; a test that means them sets it.
	cfg.CgroupRoot = ""
	return &Agent{
		cfg:   cfg,
		log:   cfg.Logger.With("host", host),
		specs: vmspec.Store{Dir: filepath.Join(cfg.StateDir, "vms")},
		vms:   map[string]vmRunner{},
	}
}

// servePeersTLS runs a.servePeers on a loopback TLS listener until the test ends
// and returns its address.
func servePeersTLS(t *testing.T, a *Agent) string {
	t.Helper()
	cfg, err := logging.ServerTLS(a.cfg.KeysDir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = a.servePeers(ctx, ln) }()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return ln.Addr().String()
}

// helloAs dials addr with the keys in keysDir, sends hello and returns the reply.
func helloAs(t *testing.T, addr, keysDir string, hello peerHello) (peerReply, error) {
	t.Helper()
	cfg, err := logging.ClientTLS(keysDir, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := logging.Dial(ctx, addr, cfg, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := logging.WriteHello(conn, hello); err != nil {
		return peerReply{}, err
	}
	var r peerReply
	err = logging.ReadHelloReply(conn, &r)
	return r, err
}

// fakeBackup accepts one connection on a loopback TLS listener with the keys in
// keysDir, reads the Hello, answers reply and then reports the next message the
// primary sends (or the read error).
func fakeBackup(t *testing.T, keysDir string, reply peerReply) (addr string, next <-chan logging.Message) {
	t.Helper()
	cfg, err := logging.ServerTLS(keysDir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan logging.Message, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(ch)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		var h peerHello
		if err := logging.ReadHello(c, &h); err != nil {
			t.Logf("fake backup: %v", err)
			return
		}
		if err := logging.WriteHelloReply(c, reply); err != nil {
			t.Logf("fake backup: %v", err)
			return
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if m, err := logging.ReadMessage(c); err == nil {
			ch <- m
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	return ln.Addr().String(), ch
}

// testPrimary is a primary of a spec without disk, to be protected on peer, with no
// QEMU, relay or log yet; its lifecycle is starting.
func testPrimary(t *testing.T, a *Agent, peer string) *primary {
	t.Helper()
	p := &primary{a: a, spec: vmspec.Spec{Name: "vm1", LagBoundMS: vmspec.DefaultLagBoundMS}, peer: peer,
		log: a.log.With("vm", "vm1"), finished: make(chan struct{}),
		lags: newLagTracker(16), ctrl: throttle.NewController(vmspec.DefaultLagBoundMS * time.Millisecond), quota: 1}
	if err := p.newLife(); err != nil {
		t.Fatal(err)
	}
	return p
}
