package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/ftvmd/ftvmd/lifecycle"
)

// When the divergence sentinel steps a backup down (its replay diverged, or stalled
// past --stall-step-down), what it found is kept for forensics: stepdown.json in the
// backup's directory says what differed or stood still and where (icount, log
// offset), beside the received log and the replay's console. The primary then
// protects the VM again from a fresh start, and the new backup's start would wipe
// the directory: it moves it aside to <dir>.stepped-down first (one generation: a
// replay that keeps stepping down does not fill the disk), without the replay's
// disk copy (as large as the VM's disk, and the replay changed it).

// evidenceFile names the step-down's record in the backup's directory.
const evidenceFile = "stepdown.json"

// steppedDownSuffix is added to a stepped-down backup's directory when a new
// backup of the same VM starts.
const steppedDownSuffix = ".stepped-down"

// stepDownEvidence is what stepdown.json holds.
type stepDownEvidence struct {
	Time   time.Time `json:"time"`
	VM     string    `json:"vm"`
	Peer   string    `json:"primary"`
	Reason string    `json:"reason"` // what differed or stood still, and where
	// Where the replay stood: its instruction count and the log offset that count
	// maps to, what was fed to its QEMU and what the backup held.
	Icount    uint64 `json:"icount"`
	LogOffset int64  `json:"log_offset"`
	Fed       int64  `json:"log_fed"`
	Held      int64  `json:"log_held"`
	// What the sentinel had compared: console bytes, NIC frames.
	ConsoleChecked int64  `json:"console_checked"`
	NICFrames      uint64 `json:"nic_frames"`
	NICMatched     uint64 `json:"nic_matched"`
	NICSkipped     uint64 `json:"nic_skipped"`
	// The replay's stall, if it was stalled (the stall step-down's, or one that a
	// divergence found under way).
	Stalled        bool    `json:"stalled"`
	StalledSec     float64 `json:"stalled_sec,omitempty"`
	StalledWaiting string  `json:"stalled_waiting,omitempty"`
	Stalls         uint64  `json:"stalls"`
	// Files: what the directory keeps for a look (paths relative to it).
	Files []string `json:"files"`
}

// sentinelStepDown steps the backup down for what the divergence sentinel found
// (what: what differed or stood still, with where the replay was: icount, log
// offset pos), after writing it down for forensics. The lifecycle decides: a
// replaying backup steps down and tells its primary it was the sentinel; one whose
// primary is already lost ignores it.
func (b *backup) sentinelStepDown(what string, icount uint64, pos int64) {
	b.mu.Lock()
	again := b.sentinelDown
	b.sentinelDown = true
	b.mu.Unlock()
	if again {
		return // the first finding stands (a divergence and a stall may both come)
	}
	ev := stepDownEvidence{Time: time.Now().UTC(), VM: b.spec.Name, Peer: b.peer, Reason: what,
		Icount: icount, LogOffset: pos, Files: []string{"log.rr", "console.log"}}
	if b.feed != nil {
		ev.Fed = b.feed.FedOffset()
	}
	if b.recv != nil {
		ev.Held = b.recv.Held()
	}
	b.mu.Lock()
	ev.ConsoleChecked = b.consoleChecked
	ev.NICFrames, ev.NICMatched, ev.NICSkipped = b.nic.Replayed, b.nic.Matched, b.nic.Skipped
	ev.Stalled, ev.Stalls, ev.StalledWaiting = b.stall.Stalled, b.stall.Episodes, b.stall.Waiting
	if b.stall.Stalled {
		ev.StalledSec = b.stall.For.Seconds()
	} else {
		ev.StalledWaiting = ""
	}
	b.mu.Unlock()
	if b.snap != nil {
		ev.Files = append(ev.Files, "snapshot.qcow2")
	}
	before := b.life.state().State
	_ = b.life.step(lifecycle.SentinelTripped(what))
	if after := b.life.state().State; before != lifecycle.Replaying || after != lifecycle.Failed {
		// The primary is lost (claiming, going live): nothing stepped down, and the
		// directory may become the live VM's.
		b.log.Warn("divergence sentinel: no step-down: the primary is lost", "state", after.String(), "found", what)
		return
	}
	// The figures were taken before the step-down; the teardown that follows it
	// leaves the directory's files where they are.
	path, err := writeEvidence(b.dir, ev)
	if err != nil {
		b.log.Warn("divergence sentinel: the step-down's evidence could not be written", "err", err)
		return
	}
	b.mu.Lock()
	b.evidence = path
	b.mu.Unlock()
	b.log.Info("divergence sentinel: what it found is kept", "file", path)
}

// writeEvidence writes ev to dir's stepdown.json and returns its path.
func writeEvidence(dir string, ev stepDownEvidence) (string, error) {
	if dir == "" {
		return "", errors.New("no backup directory")
	}
	data, err := json.MarshalIndent(ev, "", "  ")
	if err != nil {
		return "", fmt.Errorf("encode step-down evidence: %w", err)
	}
	path := filepath.Join(dir, evidenceFile)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return "", fmt.Errorf("write step-down evidence: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return "", fmt.Errorf("write step-down evidence: %w", err)
	}
	return path, nil
}

// keepEvidence moves a stepped-down backup's directory (one holding stepdown.json)
// aside to dir+steppedDownSuffix, replacing an older one, so that a new backup of
// the VM starts from an empty directory without wiping it. The replay's disk copy
// is dropped first. It returns where the evidence went ("" if dir held none).
func keepEvidence(dir string) (string, error) {
	if _, err := os.Stat(filepath.Join(dir, evidenceFile)); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return "", nil
		}
		return "", fmt.Errorf("look for a step-down's evidence: %w", err)
	}
	if err := os.Remove(filepath.Join(dir, "disk.qcow2")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("drop the stepped-down replay's disk: %w", err)
	}
	kept := dir + steppedDownSuffix
	if err := os.RemoveAll(kept); err != nil {
		return "", fmt.Errorf("drop older step-down evidence: %w", err)
	}
	if err := os.Rename(dir, kept); err != nil {
		return "", fmt.Errorf("keep step-down evidence: %w", err)
	}
	return kept, nil
}
