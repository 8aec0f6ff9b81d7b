package disk

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"
	"unicode/utf8"
)

// The epoch claim is the second fence of a fault-tolerant pair (the output rule is
// the first): when primary and backup lose contact, each tries to claim the next
// epoch on shared storage and exactly one succeeds. See docs/failover-guarantees.md.
//
// Epochs are numbered from 1. Claims are never deleted or rewritten, and a store
// never hands out epoch n+1 unless epoch n is the highest one it holds, so the
// claimed epochs form a contiguous sequence with exactly one owner each.

// Sentinel errors. Test for them with errors.Is; they are always wrapped with
// context (VM, epoch, path).
var (
	// ErrNoEpoch: no epoch has ever been claimed for this VM.
	ErrNoEpoch = errors.New("no epoch claimed")
	// ErrLost: the epoch asked for (or a later one) is already claimed by someone
	// else. ClaimNext returns the winner's Claim alongside it. The caller must
	// halt its copy and never release output again.
	ErrLost = errors.New("epoch claim lost")
	// ErrStorageTimeout: shared storage did not answer before the deadline. The
	// outcome of a ClaimNext that times out is unknown: the caller must hold its
	// output and may retry (a retry by the same owner is idempotent).
	ErrStorageTimeout = errors.New("shared storage timed out")
	// ErrEpochRegressed: the store holds a lower epoch than the caller has
	// already seen (storage rolled back, files deleted, or the wrong directory).
	// Claiming would create a gap that breaks the one-winner rule, so it is refused.
	ErrEpochRegressed = errors.New("store is behind the epoch already seen")
	// ErrInvalidVM: the VM name is empty, too long, or not a plain file name.
	ErrInvalidVM = errors.New("invalid VM name")
	// ErrInvalidOwner: the owner (host name) is empty, too long or not UTF-8.
	ErrInvalidOwner = errors.New("invalid claim owner")
	// ErrInvalidEpoch: the epoch seen cannot be followed (it is the maximum).
	ErrInvalidEpoch = errors.New("invalid epoch")
	// ErrDirMissing, ErrNotDir, ErrReadOnly: NewDirStore cannot use the directory.
	ErrDirMissing = errors.New("epoch directory does not exist")
	ErrNotDir     = errors.New("epoch path is not a directory")
	ErrReadOnly   = errors.New("epoch directory is not writable")
)

// Claim is one claimed epoch of one VM.
type Claim struct {
	VM        string
	Epoch     uint64
	Owner     string // host name of the winner; empty when Corrupt
	ClaimedAt time.Time
	Reason    string

	// Corrupt: the epoch is claimed (its file exists) but its content cannot be
	// read or fails its checksum, for example a claim whose writer crashed
	// before fsync. The epoch still counts as taken; Owner is unknown.
	Corrupt bool
	// Problem, when not empty, says why this claim looks wrong: corrupt content,
	// a ClaimedAt in the future, an epoch that jumps far ahead of the previous
	// one. Such a claim is still respected: an epoch never goes backwards.
	Problem string
}

// EpochStore is the shared-storage test-and-set. Implementations: DirStore (a
// directory on a local or NFSv3+ filesystem) and MemStore (in-memory fake).
type EpochStore interface {
	// Current returns the highest epoch claimed for vm, or ErrNoEpoch. A corrupt
	// highest claim is returned with Corrupt set and a nil error.
	Current(ctx context.Context, vm string) (Claim, error)
	// ClaimNext atomically claims epoch seen+1 for owner. It returns the new
	// Claim and nil only when the claim is durable. If epoch seen+1 or a later
	// one is held by someone else it returns the highest claim with an error
	// wrapping ErrLost. If seen+1 is already held by the same owner (a retry
	// after a timeout) it returns that claim and nil. seen is 0 for the first
	// claim. Any other error means the outcome is unknown.
	ClaimNext(ctx context.Context, vm string, seen uint64, owner, reason string) (Claim, error)
}

const (
	maxVMLen     = 128
	maxOwnerLen  = 255
	maxReasonLen = 1024
)

