package agent

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/throttle"
)

// An agent killed with its QEMUs (a power loss; a drill's SIGKILL of every
// process of a lab host) leaves its VMs' cgroups behind. The next start of that
// host's agent removes them before it serves, and leaves another host's and one
// a QEMU that outlived its agent is still in. Drives the host's real cgroups,
// with names only this test uses.
func TestAgentRemovesStaleCgroupsAtStart(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root (cgroups)")
	}
	const root = "/sys/fs/cgroup"
	host := fmt.Sprintf("cgsweep%d", os.Getpid())
	ca := newTestCA(t)
	a := testAgent(t, host, ca.issue(host))
	a.cfg.CgroupRoot = root

	mk := func(name string) *throttle.Cgroup {
		t.Helper()
		g, err := throttle.NewCgroup(root, name, "0")
		if err != nil {
			if os.Getenv("FTVMD_REQUIRE_ROOT") == "1" {
				t.Fatal(err)
			}
			t.Skip(err)
		}
		t.Cleanup(func() { _ = g.Remove() })
		return g
	}
	primary, backup := mk(host+"-vm1"), mk(host+"-vm2-backup") // the killed agent's
	other := mk(host + "x-vm1")                                // empty, but host cgsweep<pid>x's
	running := mk(host + "-vm3")
	qemu := exec.Command("sleep", "60") // stands in for a QEMU that outlived its agent
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = qemu.Process.Kill(); _ = qemu.Wait() })
	if err := running.Add(qemu.Process.Pid); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	runErr := make(chan error, 1)
	go func() { runErr <- a.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	// The control socket answers once the agent serves: the sweep came before.
	deadline := time.Now().Add(10 * time.Second)
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		_, err := control.Call(cctx, a.cfg.Socket, control.Request{Op: control.OpPing})
		ccancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not serving: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, g := range []*throttle.Cgroup{primary, backup} {
		for _, d := range g.Dirs() {
			if _, err := os.Stat(d); !os.IsNotExist(err) {
				t.Errorf("stale cgroup %s still there (%v)", d, err)
			}
		}
	}
	for _, g := range []*throttle.Cgroup{other, running} {
		for _, d := range g.Dirs() {
			if _, err := os.Stat(d); err != nil {
				t.Errorf("cgroup %s was removed: %v", d, err)
			}
		}
	}
}
