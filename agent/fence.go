package agent

import (
	"context"
	"errors"
	"fmt"

	"github.com/ftvmd/ftvmd/disk"
)

// claimFirst takes the VM's next epoch when protection starts: the primary owns it.
// Every later claim (failover, unprotect, planned failover) is the lifecycle's
// decision (package lifecycle), carried out by the driver.
func claimFirst(ctx context.Context, store disk.EpochStore, vm, host string) (uint64, error) {
	cur, err := store.Current(ctx, vm)
	var seen uint64
	switch {
	case errors.Is(err, disk.ErrNoEpoch):
	case err != nil:
		return 0, fmt.Errorf("shared storage: %w", err)
	default:
		seen = cur.Epoch
	}
	c, err := store.ClaimNext(ctx, vm, seen, host, "protect")
	if err != nil {
		return 0, fmt.Errorf("shared storage: claim epoch %d: %w", seen+1, err)
	}
	return c.Epoch, nil
}
