package rrcheck

import (
	"fmt"
	"strings"
	"time"
)

// Verdict is a check's conclusion.
type Verdict string

// Verdicts.
const (
	// Deterministic: the replay reached the log's end at the recorded icount with
	// the recorded console and emitted nothing.
	Deterministic Verdict = "deterministic"
	// Diverged: the replay did something else than the recording.
	Diverged Verdict = "diverged"
	// Stalled: the replay stopped making progress before the log's end and did
	// nothing that contradicts the recording up to there.
	Stalled Verdict = "stalled"
)

// End is how the replaying QEMU finished.
type End string

// Ends.
const (
	// EndLogEnd: the replay consumed the SHUTDOWN the recorder logged at its exit
	// and paused there (run state "shutdown"): it reached the log's end.
	EndLogEnd End = "end-of-log"
	// EndExited: QEMU exited by itself.
	EndExited End = "exited"
	// EndStalled: the icount did not move for the stall timeout.
	EndStalled End = "stalled"
)

// Outcome is what a replay did, the input of Decide.
type Outcome struct {
	End End
	// RecordedIcount is the sum of the log's INSTRUCTION events; ReplayedIcount
	// the replay's last query-replay answer.
	RecordedIcount uint64
	ReplayedIcount uint64
	// ShutdownIcount is the icount at the log's first SHUTDOWN (0: none). A
	// replay run with -action shutdown=pause stops somewhere between it and
	// RecordedIcount: the recording's vCPU ran on after the shutdown request was
	// logged until the main loop stopped it, and the replay's vCPU executes those
	// logged instructions until its own main loop pauses it, a moment no log
	// records. Both ends are faithful.
	ShutdownIcount uint64
	Console        ConsoleDiff
	// Emitted counts frames the replaying QEMU sent (it must send none).
	Emitted uint64
	// ExitErr describes an EndExited exit ("" for status 0), QEMUError the last
	// lines QEMU printed.
	ExitErr   string
	QEMUError string
	// Stall is how long the icount stood still (EndStalled), Status the run
	// state last seen.
	Stall  time.Duration
	Status string
	// HostWaits are QEMU's threads found in uninterruptible sleep when the
	// stall was declared (HostWaits): the replay was waiting on this host's
	// disk, not on the log.
	HostWaits []string
}

// stoppedFaithfully reports whether a replay that reached the log's end stopped
// where the recording did: at its last instruction, or, paused at the logged
// shutdown, anywhere from the shutdown's icount to the last instruction.
func (o Outcome) stoppedFaithfully() bool {
	if o.ReplayedIcount == o.RecordedIcount {
		return true
	}
	return o.ShutdownIcount > 0 && o.ShutdownIcount <= o.ReplayedIcount && o.ReplayedIcount <= o.RecordedIcount
}

// Decide turns an outcome into a verdict and the reasons for it.
func Decide(o Outcome) (Verdict, []string) {
	var diverged, stalled []string
	// A replay console that stops short of the recording's (a prefix) is what a
	// stalled or early-ended replay leaves; a byte that differs is a divergence.
	c := o.Console
	switch {
	case c.Identical:
	case c.FirstDiff < c.ReplayBytes && c.FirstDiff < c.RecordBytes:
		diverged = append(diverged, fmt.Sprintf("consoles differ at byte %d (record %d bytes, replay %d)", c.FirstDiff, c.RecordBytes, c.ReplayBytes))
	case c.ReplayBytes > c.RecordBytes:
		diverged = append(diverged, fmt.Sprintf("the replay's console runs %d bytes past the recording's %d", c.ReplayBytes-c.RecordBytes, c.RecordBytes))
	default:
		stalled = append(stalled, fmt.Sprintf("the replay's console stops at byte %d of the recording's %d", c.ReplayBytes, c.RecordBytes))
	}
	if o.Emitted > 0 {
		diverged = append(diverged, fmt.Sprintf("the replay emitted %d network frames (a replay must emit none)", o.Emitted))
	}
	at := fmt.Sprintf("icount %d of the log's %d (%.1f%%)", o.ReplayedIcount, o.RecordedIcount, pct(o.ReplayedIcount, o.RecordedIcount))
	switch o.End {
	case EndLogEnd:
		if !o.stoppedFaithfully() {
			diverged = append(diverged, fmt.Sprintf("the replay reached the log's end at %s", at))
		}
	case EndExited:
		if o.ExitErr != "" || o.ReplayedIcount != o.RecordedIcount {
			msg := "QEMU exited before the log's end, last seen at " + at
			if o.ExitErr != "" {
				msg += ": " + o.ExitErr
			}
			if o.QEMUError != "" {
				msg += ": " + o.QEMUError
			}
			diverged = append(diverged, msg)
		}
	case EndStalled:
		msg := fmt.Sprintf("the replay made no progress for %s at %s", o.Stall.Round(time.Second), at)
		if o.Status != "" {
			msg += ", run state " + o.Status
		}
		if len(o.HostWaits) > 0 {
			msg += "; QEMU was blocked in this host's I/O then (" + strings.Join(o.HostWaits, ", ") + "): the replay waited on the host's disk, not on the log"
		}
		stalled = append([]string{msg}, stalled...)
	default:
		diverged = append(diverged, fmt.Sprintf("unknown end %q", o.End))
	}
	switch {
	case len(diverged) > 0:
		return Diverged, append(diverged, stalled...)
	case o.End == EndStalled:
		return Stalled, stalled
	case len(stalled) > 0:
		// Reached the end with a console that stops short: not the recording.
		return Diverged, stalled
	}
	return Deterministic, nil
}

func pct(a, b uint64) float64 {
	if b == 0 {
		return 0
	}
	return 100 * float64(a) / float64(b)
}
