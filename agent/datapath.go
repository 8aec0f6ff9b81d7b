package agent

import (
	"context"
	"path/filepath"

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
	Stats() netbuf.RelayStats
}

var (
	_ outputPath = (*netbuf.Relay)(nil)
	_ outputPath = (*netbuf.Hold)(nil)
	_ outputPath = unheldPath{}
)

// inputPacer paces the frames the network sends a protected guest while its backup
// is behind the lag bound (throttle.Pacer): netbuf.Relay with a pacer. On the tap
// path those frames reach QEMU without the agent, and nothing paces them yet (a
// qdisc on the tap could apply throttle.Pacer's Rate).
type inputPacer interface {
	Pace(throttle.Sample)
	ReleasePacing()
}

var _ inputPacer = (*netbuf.Relay)(nil)

// unheldPath is the tap path of an unprotected VM: QEMU's frames go straight to the
// bridge and nothing is held, so there is nothing to run or count. It stays
// unprotected for good (a VM is protected only from boot).
type unheldPath struct{}

func (unheldPath) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (unheldPath) Ack(int64)                     {}
func (unheldPath) Sent(int64)                    {}
func (unheldPath) SetMode(outputrule.Mode)       {}
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
