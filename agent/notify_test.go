package agent

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/sdnotify"
)

// fakeVM is a vmRunner that only reports a status.
type fakeVM struct {
	st   control.VMStatus
	quit chan struct{}
}

func (f *fakeVM) status() control.VMStatus { return f.st }
func (f *fakeVM) stop(context.Context) error {
	select {
	case <-f.quit:
	default:
		close(f.quit)
	}
	return nil
}
func (f *fakeVM) done() <-chan struct{}              { return f.quit }
func (f *fakeVM) shutdown(ctx context.Context) error { return f.stop(ctx) }

// TestAgentNotifiesServiceManager: through a real notify socket (a fake service
// manager), the agent sends READY=1 only when its control socket and peer port
// answer, refreshes STATUS when its VMs change, and sends STOPPING=1 on shutdown.
func TestAgentNotifiesServiceManager(t *testing.T) {
	old := statusEvery
	statusEvery = 20 * time.Millisecond
	t.Cleanup(func() { statusEvery = old })

	sock := filepath.Join(t.TempDir(), "notify")
	mgr, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	t.Setenv(sdnotify.EnvSocket, sock)
	n, err := sdnotify.FromEnv()
	if err != nil {
		t.Fatal(err)
	}

	ca := newTestCA(t)
	a := testAgent(t, "hosta", ca.issue("hosta"))
	a.engine.Name = "test-engine"
	a.cfg.Notify = func(lines ...string) {
		if err := n.Notify(lines...); err != nil {
			t.Errorf("notify: %v", err)
		}
	}
	recv := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		_ = mgr.SetReadDeadline(time.Now().Add(10 * time.Second))
		k, err := mgr.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:k])
	}

	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()

	ready := recv()
	if !strings.HasPrefix(ready, "READY=1\nSTATUS=peers on 127.0.0.1:") || !strings.Contains(ready, "engine test-engine; 0 VMs") {
		t.Fatalf("first notification %q: want READY=1 and the status", ready)
	}
	// Ready means serving: both listeners answer now.
	cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
	if _, err := control.Call(cctx, a.cfg.Socket, control.Request{Op: control.OpPing}); err != nil {
		t.Errorf("control socket not answering at READY=1: %v", err)
	}
	ccancel()
	peer := strings.SplitN(strings.SplitN(ready, "STATUS=peers on ", 2)[1], ",", 2)[0]
	if c, err := net.DialTimeout("tcp", peer, 2*time.Second); err != nil {
		t.Errorf("peer port %s not listening at READY=1: %v", peer, err)
	} else {
		c.Close()
	}

	// A VM appears: the STATUS line follows.
	a.mu.Lock()
	a.vms["web1"] = &fakeVM{st: control.VMStatus{Name: "web1", Role: "primary", State: "protected"}, quit: make(chan struct{})}
	a.mu.Unlock()
	if got := recv(); !strings.HasPrefix(got, "STATUS=") || !strings.HasSuffix(got, "1 VMs: web1 primary protected\n") {
		t.Fatalf("status after a VM started: %q", got)
	}

	cancel()
	if got := recv(); !strings.HasPrefix(got, "STOPPING=1\nSTATUS=stopping: 1 VMs") {
		t.Fatalf("shutdown notification %q", got)
	}
	if err := <-runErr; err != nil {
		t.Fatalf("Run: %v", err)
	}
}
