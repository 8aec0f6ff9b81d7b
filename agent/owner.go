package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ftvmd/ftvmd/disk"
)

// errOwnedElsewhere: run or protect found the VM's latest epoch owned by another
// host (or storage could not say who owns it).
var errOwnedElsewhere = errors.New("the vm may be running elsewhere")

// ownerCheckTimeout bounds the read of the VM's latest epoch before a start.
const ownerCheckTimeout = 10 * time.Second

// ownership is what the owner check saw before a start: the latest epoch (seen,
// valid when known), and, for a forced start, what the force overrode.
type ownership struct {
	seen   uint64
	known  bool
	forced string
}

// ownerProblem says why host may not start vm, given the store's answer for its latest
// claim ("" when it may: nothing was ever claimed, or host owns the latest epoch).
func ownerProblem(host, vm string, c disk.Claim, err error) string {
	switch {
	case errors.Is(err, disk.ErrNoEpoch):
		return ""
	case err != nil:
		return fmt.Sprintf("shared storage cannot say who owns vm %s: %v", vm, err)
	case c.Corrupt:
		return fmt.Sprintf("the latest epoch %d of vm %s has an unreadable claim (its owner is unknown)", c.Epoch, vm)
	case c.Owner != host:
		return fmt.Sprintf("host %q owns vm %s since epoch %d (claimed %s, %s) and may be running it",
			c.Owner, vm, c.Epoch, c.ClaimedAt.UTC().Format(time.RFC3339), c.Reason)
	}
	return ""
}

// checkOwner refuses to start vm here (run, protect) while another host owns its
// latest epoch on shared storage, where the VM may run: a VM that failed over runs on
// its backup's host, and starting it again here would make two live copies. force
// starts it anyway, loudly (a WARN, and status shows what was overridden); the epoch
// the start then claims makes a live copy elsewhere halt at its next epoch check
// (primary.watchEpoch). Without shared storage there is nothing to check.
func (a *Agent) checkOwner(ctx context.Context, vm string, force bool) (ownership, error) {
	if a.store == nil {
		return ownership{}, nil
	}
	cctx, cancel := context.WithTimeout(ctx, ownerCheckTimeout)
	defer cancel()
	c, err := a.store.Current(cctx, vm)
	own := ownership{seen: c.Epoch, known: err == nil || errors.Is(err, disk.ErrNoEpoch)}
	problem := ownerProblem(a.cfg.Host, vm, c, err)
	if problem == "" {
		return own, nil
	}
	if !force {
		return ownership{}, fmt.Errorf("%w: %s. Stop it there first, or start it here with --force (a copy still running there halts when it sees the new epoch)", errOwnedElsewhere, problem)
	}
	own.forced = problem
	a.log.Warn("forced start: another host's epoch overridden", "vm", vm, "overrode", problem)
	return own, nil
}

// claimOwn claims the VM's next epoch for this host, after the epoch the owner check
// saw: a claim made by another host since then makes this one lose (ErrLost), so two
// hosts that passed the check at once cannot both start. When the check could not
// read the store (a forced start), it reads it again.
func claimOwn(ctx context.Context, store disk.EpochStore, vm, host string, own ownership, reason string) (uint64, error) {
	if !own.known {
		return claimFirst(ctx, store, vm, host)
	}
	c, err := store.ClaimNext(ctx, vm, own.seen, host, reason)
	if errors.Is(err, disk.ErrLost) {
		return 0, fmt.Errorf("%w: epoch %d of vm %s was claimed by %s while this host was starting it", errOwnedElsewhere, c.Epoch, vm, claimOwner(c))
	}
	if err != nil {
		return 0, fmt.Errorf("shared storage: claim epoch %d: %w", own.seen+1, err)
	}
	return c.Epoch, nil
}
