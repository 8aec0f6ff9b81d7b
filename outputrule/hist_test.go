package outputrule

import (
	"math"
	"testing"
	"time"
)

const us = time.Microsecond

func TestDelayHistBounds(t *testing.T) {
	if got, want := DelayHistBound(0), 25*us; got != want {
		t.Fatalf("bound 0 = %v, want %v", got, want)
	}
	if got, want := DelayHistBound(DelayHistBuckets-1), 819200*us; got != want {
		t.Fatalf("last bound = %v, want %v", got, want)
	}
	// Every bound belongs to its own bucket, one nanosecond more to the next.
	for i := range DelayHistBuckets {
		if got := delayBucket(DelayHistBound(i)); got != i {
			t.Errorf("bucket(%v) = %d, want %d", DelayHistBound(i), got, i)
		}
		if got := delayBucket(DelayHistBound(i) + 1); got != i+1 {
			t.Errorf("bucket(%v+1ns) = %d, want %d", DelayHistBound(i), got, i+1)
		}
	}
}

func TestDelayHist(t *testing.T) {
	last := DelayHistBound(DelayHistBuckets - 1)
	type qw struct {
		q    float64
		want time.Duration
	}
	tests := []struct {
		name      string
		add       []time.Duration
		wantCount uint64
		quantiles []qw
	}{
		{
			name:      "empty",
			quantiles: []qw{{0, 0}, {0.5, 0}, {1, 0}},
		},
		{
			name:      "one value",
			add:       []time.Duration{300 * us}, // in (200, 400] µs
			wantCount: 1,
			quantiles: []qw{{0, 400 * us}, {0.5, 400 * us}, {0.99, 400 * us}, {1, 400 * us}},
		},
		{
			name:      "zero and negative delays in the first bucket",
			add:       []time.Duration{0, -time.Second, 1},
			wantCount: 3,
			quantiles: []qw{{0.5, 25 * us}, {1, 25 * us}},
		},
		{
			name: "values on bucket edges",
			// Bounds are inclusive: 25 µs is bucket 0, 25 µs+1ns bucket 1.
			add:       []time.Duration{25 * us, 25*us + 1, 50 * us, 100 * us},
			wantCount: 4,
			quantiles: []qw{
				{0.25, 25 * us}, // rank 1
				{0.26, 50 * us}, // rank 2
				{0.5, 50 * us},  // rank 2
				{0.75, 50 * us}, // rank 3
				{0.76, 100 * us},
				{1, 100 * us},
			},
		},
		{
			name: "p50 and p99 of 100 values",
			// 90 fast frames, 9 slower, 1 slow: p99 is rank 99, still a
			// slower one; only the maximum reaches the slow bucket.
			add:       append(append(rep(90, 20*us), rep(9, 3*time.Millisecond)...), 100*time.Millisecond),
			wantCount: 100,
			quantiles: []qw{{0.5, 25 * us}, {0.9, 25 * us}, {0.91, 3200 * us}, {0.99, 3200 * us}, {1, 102400 * us}},
		},
		{
			name:      "overflow reports the last bound",
			add:       []time.Duration{10 * us, last + 1, time.Hour},
			wantCount: 3,
			quantiles: []qw{{0.3, 25 * us}, {0.5, last}, {1, last}},
		},
		{
			name:      "out-of-range q is clamped",
			add:       []time.Duration{10 * us, 1 * time.Millisecond},
			wantCount: 2,
			quantiles: []qw{{-1, 25 * us}, {math.NaN(), 25 * us}, {2, 1600 * us}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var h DelayHist
			for _, d := range tc.add {
				h.Add(d)
			}
			if got := h.Count(); got != tc.wantCount {
				t.Fatalf("Count = %d, want %d", got, tc.wantCount)
			}
			for _, c := range tc.quantiles {
				if got := h.Quantile(c.q); got != c.want {
					t.Errorf("Quantile(%v) = %v, want %v", c.q, got, c.want)
				}
			}
			// The export round-trips.
			back, err := DelayHistFromCounts(h.Counts())
			if err != nil || back != h {
				t.Errorf("DelayHistFromCounts(Counts()) = %v, %v; want %v", back, err, h)
			}
		})
	}
}

func TestDelayHistSub(t *testing.T) {
	var before DelayHist
	before.Add(10 * us)
	before.Add(10 * us)
	before.Add(time.Second)
	after := before // Stats hands the histogram out by value: a snapshot
	after.Add(10 * us)
	after.Add(3 * time.Millisecond)
	after.Add(3 * time.Millisecond)

	tests := []struct {
		name      string
		h, early  DelayHist
		wantCount uint64
		wantP50   time.Duration
		wantP100  time.Duration
	}{
		{"interval", after, before, 3, 3200 * us, 3200 * us},
		{"same snapshot", after, after, 0, 0, 0},
		{"from empty", after, DelayHist{}, 6, 25 * us, DelayHistBound(DelayHistBuckets - 1)},
		// after restarted counters: taken as the whole interval.
		{"reset", before, after, 3, 25 * us, DelayHistBound(DelayHistBuckets - 1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := tc.h.Sub(tc.early)
			if got := d.Count(); got != tc.wantCount {
				t.Fatalf("Count = %d, want %d", got, tc.wantCount)
			}
			if got := d.Quantile(0.5); got != tc.wantP50 {
				t.Errorf("p50 = %v, want %v", got, tc.wantP50)
			}
			if got := d.Quantile(1); got != tc.wantP100 {
				t.Errorf("p100 = %v, want %v", got, tc.wantP100)
			}
		})
	}
	if before.Count() != 3 || after.Count() != 6 {
		t.Fatal("Sub modified its operands")
	}
}

func TestDelayHistFromCounts(t *testing.T) {
	tests := []struct {
		name    string
		counts  []uint64
		want    uint64
		wantErr bool
	}{
		{"nil is empty", nil, 0, false},
		{"full layout", append(make([]uint64, DelayHistBuckets), 7), 7, false},
		{"wrong layout", []uint64{1, 2, 3}, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, err := DelayHistFromCounts(tc.counts)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if h.Count() != tc.want {
				t.Fatalf("Count = %d, want %d", h.Count(), tc.want)
			}
		})
	}
}

func TestDelayHistAddDoesNotAllocate(t *testing.T) {
	var h DelayHist
	if n := testing.AllocsPerRun(100, func() { h.Add(3 * time.Millisecond) }); n != 0 {
		t.Fatalf("Add allocates %v times", n)
	}
}

func rep(n int, d time.Duration) []time.Duration {
	s := make([]time.Duration, n)
	for i := range s {
		s[i] = d
	}
	return s
}