// ValidateVM checks that vm can be used as a single directory name: 1 to 128
// characters from [A-Za-z0-9._-], not starting with a dot (so no "." or "..").
func ValidateVM(vm string) error {
	if vm == "" {
		return fmt.Errorf("%w: empty", ErrInvalidVM)
	}
	if len(vm) > maxVMLen {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidVM, len(vm), maxVMLen)
	}
	if vm[0] == '.' {
		return fmt.Errorf("%w: %q starts with a dot", ErrInvalidVM, vm)
	}
	for i := 0; i < len(vm); i++ {
		c := vm[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("%w: %q has character %q (allowed: letters, digits, . _ -)", ErrInvalidVM, vm, c)
		}
	}
	return nil
}

func validateClaimArgs(vm string, seen uint64, owner, reason string) error {
	if err := ValidateVM(vm); err != nil {
		return err
	}
	if owner == "" {
		return fmt.Errorf("%w: empty", ErrInvalidOwner)
	}
	if len(owner) > maxOwnerLen {
		return fmt.Errorf("%w: %d bytes, at most %d", ErrInvalidOwner, len(owner), maxOwnerLen)
	}
	if !utf8.ValidString(owner) {
		// A claim file stores it as JSON, which would replace the bad bytes: the
		// owner read back would differ, and its own retry would lose to itself.
		return fmt.Errorf("%w: %q is not valid UTF-8", ErrInvalidOwner, owner)
	}
	if len(reason) > maxReasonLen {
		return fmt.Errorf("disk: claim reason is %d bytes, at most %d", len(reason), maxReasonLen)
	}
	if seen == math.MaxUint64 {
		return fmt.Errorf("%w: seen epoch %d has no successor", ErrInvalidEpoch, seen)
	}
	return nil
}

// decideClaim is the rule both stores apply once they know the highest claim
// (found=false: none). It returns done=true with the result when no new claim
// must be created, or done=false when the caller should create epoch seen+1.
// seenNext, if not nil, is the existing claim for epoch seen+1 (for messages).
func decideClaim(vm string, seen uint64, owner string, highest Claim, found bool, seenNext *Claim) (Claim, bool, error) {
	if !found {
		if seen != 0 {
			return Claim{}, true, fmt.Errorf("%w: VM %s has no epoch, caller saw %d", ErrEpochRegressed, vm, seen)
		}
		return Claim{}, false, nil
	}
	switch {
	case highest.Epoch == seen:
		return Claim{}, false, nil
	case highest.Epoch < seen:
		return highest, true, fmt.Errorf("%w: VM %s highest epoch %d, caller saw %d", ErrEpochRegressed, vm, highest.Epoch, seen)
	case highest.Epoch == seen+1 && !highest.Corrupt && highest.Owner == owner:
		// Our own earlier attempt (e.g. one that timed out) won this epoch.
		return highest, true, nil
	case highest.Epoch == seen+1:
		return highest, true, fmt.Errorf("%w: VM %s epoch %d held by %s", ErrLost, vm, highest.Epoch, ownerString(highest))
	default:
		held := ""
		if seenNext != nil {
			held = fmt.Sprintf(" (epoch %d held by %s)", seenNext.Epoch, ownerString(*seenNext))
		}
		return highest, true, fmt.Errorf("%w: VM %s caller saw epoch %d but epoch %d is already claimed by %s%s",
			ErrLost, vm, seen, highest.Epoch, ownerString(highest), held)
	}
}

func ownerString(c Claim) string {
	if c.Corrupt {
		return "an unknown owner (corrupt claim)"
	}
	return fmt.Sprintf("%q", c.Owner)
}

// futureProblem reports a ClaimedAt beyond now+skew ("" when fine).
func futureProblem(c Claim, now time.Time, skew time.Duration) string {
	if c.ClaimedAt.IsZero() || !c.ClaimedAt.After(now.Add(skew)) {
		return ""
	}
	return fmt.Sprintf("claimed at %s, %s in the future (clock skew?)",
		c.ClaimedAt.UTC().Format(time.RFC3339), c.ClaimedAt.Sub(now).Round(time.Second))
}

func joinProblem(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + "; " + b
}

// gapProblem reports a highest epoch that jumps ahead of the one below it
// (prev, 0 when there is none below) — a claim "from the future" ("" when fine).
// A lone epoch above 1 is not flagged: old epochs may have been pruned.
func gapProblem(prev, highest uint64) string {
	if prev == 0 || highest-prev <= 1 {
		return ""
	}
	return fmt.Sprintf("epoch %d jumps %d ahead of the previous claim %d (epoch from the future?)", highest, highest-prev, prev)
}
