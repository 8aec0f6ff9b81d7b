package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/lab"
)

// ChaosKind is one kind of fault `ftvmd chaos` injects: how, what heals it, and what
// docs/failover-guarantees.md says it leads to. Every fault is injected on the
// roles at that moment (the primary's host may be A or B: after a failover the VM
// is protected again from its new owner).
type ChaosKind struct {
	Name string
	Desc string
	// Expect is the outcome the guarantees promise.
	Expect Outcome
	// The fault lasts a random time in [HoldMin, HoldMax], then it is healed; kinds
	// without a hold are healed once the VM has settled (the survivor took over).
	HoldMin, HoldMax time.Duration
	// inject applies the fault and returns what heals it (never nil on success).
	inject func(ctx context.Context, r *chaosRun) (heal func(context.Context) error, err error)
}

// chaosKinds is every fault kind, in the order reports list them.
var chaosKinds = []ChaosKind{
	{Name: "kill-primary-host", Expect: OutcomeFailover,
		Desc: "SIGKILL of every process of the primary's host (agent and QEMU), as a power loss; healed by starting its agent again",
		inject: func(ctx context.Context, r *chaosRun) (func(context.Context) error, error) {
			return r.killHost(r.primary)
		}},
	{Name: "kill-backup-host", Expect: OutcomeCarryOn,
		Desc: "SIGKILL of every process of the backup's host; healed by starting its agent again",
		inject: func(ctx context.Context, r *chaosRun) (func(context.Context) error, error) {
			return r.killHost(r.backup)
		}},
	{Name: "kill-primary-qemu", Expect: OutcomeFailover,
		Desc: "SIGKILL of the primary's QEMU only (a crash, an OOM kill)",
		inject: func(ctx context.Context, r *chaosRun) (func(context.Context) error, error) {
			return r.signalQEMU(ctx, r.primary, unix.SIGKILL, 0)
		}},
	{Name: "kill-backup-qemu", Expect: OutcomeCarryOn,
		Desc: "SIGKILL of the backup's replaying QEMU only",
		inject: func(ctx context.Context, r *chaosRun) (func(context.Context) error, error) {
			return r.signalQEMU(ctx, r.backup, unix.SIGKILL, 0)
		}},
	// docs/failover-guarantees.md, "An agent is stopped or restarted": the
	// primary's agent hands the VM over to its backup before it exits.
	{Name: "restart-primary-agent", Expect: OutcomeFailover,
		Desc: "SIGTERM of the primary's agent, then start it again (systemctl restart)",
		inject: func(ctx context.Context, r *chaosRun) (func(context.Context) error, error) {
			return r.restartAgent(ctx, r.primary)
		}},
	{Name: "restart-backup-agent", Expect: OutcomeCarryOn,
		Desc: "SIGTERM of the backup's agent, then start it again",
		inject: func(ctx context.Context, r *chaosRun) (func(context.Context) error, error) {
			return r.restartAgent(ctx, r.backup)
		}},
	{Name: "pause-primary-qemu", Expect: OutcomeUnchanged, HoldMin: 2 * time.Second, HoldMax: 5 * time.Second,
		Desc: "SIGSTOP of the primary's QEMU for 2-5 s, then SIGCONT",
		inject: func(ctx context.Context, r *chaosRun) (func(context.Context) error, error) {
			return r.signalQEMU(ctx, r.primary, unix.SIGSTOP, unix.SIGCONT)
		}},
	{Name: "partition", Expect: OutcomeEither,
		Desc: "cut the link between the two hosts (both still reach storage and clients); healed once one copy runs on",
		inject: func(ctx context.Context, r *chaosRun) (func(context.Context) error, error) {
			if err := partition(true); err != nil {
				return nil, err
			}
			return func(context.Context) error { return partition(false) }, nil
		}},
	{Name: "cut-primary-storage", Expect: OutcomeUnchanged, HoldMin: 10 * time.Second, HoldMax: 20 * time.Second,
		Desc: "the primary's host loses shared storage for 10-20 s (its view of it hangs, as a hard NFS mount does)",
		inject: func(ctx context.Context, r *chaosRun) (func(context.Context) error, error) {
			return r.mounts.hangStorage(r.primary.Name)
		}},
	{Name: "storage-hang", Expect: OutcomeUnchanged, HoldMin: 10 * time.Second, HoldMax: 10 * time.Second,
		Desc: "shared storage hangs for both hosts for 10 s",
		inject: func(ctx context.Context, r *chaosRun) (func(context.Context) error, error) {
			return r.mounts.hangStorage(lab.HostA.Name, lab.HostB.Name)
		}},
	{Name: "log-full", Expect: OutcomeFailover,
		Desc: "the file system of the primary's rr log fills up (a small file system under its run directory); healed by freeing it",
		inject: func(ctx context.Context, r *chaosRun) (func(context.Context) error, error) {
			return fillFS(r.mounts.runDir(r.primary.Name))
		}},
}

