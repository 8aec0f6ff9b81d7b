package outputrule

import (
	"fmt"
	"math"
	"math/bits"
	"time"
)

// Layout of DelayHist. The bounds are fixed (not configurable) so that two
// snapshots, or bucket counts read back from JSON, always line up.
const (
	// DelayHistBase is the upper bound of the first bucket. Holding a frame
	// costs at least an ack round trip to the backup, which on a LAN is tens
	// of microseconds, so finer buckets would say nothing useful.
	DelayHistBase = 25 * time.Microsecond
	// DelayHistBuckets is the number of bounded buckets; each bound doubles
	// the previous one, so the last is DelayHistBase<<15 = 819.2 ms. Longer
	// delays mean the backup stalled and land in one overflow bucket.
	DelayHistBuckets = 16
)

// DelayHist is a histogram of the output delay the rule added per frame.
// Bucket i (0 <= i < DelayHistBuckets) counts delays d with
// DelayHistBound(i-1) < d <= DelayHistBound(i) (bucket 0 starts at 0); one
// more bucket counts delays beyond the last bound. It is a fixed array, so
// Add never allocates and a DelayHist is copied by value with Stats. The zero
// value is an empty histogram.
type DelayHist struct {
	counts [DelayHistBuckets + 1]uint64
}

// DelayHistBound is the inclusive upper bound of bucket i, for
// 0 <= i < DelayHistBuckets.
func DelayHistBound(i int) time.Duration { return DelayHistBase << i }

// delayBucket returns the bucket of d: the smallest i with d <= base<<i.
// (d-1)/base lies in [2^(i-1), 2^i) exactly when d is in bucket i, so its
// bit length is i; that avoids a loop or floating point on the hot path.
func delayBucket(d time.Duration) int {
	if d <= DelayHistBase {
		return 0
	}
	return min(bits.Len64(uint64((d-1)/DelayHistBase)), DelayHistBuckets)
}

// Add counts one delay. Negative delays (a clock step) count as 0.
func (h *DelayHist) Add(d time.Duration) { h.counts[delayBucket(d)]++ }

// Count is the number of delays added.
func (h DelayHist) Count() uint64 {
	var n uint64
	for _, c := range h.counts {
		n += c
	}
	return n
}

// Quantile returns the upper bound of the bucket holding the q-quantile
// (0 <= q <= 1; out-of-range q is clamped), so the true quantile is at most
// the result and at most one bucket (a factor of two) below it. It returns 0
// for an empty histogram. When the quantile falls in the overflow bucket,
// which has no upper bound, it returns the last bound, DelayHistBound(
// DelayHistBuckets-1): the histogram only knows the delay is at least that
// (Stats.MaxDelay bounds it from above). This is Prometheus's convention.
func (h DelayHist) Quantile(q float64) time.Duration {
	n := h.Count()
	if n == 0 {
		return 0
	}
	if !(q >= 0) { // also catches NaN
		q = 0
	}
	q = min(q, 1)
	// The rank of the q-quantile is ceil(q*n), at least 1. A tiny slack
	// forgives float rounding (0.07*100 is 7.000000000000001, which must
	// not become rank 8).
	x := q * float64(n)
	rank := max(uint64(math.Ceil(x-x*1e-9)), 1)
	var cum uint64
	for i, c := range h.counts {
		cum += c
		if cum >= rank {
			return DelayHistBound(min(i, DelayHistBuckets-1))
		}
	}
	return DelayHistBound(DelayHistBuckets - 1) // not reached: cum ends at n >= rank
}

// Sub returns the histogram of the delays added between snapshot earlier and
// h, both taken from the same rule. If some bucket of earlier exceeds h's,
// the snapshots are not of one history (the agent restarted in between, so
// its counters began again from zero); then, like a counter reset, all of h
// is taken as the interval.
func (h DelayHist) Sub(earlier DelayHist) DelayHist {
	for i := range h.counts {
		if earlier.counts[i] > h.counts[i] {
			return h
		}
	}
	for i := range h.counts {
		h.counts[i] -= earlier.counts[i]
	}
	return h
}

// Counts returns a copy of the bucket counts, the bounded buckets first and
// the overflow bucket last, for export (control.VMStatus carries them so a
// client can take the histogram of an interval). DelayHistFromCounts is its
// inverse.
func (h DelayHist) Counts() []uint64 { return append([]uint64(nil), h.counts[:]...) }

// DelayHistFromCounts rebuilds a histogram from Counts' output. An empty
// slice gives an empty histogram (the agent omits the counts while no frame
// has been released). Any other length means the bucket layout differs from
// this build's, and reading it with these bounds would misreport every
// quantile, so it is an error.
func DelayHistFromCounts(counts []uint64) (DelayHist, error) {
	var h DelayHist
	if len(counts) == 0 {
		return h, nil
	}
	if len(counts) != len(h.counts) {
		return h, fmt.Errorf("outputrule: delay histogram has %d buckets, want %d", len(counts), len(h.counts))
	}
	copy(h.counts[:], counts)
	return h, nil
}
