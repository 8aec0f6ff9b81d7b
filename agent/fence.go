package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ftvmd/ftvmd/arbiter"
	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/journal"
)

// fence drives the failover arbiter (pure) against the shared-storage epoch store
// (I/O) for one copy of a protected VM. It is the second fence after the output rule:
// of two copies that lost each other, exactly one wins epoch+1 and carries on.
type fence struct {
	arb   *arbiter.Arbiter
	store disk.EpochStore
	vm    string
	host  string
	log   *slog.Logger
	// claimTimeout bounds one claim; tick is the arbiter's retry tick.
	claimTimeout, tick time.Duration
	role               arbiter.Role
	// record journals each claim (Agent.record); nil records nothing.
	record func(journal.Event)
}

// claimFirst takes the VM's next epoch when protection starts: the primary owns it.
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

func newFence(store disk.EpochStore, role arbiter.Role, vm, host string, epoch uint64, log *slog.Logger) (*fence, error) {
	arb, err := arbiter.New(arbiter.Config{Role: role, Host: host, Epoch: epoch, Logger: log})
	if err != nil {
		return nil, err
	}
	return &fence{arb: arb, store: store, vm: vm, host: host, log: log, claimTimeout: 5 * time.Second, tick: 100 * time.Millisecond, role: role}, nil
}

// decision is what the fence concluded after the peer was lost.
type decision struct {
	Action arbiter.ActionType // GoLive, ContinueUnprotected or Halt
	Epoch  uint64
	Reason string
	Claim  time.Duration // time spent claiming
}

// peerLost runs the arbiter from PeerSilent to a final action, claiming on shared
// storage as it asks. While it runs, the caller keeps output held.
func (f *fence) peerLost(ctx context.Context) (decision, error) {
	t0 := time.Now()
	if err := f.arb.Step(arbiter.PeerSilent()); err != nil {
		return decision{}, err
	}
	for {
		rd := f.arb.Ready()
		f.arb.Advance()
		for _, act := range rd.Actions {
			switch act.Type {
			case arbiter.ActionClaimEpoch:
				f.log.Warn("peer lost: claiming epoch", "epoch", act.Seen+1)
				cctx, cancel := context.WithTimeout(ctx, f.claimTimeout)
				t1 := time.Now()
				c, err := f.store.ClaimNext(cctx, f.vm, act.Seen, f.host, act.Reason)
				cancel()
				var ev arbiter.Event
				je := journal.Event{Kind: journal.KindClaim, VM: f.vm, Role: f.role.String(), Epoch: c.Epoch,
					DurationMS: float64(time.Since(t1)) / float64(time.Millisecond), Detail: act.Reason}
				switch {
				case err == nil:
					ev = arbiter.ClaimWon(c.Epoch)
					je.Result = journal.ClaimWon
				case errors.Is(err, disk.ErrLost):
					ev = arbiter.ClaimLost(c.Epoch, c.Owner)
					je.Result, je.Peer = journal.ClaimLost, c.Owner
					je.Detail = fmt.Sprintf("%s: epoch %d is %s's", act.Reason, c.Epoch, c.Owner)
				default:
					f.log.Error("epoch claim failed; output stays held, retrying", "err", err)
					ev = arbiter.ClaimFailed(err)
					je.Result, je.Epoch = journal.ClaimFailed, act.Seen+1
					je.Detail = fmt.Sprintf("%s: %v", act.Reason, err)
				}
				if f.record != nil {
					f.record(je)
				}
				if err := f.arb.Step(ev); err != nil {
					return decision{}, err
				}
			case arbiter.ActionGoLive, arbiter.ActionContinueUnprotected, arbiter.ActionHalt:
				d := decision{Action: act.Type, Epoch: act.Epoch, Reason: act.Reason, Claim: time.Since(t0)}
				f.log.Warn("failover decision", "action", act.Type.String(), "epoch", act.Epoch, "reason", act.Reason, "claim_ms", d.Claim.Milliseconds())
				return d, nil
			}
		}
		if f.arb.HasReady() {
			continue
		}
		select {
		case <-ctx.Done():
			return decision{}, ctx.Err()
		case <-time.After(f.tick):
			if err := f.arb.Step(arbiter.Tick()); err != nil {
				return decision{}, err
			}
		}
	}
}
