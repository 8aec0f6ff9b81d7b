package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/lifecycle"
)

// A live copy (a primary, protected or not, and a backup that went live) re-reads
// its VM's latest epoch every epochCheckEvery, each read bounded by
// epochCheckTimeout, and halts when another host claimed a later one: a forced start
// elsewhere, or a backup that took over while this copy was cut off from it.
const (
	epochCheckEvery   = 2 * time.Second
	epochCheckTimeout = 5 * time.Second
)

// epochVerdict decides from one read of the VM's latest claim (c, err) whether a copy
// on host running under epoch mine must halt, and says why; when it need not, why is
// what an operator should know about the read ("" when it was fine).
//
// A later epoch owned by another host, or one whose owner is unknown (a corrupt
// claim), halts: that epoch's owner may run the VM. A later epoch owned by this host
// is this copy's own claim in flight (the primary claims the next epoch when its
// backup is lost and on `ftvmd unprotect`). A read that fails, or a store behind
// mine, changes nothing: nobody can claim past mine without that claim being seen
// here once the store answers, and a forced start elsewhere while this copy cannot
// read the store is the operator's override.
func epochVerdict(host string, mine uint64, c disk.Claim, err error) (halt bool, why string) {
	switch {
	case errors.Is(err, disk.ErrNoEpoch):
		return false, fmt.Sprintf("shared storage holds no epoch for this vm, behind this copy's epoch %d (storage rolled back or another directory?)", mine)
	case err != nil:
		return false, fmt.Sprintf("cannot read the vm's epoch on shared storage: %v", err)
	case c.Epoch < mine:
		return false, fmt.Sprintf("shared storage shows epoch %d, behind this copy's epoch %d (storage rolled back or another directory?)", c.Epoch, mine)
	case c.Epoch == mine:
		return false, ""
	case c.Corrupt:
		return true, fmt.Sprintf("epoch %d was claimed after this copy's epoch %d by an unknown owner (unreadable claim)", c.Epoch, mine)
	case c.Owner != host:
		return true, fmt.Sprintf("epoch %d was claimed by %q after this copy's epoch %d (%s): that host owns the vm now", c.Epoch, c.Owner, mine, c.Reason)
	}
	return false, ""
}

// watchEpoch is the epoch check of a live primary (see epochCheckEvery); it ends with
// ctx or when the copy stops running. A hung store costs one read at a time, each
// ending at its deadline: the agent is never wedged on it.
func (p *primary) watchEpoch(ctx context.Context) {
	every, timeout := p.epochEvery, p.epochTimeout
	if every <= 0 {
		every = epochCheckEvery
	}
	if timeout <= 0 {
		timeout = epochCheckTimeout
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		ls := p.life.state()
		mine := ls.Epoch
		switch ls.State {
		case lifecycle.Protected, lifecycle.Unprotected, lifecycle.Degraded, lifecycle.Claiming,
			lifecycle.Unprotecting, lifecycle.HandingOver:
		default:
			return // halted, failed, handed over or stopping: nothing runs to fence
		}
		cctx, cancel := context.WithTimeout(ctx, timeout)
		c, err := p.a.store.Current(cctx, p.spec.Name)
		cancel()
		if ctx.Err() != nil {
			return
		}
		halt, why := epochVerdict(p.a.cfg.Host, mine, c, err)
		if halt {
			// The lifecycle halts the copy, unless the later epoch is the one its
			// planned failover claimed for the backup.
			_ = p.life.step(lifecycle.EpochSuperseded(why))
			continue
		}
		p.mu.Lock()
		prev := p.epochCheck
		p.epochCheck = why
		p.mu.Unlock()
		switch {
		case why != "" && why != prev:
			p.log.Warn("epoch check: this copy carries on", "problem", why)
		case why == "" && prev != "":
			p.log.Info("epoch check: shared storage answers again", "epoch", mine)
		}
	}
}
