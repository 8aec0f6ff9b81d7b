package agent

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"

	"github.com/ftvmd/ftvmd/netbuf"
	"github.com/ftvmd/ftvmd/outputrule"
	"github.com/ftvmd/ftvmd/qemu"
	"github.com/ftvmd/ftvmd/throttle"
)

// outputPath holds a primary's guest output under the output rule: netbuf.Relay on
// the relay path, netbuf.Hold on the tap path.
type outputPath interface {
	Run(context.Context) error
	Ack(off int64)
	Sent(off int64)
	SetMode(outputrule.Mode)
	// Protect holds output from now on (the rule turns Protected): every frame
	// the guest sends after it returns waits for the backup's ack of its stamp,
	// and every frame that left unheld left before it returned. An error means
	// output is not held (and the VM must not count as protected).
	Protect() error
	Stats() netbuf.RelayStats
}

var (
	_ outputPath = (*netbuf.Relay)(nil)
	_ outputPath = (*netbuf.Hold)(nil)
	_ outputPath = unheldPath{}
)

// inputPacer paces the frames the network sends a protected guest while its backup
// is behind the lag bound (throttle.Pacer): netbuf.Relay with a pacer on the relay
// path, which holds them in the agent; on the tap path, where they reach QEMU
// without the agent, netbuf.TapPacer, which applies the pacer's rate as a tbf
// qdisc on the tap's egress.
type inputPacer interface {
	Pace(throttle.Sample)
	ReleasePacing()
	PacerStats() throttle.PacerStats
}

var (
	_ inputPacer = (*netbuf.Relay)(nil)
	_ inputPacer = (*netbuf.TapPacer)(nil)
)

// unheldPath is the tap path of an unprotected VM whose frames cannot be queued
// (the agent could not bind the kernel queue: why says so): QEMU's frames go
// straight to the bridge and nothing is held, so there is nothing to run or count,
// and it stays unprotected (Protect fails).
type unheldPath struct{ why string }

func (unheldPath) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (unheldPath) Ack(int64)                     {}
func (unheldPath) Sent(int64)                    {}
func (unheldPath) SetMode(outputrule.Mode)       {}
func (u unheldPath) Protect() error {
	return fmt.Errorf("%w: %s", netbuf.ErrNotHeld, u.why)
}
func (unheldPath) Stats() netbuf.RelayStats {
	return netbuf.RelayStats{Rule: outputrule.Stats{Mode: outputrule.Unprotected}}
}

// nicFor is the NIC of a VM's QEMU on data path d: a unix datagram pair in dir for
// the relay, the tap itself otherwise.
func nicFor(d DataPath, mac, dir, tap string) *qemu.NIC {
	if d == DataPathTap {
		return &qemu.NIC{MAC: mac, TapName: tap}
	}
	return &qemu.NIC{
		MAC:        mac,
		SocketPath: filepath.Join(dir, "net-agent.sock"),
		LocalPath:  filepath.Join(dir, "net-qemu.sock"),
	}
}

// backupTapName is the tap a backup's replaying QEMU gets on the tap path: on no
// bridge (a replay emits nothing) and named apart from the primary's tap, which the
// same host creates when this backup goes live.
func backupTapName(vm string) string { return ifName("fb-", vm) }

// tapRules installs and removes the netfilter rules that send a tap's frames to its
// kernel queue: a Hold's Engage and Bypass, and a cleanup.
type tapRules struct {
	tap   string
	queue uint16

	mu    sync.Mutex
	rules *netbuf.QueueRules // nil while frames bypass the queue
}

// engage installs the rules (br_netfilter first: bridged frames meet them only
// through it); installed already is fine.
func (r *tapRules) engage() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rules != nil {
		return nil
	}
	if err := netbuf.EnableBridgeNetfilter(); err != nil {
		return err
	}
	rules, err := netbuf.InstallQueueRules(r.tap, r.queue)
	if err != nil {
		return err
	}
	r.rules = rules
	return nil
}

// remove deletes the rules: the tap's frames then pass the bridge unheld. A failed
// removal leaves tables a later engage replaces.
func (r *tapRules) remove() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.rules == nil {
		return nil
	}
	err := r.rules.Remove()
	r.rules = nil
	return err
}
