package disk

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// MemStore is an in-memory EpochStore for unit tests. It follows the same rules
// as DirStore (checked by one conformance test) and has fault-injection controls:
// Put plants any claim, SetHung makes every call block until its ctx ends.
// It is safe for concurrent use.
type MemStore struct {
	mu     sync.Mutex
	claims map[string]map[uint64]Claim
	hung   chan struct{} // non-nil while hung; closed by SetHung(false)
	now    func() time.Time
}

var _ EpochStore = (*MemStore)(nil)

// NewMemStore returns an empty in-memory store.
func NewMemStore() *MemStore {
	return &MemStore{claims: make(map[string]map[uint64]Claim), now: time.Now}
}

// SetHung simulates hung storage: while hung, Current and ClaimNext block until
// their ctx is done and then return ErrStorageTimeout (deadline) or ctx.Err().
func (m *MemStore) SetHung(hung bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case hung && m.hung == nil:
		m.hung = make(chan struct{})
	case !hung && m.hung != nil:
		close(m.hung)
		m.hung = nil
	}
}

// Put plants c as-is, bypassing the claim rules (for tests: corrupt claims,
// epochs from the future). It replaces any claim with the same VM and epoch.
func (m *MemStore) Put(c Claim) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.claims[c.VM] == nil {
		m.claims[c.VM] = make(map[uint64]Claim)
	}
	if c.Corrupt {
		c.Owner, c.Reason, c.ClaimedAt = "", "", time.Time{}
		c.Problem = joinProblem("corrupt claim (planted)", c.Problem)
	}
	m.claims[c.VM][c.Epoch] = c
}

// wait blocks while the store is hung, until ctx ends.
func (m *MemStore) wait(ctx context.Context, op, vm string) error {
	m.mu.Lock()
	hung := m.hung
	m.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return ctxError(err, op, vm)
	}
	if hung == nil {
		return nil
	}
	select {
	case <-hung:
		return nil
	case <-ctx.Done():
		return ctxError(ctx.Err(), op, vm)
	}
}

// highest returns the highest claim of vm; m.mu must be held.
func (m *MemStore) highest(vm string) (Claim, bool) {
	var best Claim
	var prev uint64
	found := false
	for e, c := range m.claims[vm] {
		switch {
		case !found || e > best.Epoch:
			if found {
				prev = best.Epoch
			}
			best, found = c, true
		case e > prev:
			prev = e
		}
	}
	if found {
		best.Problem = joinProblem(best.Problem, gapProblem(prev, best.Epoch))
		best.Problem = joinProblem(best.Problem, futureProblem(best, m.now(), defaultFutureSkew))
	}
	return best, found
}

// Current implements EpochStore.
func (m *MemStore) Current(ctx context.Context, vm string) (Claim, error) {
	if err := ValidateVM(vm); err != nil {
		return Claim{}, err
	}
	if err := m.wait(ctx, "read current epoch", vm); err != nil {
		return Claim{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.highest(vm)
	if !ok {
		return Claim{}, fmt.Errorf("disk: VM %s: %w", vm, ErrNoEpoch)
	}
	return c, nil
}

// ClaimNext implements EpochStore.
func (m *MemStore) ClaimNext(ctx context.Context, vm string, seen uint64, owner, reason string) (Claim, error) {
	if err := validateClaimArgs(vm, seen, owner, reason); err != nil {
		return Claim{}, err
	}
	if err := m.wait(ctx, "claim epoch", vm); err != nil {
		return Claim{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	highest, found := m.highest(vm)
	var seenNext *Claim
	if c, ok := m.claims[vm][seen+1]; ok {
		seenNext = &c
	}
	if c, done, err := decideClaim(vm, seen, owner, highest, found, seenNext); done {
		return c, err
	}
	c := Claim{VM: vm, Epoch: seen + 1, Owner: owner, ClaimedAt: m.now().UTC(), Reason: reason}
	if m.claims[vm] == nil {
		m.claims[vm] = make(map[uint64]Claim)
	}
	m.claims[vm][c.Epoch] = c
	return c, nil
}
