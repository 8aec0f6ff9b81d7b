package rrcheck

// ConsoleDiff compares the recording's console with the replay's.
type ConsoleDiff struct {
	Identical   bool `json:"identical"`
	RecordBytes int  `json:"record_bytes"`
	ReplayBytes int  `json:"replay_bytes"`
	// FirstDiff is the offset of the first byte that differs, or where the
	// shorter console ends; -1 when identical.
	FirstDiff int `json:"first_diff"`
	// RecordExcerpt and ReplayExcerpt are the bytes around FirstDiff on each side
	// (from up to ExcerptBefore bytes before it to up to ExcerptAfter after it).
	RecordExcerpt string `json:"record_excerpt,omitempty"`
	ReplayExcerpt string `json:"replay_excerpt,omitempty"`
}

// Excerpt bounds around the first difference.
const (
	ExcerptBefore = 40
	ExcerptAfter  = 80
)

// CompareConsoles compares two console captures byte by byte.
func CompareConsoles(record, replay []byte) ConsoleDiff {
	d := ConsoleDiff{RecordBytes: len(record), ReplayBytes: len(replay), FirstDiff: -1}
	n := min(len(record), len(replay))
	i := 0
	for i < n && record[i] == replay[i] {
		i++
	}
	if i == n && len(record) == len(replay) {
		d.Identical = true
		return d
	}
	d.FirstDiff = i
	d.RecordExcerpt, d.ReplayExcerpt = excerpt(record, i), excerpt(replay, i)
	return d
}

func excerpt(b []byte, at int) string {
	lo := max(0, at-ExcerptBefore)
	hi := min(len(b), at+ExcerptAfter)
	if lo >= hi {
		return ""
	}
	return string(b[lo:hi])
}
