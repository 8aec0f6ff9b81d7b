package logspace

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Keep says how much of an rr log a host keeps beyond what its readers still need.
type Keep struct {
	// Needed is the first byte a reader still needs: the backup's ack on a
	// primary, what the feed has given the replay on a backup, the end of what
	// was read on a log nobody replays.
	Needed int64
	// Behind is how many bytes before Needed to keep as well.
	Behind int64
	// All keeps the whole log (a retention that still holds, --keep-log): the
	// log's start is the snapshot a replay of it starts from.
	All bool
}

// FreeTo is the offset below which the log may be freed. Over its disk limit a
// host keeps only what is needed: the limit wins over retention.
func (k Keep) FreeTo(overLimit bool) int64 {
	switch {
	case overLimit:
		return max(k.Needed, 0)
	case k.All:
		return 0
	}
	return max(k.Needed-k.Behind, 0)
}

// Retention is how much log a backup keeps beyond what its replay needs, for a
// forensic replay. A replay needs the state the log starts from: protection
// starts at the guest's boot, so the only such state is the boot and a window of
// the last N minutes alone replays nothing. A backup therefore keeps both or
// neither: the whole log, from the boot, for as long as it is within the
// retention (its age or its size), and nothing beyond what the replay needs once
// it is not (the retention has lapsed).
type Retention struct {
	All   bool          // keep the whole log for as long as the VM runs
	Age   time.Duration // keep the whole log while its start is at most this old
	Bytes int64         // keep the whole log while it is at most this long
}

// IsZero: no retention (the default): nothing beyond what the replay needs.
func (r Retention) IsZero() bool { return !r.All && r.Age == 0 && r.Bytes == 0 }

// Holds reports whether a log that started age ago and is n bytes long is still
// within the retention, to be kept whole.
func (r Retention) Holds(age time.Duration, n int64) bool {
	switch {
	case r.All:
		return true
	case r.Age > 0:
		return age <= r.Age
	case r.Bytes > 0:
		return n <= r.Bytes
	}
	return false
}

func (r Retention) String() string {
	switch {
	case r.All:
		return "all"
	case r.Age > 0:
		return r.Age.String()
	case r.Bytes > 0:
		return FormatSize(r.Bytes)
	}
	return "0"
}

// ParseRetention reads "0" or "none" (no retention), "all", a duration ("30m",
// "2h") or a size ("512MiB", "2GiB", bytes).
func ParseRetention(s string) (Retention, error) {
	s = strings.TrimSpace(s)
	switch strings.ToLower(s) {
	case "", "0", "none":
		return Retention{}, nil
	case "all":
		return Retention{All: true}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return Retention{}, fmt.Errorf("retention %q: a duration must be positive", s)
		}
		return Retention{Age: d}, nil
	}
	n, err := ParseSize(s)
	if err != nil {
		return Retention{}, fmt.Errorf("retention %q: want 0, all, a duration (30m) or a size (512MiB)", s)
	}
	return Retention{Bytes: n}, nil
}

// ParseKeep reads a byte count kept behind a log's reader: a size, or "all"
// (returned as -1: keep the whole log).
func ParseKeep(s string) (int64, error) {
	if strings.EqualFold(strings.TrimSpace(s), "all") {
		return -1, nil
	}
	n, err := ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("%q: want a size (64MiB) or all", s)
	}
	return n, nil
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40},
	{"b", 1},
}

// ErrSize: not a size.
var ErrSize = errors.New("not a size")

// ParseSize reads a byte count: a plain number, or one with a unit: KiB, MiB,
// GiB, TiB (and K, M, G, T for the same), or KB, MB, GB, TB (powers of 1000);
// case does not matter; a fraction is allowed with a unit ("1.5GiB").
func ParseSize(s string) (int64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	if t == "" {
		return 0, fmt.Errorf("%w: %q", ErrSize, s)
	}
	if n, err := strconv.ParseInt(t, 10, 64); err == nil {
		if n < 0 || (n > 0 && mult > math.MaxInt64/n) {
			return 0, fmt.Errorf("%w: %q is out of range", ErrSize, s)
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || mult == 1 || f < 0 || math.IsNaN(f) || f*float64(mult) >= math.MaxInt64 {
		return 0, fmt.Errorf("%w: %q", ErrSize, s)
	}
	return int64(f * float64(mult)), nil
}

// FormatSize writes n in the largest binary unit that keeps it readable.
func FormatSize(n int64) string {
	switch {
	case n >= 1<<40 && n%(1<<40) == 0:
		return fmt.Sprintf("%dTiB", n>>40)
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", n>>30)
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	case n >= 1<<30:
		return fmt.Sprintf("%.2fGiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.2fMiB", float64(n)/(1<<20))
	}
	return strconv.FormatInt(n, 10)
}
