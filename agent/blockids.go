package agent

import (
	"slices"
	"sync"
)

// blockIDs tracks which block requests the log shows as completed, to let go-live
// complete the ones the replay issued but whose completion the log never got to.
//
// Why: blkreplay numbers requests 0, 1, 2... in the order the guest issues them, does
// the I/O at once (the replay too, on the backup's own disk) and logs each completion
// as an ASYNC_BLOCK event with that number when the host I/O finishes, which for a
// synchronous write is milliseconds and many events later. If the primary dies in
// that window, the cut leaves the replay holding a completion that no log event will
// ever release, and QEMU refuses savevm while any replay event is queued. The I/O
// itself is done on the backup's disk, so appending the missing completion events
// after the cut is an execution the guest could have had: the request finished at
// the cut. Nothing a client saw depends on it: output after the cut was never
// released (the output rule), so no acknowledged write is among them.
type blockIDs struct {
	mu   sync.Mutex
	seen map[uint64]int64 // id -> offset of its completion event, for ids >= floor
	// floor: every id below it completed, at offsets below floorOff.
	floor    uint64
	floorOff int64
}

// maxExtraBlockIDs is how many ids past the highest completed one go-live offers to
// complete. The replay takes them in order and parks at the first it never issued,
// so extra ones cost nine bytes each and nothing else.
const maxExtraBlockIDs = 64

// keptBlockIDs bounds the ids remembered individually.
const keptBlockIDs = 1024

func newBlockIDs() *blockIDs { return &blockIDs{seen: map[uint64]int64{}} }

// completed records a completion event for id at log offset off.
func (b *blockIDs) completed(id uint64, off int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if id < b.floor {
		return // a duplicate id would be a corrupt log; the replay will say so
	}
	b.seen[id] = off
	// Fold only once many are kept: a go-live cut lies within the last few events,
	// so completions far back never matter, but recent ones must stay answerable.
	for len(b.seen) > keptBlockIDs {
		o, ok := b.seen[b.floor]
		if !ok {
			break
		}
		b.floorOff = max(b.floorOff, o)
		delete(b.seen, b.floor)
		b.floor++
	}
}

// pendingAt returns, in increasing order, the ids a replay fed exactly up to cut may
// hold issued but not completed: every id not completed before cut up to the highest
// completed before cut, then maxExtraBlockIDs more. ok is false when cut lies before
// completions already folded into the floor (only a cut far behind the log's end).
func (b *blockIDs) pendingAt(cut int64) (ids []uint64, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if cut < b.floorOff {
		return nil, false
	}
	next := b.floor // one past the highest id completed before cut
	for id, off := range b.seen {
		if off < cut && id+1 > next {
			next = id + 1
		}
	}
	for id := b.floor; id < next; id++ {
		if off, done := b.seen[id]; !done || off >= cut {
			ids = append(ids, id)
		}
	}
	for i := uint64(0); i < maxExtraBlockIDs; i++ {
		ids = append(ids, next+i)
	}
	slices.Sort(ids)
	return ids, true
}