// ChaosKinds is the fault kinds' table, in report order.
func ChaosKinds() []ChaosKind { return slices.Clone(chaosKinds) }

func chaosKindByName(name string) (ChaosKind, bool) {
	for _, k := range chaosKinds {
		if k.Name == name {
			return k, true
		}
	}
	return ChaosKind{}, false
}

func noHeal(context.Context) error { return nil }

// killHost SIGKILLs every process of host h; healing starts its agent again.
func (r *chaosRun) killHost(h lab.Host) (func(context.Context) error, error) {
	if err := killHost(h.NS); err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		// The killed agent's wait goroutine has reaped it; wait until its namespace
		// is empty before a new agent binds its port.
		waitNoProcs(h.NS, 10*time.Second)
		return r.startAgent(ctx, h)
	}, nil
}

// signalQEMU sends sig to the VM's QEMU on host h; healing sends heal (none when 0).
func (r *chaosRun) signalQEMU(ctx context.Context, h lab.Host, sig, heal syscall.Signal) (func(context.Context) error, error) {
	st, err := lab.Status(ctx, h, r.vm)
	if err != nil {
		return nil, fmt.Errorf("status of %s on %s: %w", r.vm, h.Name, err)
	}
	if st.PID <= 0 {
		return nil, fmt.Errorf("%s on %s has no QEMU pid in its status", r.vm, h.Name)
	}
	if err := unix.Kill(st.PID, sig); err != nil {
		return nil, fmt.Errorf("%v to QEMU %d on %s: %w", sig, st.PID, h.Name, err)
	}
	r.logf("  %v to QEMU pid %d on host %s", sig, st.PID, h.Name)
	if heal == 0 {
		return noHeal, nil
	}
	return func(context.Context) error {
		if err := unix.Kill(st.PID, heal); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("%v to QEMU %d: %w", heal, st.PID, err)
		}
		return nil
	}, nil
}

// restartAgent stops host h's agent as a service manager does (SIGTERM, wait)
// and starts it again at once.
func (r *chaosRun) restartAgent(ctx context.Context, h lab.Host) (func(context.Context) error, error) {
	t0 := time.Now()
	// A primary's agent hands its VM over before it exits: up to 70 s
	// (agent.shutdownTimeout), as systemd's TimeoutStopSec=90s allows.
	if err := r.s.Lab.SignalAgent(h, unix.SIGTERM, agentStopTimeout); err != nil {
		return nil, err
	}
	r.logf("  agent %s exited %s after SIGTERM", h.Name, time.Since(t0).Round(time.Millisecond))
	if err := r.startAgent(ctx, h); err != nil {
		return nil, err
	}
	return noHeal, nil
}

// fillerName is the file that fills a run file system.
const fillerName = "chaos-filler"

// fillEvery is how often a full file system is topped up again.
const fillEvery = 5 * time.Millisecond

// fillFS fills dir's file system (fallocate: no data is written) and keeps it full
// until healed: every block freed meanwhile is taken again within fillEvery. A
// primary's rr log is bounded (the agent punches holes in what the backup has
// acknowledged), so a file system filled once has room again a moment later, and
// the log, a few KiB on disk, could go on for ever in what it frees (chaos's CI run,
// 2026-11-30: no write failed in 10 s). Healing stops the top-ups and removes the
// filler.
func fillFS(dir string) (func(context.Context) error, error) {
	p := filepath.Join(dir, fillerName)
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	var size int64
	top := func() error {
		var st unix.Statfs_t
		if err := unix.Statfs(dir, &st); err != nil {
			return fmt.Errorf("statfs %s: %w", dir, err)
		}
		// What is free, less what the allocation's own metadata may need: halve
		// the request until it fits.
		for room := int64(st.Bavail) * st.Bsize; room >= st.Bsize; room /= 2 {
			err := unix.Fallocate(int(f.Fd()), 0, size, room)
			if err == nil {
				size += room
				return nil
			}
			if !errors.Is(err, unix.ENOSPC) {
				return fmt.Errorf("fill %s: %w", dir, err)
			}
		}
		return nil
	}
	if err := top(); err != nil {
		f.Close()
		os.Remove(p)
		return nil, err
	}
	stop, stopped := make(chan struct{}), make(chan struct{})
	go func() { // owned: heal stops it and waits
		defer close(stopped)
		t := time.NewTicker(fillEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				_ = top()
			}
		}
	}()
	return func(context.Context) error {
		close(stop)
		<-stopped
		f.Close()
		return os.Remove(p)
	}, nil
}
