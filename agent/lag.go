package agent

import (
	"time"

	"github.com/ftvmd/ftvmd/control"
)

// mark records when the primary's log reached a given offset and instruction count.
type mark struct {
	at     time.Time
	off    int64
	icount uint64
}

// lagTracker maps the backup's replayed instruction count back to wall time and log
// offset on the primary: the backup is behind by the age of the first log position
// the primary reached with more instructions than the backup has replayed. It is pure:
// the caller supplies the clock.
type lagTracker struct {
	marks []mark // increasing in off and icount
	max   int
}

func newLagTracker(max int) *lagTracker { return &lagTracker{max: max} }

// add records a new boundary; it ignores anything that does not advance the icount,
// since only instruction progress can be compared with the backup's.
func (l *lagTracker) add(m mark) {
	if n := len(l.marks); n > 0 && m.icount <= l.marks[n-1].icount {
		return
	}
	if len(l.marks) >= l.max {
		// Keep memory bounded: drop the older half. Lag older than that is reported
		// against the oldest remaining mark, an underestimate only for extreme lag.
		l.marks = append(l.marks[:0], l.marks[len(l.marks)/2:]...)
	}
	l.marks = append(l.marks, m)
}

// lag returns how far behind a backup that replayed `replayed` instructions is, in
// time and as the log offset it has reached, and forgets marks it no longer needs.
func (l *lagTracker) lag(replayed uint64, now time.Time) (time.Duration, int64) {
	i := l.passed(replayed)
	var off int64
	if i > 0 {
		off = l.marks[i-1].off
	}
	var d time.Duration // 0: caught up with everything logged so far
	if i < len(l.marks) {
		d = max(now.Sub(l.marks[i].at), 0)
	}
	l.forget(i)
	return d, off
}

// position returns the offset of the newest mark at or below replayed: a replay that
// has executed `replayed` instructions has got at least that far into the log. ok is
// false when no such mark is left (none yet, or the bound dropped it). Like lag, it
// forgets the marks the replay has passed.
func (l *lagTracker) position(replayed uint64) (int64, bool) {
	i := l.passed(replayed)
	if i == 0 {
		return 0, false
	}
	off := l.marks[i-1].off
	l.forget(i)
	return off, true
}

// passed counts the marks at or below replayed.
func (l *lagTracker) passed(replayed uint64) int {
	i := 0
	for i < len(l.marks) && l.marks[i].icount <= replayed {
		i++
	}
	return i
}

// forget drops the marks before the newest of the first i: the replay is past them.
func (l *lagTracker) forget(i int) {
	if i > 1 {
		l.marks = append(l.marks[:0], l.marks[i-1:]...)
	}
}

// rateMeter measures a byte counter's rate over a sliding window.
type rateMeter struct {
	window  time.Duration
	samples []rateSample
}

type rateSample struct {
	at time.Time
	n  int64
}

func (r *rateMeter) add(now time.Time, n int64) {
	r.samples = append(r.samples, rateSample{now, n})
	for len(r.samples) > 2 && now.Sub(r.samples[1].at) >= r.window {
		r.samples = r.samples[1:]
	}
}

// rate is bytes per second over the window.
func (r *rateMeter) rate() float64 {
	if len(r.samples) < 2 {
		return 0
	}
	a, b := r.samples[0], r.samples[len(r.samples)-1]
	dt := b.at.Sub(a.at).Seconds()
	if dt <= 0 {
		return 0
	}
	return float64(b.n-a.n) / dt
}

// Layout of lagHist: bounds lagHistBase << i for i < lagHistBuckets (1 ms to 65.5 s),
// then one bucket beyond. An idle backup trails by a few ms; a stalled one by
// seconds, and a stall of minutes is all the same to an operator.
const (
	lagHistBase    = time.Millisecond
	lagHistBuckets = 17
)

// lagHist is a histogram of lag samples, exported as control.Histogram. Add is
// cheap (no allocation): it runs once per ack.
type lagHist struct {
	counts [lagHistBuckets + 1]uint64
	sum    time.Duration
}

func (h *lagHist) add(d time.Duration) {
	d = max(d, 0)
	i := 0
	for i < lagHistBuckets && d > lagHistBase<<i {
		i++
	}
	h.counts[i]++
	h.sum += d
}

func (h *lagHist) histogram() *control.Histogram {
	out := &control.Histogram{
		Bounds: make([]float64, lagHistBuckets),
		Counts: append([]uint64(nil), h.counts[:]...),
		Sum:    h.sum.Seconds(),
	}
	for i := range out.Bounds {
		out.Bounds[i] = (lagHistBase << i).Seconds()
	}
	return out
}
