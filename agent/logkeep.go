package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/logspace"
)

// Log space defaults.
const (
	// DefaultUnprotectedLogKeep is how much rr log a VM that nothing replays keeps
	// behind its end.
	DefaultUnprotectedLogKeep = 64 << 20
	// DefaultConsoleMaxBytes is the size at which a console log is rotated: far
	// above what a guest prints in the end-to-end tests, which compare the
	// primary's and the backup's console files whole.
	DefaultConsoleMaxBytes = 16 << 20
	// DefaultConsoleKeep is how many rotated console copies are kept.
	DefaultConsoleKeep = 4
	// DefaultLogCheckEvery is how often a VM's logs are freed and measured: the
	// primary's log on disk stays near what this long of recording writes plus
	// what the backup has not acknowledged.
	DefaultLogCheckEvery = 500 * time.Millisecond
	// MinConsoleMaxBytes keeps a rotation from copying a file every check.
	MinConsoleMaxBytes = 64 << 10
)

// Alarm thresholds, as fractions of the VM's limit.
const (
	logAlarmAt  = 0.8 // warn from here
	logResumeAt = 0.9 // a guest paused at the limit resumes below this
)

// logPlan is what a VM copy's rr log must keep, as the VM sees it now.
type logPlan struct {
	keep logspace.Keep
	// keeps says it for status ("until the backup acknowledges it", ...).
	keeps string
	// hold keeps the log exactly as it is: a failed or halted copy's log is the
	// evidence of what happened.
	hold bool
	// canWait: the log shrinks by itself as a reader catches up (a primary whose
	// backup acknowledges it), so at the limit the guest may wait for that.
	canWait bool
}

// logKeeper bounds the disk space of one VM copy's logs on this host, its rr log
// and its console log: every check it frees the rr log's prefix that no reader
// needs any more (the VM's plan says how far), rotates the console, measures what
// the logs take on disk, alarms before the VM's limit or the file system runs out,
// and at the limit asks the VM to wait (a primary pauses its guest until its
// backup has acknowledged enough log to free).
type logKeeper struct {
	log     *slog.Logger
	rr      string // the rr log
	dir     string // where the logs are (free space)
	freer   *logspace.Freer
	console *logspace.Rotator
	limit   int64
	plan    func() logPlan
	// pause pauses (true) or resumes (false) the guest; nil when the copy has
	// none to pause (a backup).
	pause func(ctx context.Context, paused bool) error
	// atLimit says what happens at the limit, for the alarm.
	atLimit string

	mu       sync.Mutex
	usage    logspace.Usage
	fsFree   int64
	keeps    string
	alarm    string
	paused   bool
	freeErr  error // why the prefix cannot be freed (wraps logspace.ErrUnsupported)
	limitWon bool  // the limit made the log drop what a retention or --keep-log kept
}

// newLogKeeper prepares the keeper of the rr log at rr and the console log at
// console (either may not exist yet). It probes whether the file system can free
// a file's prefix and says so in the log and in status when it cannot.
func newLogKeeper(log *slog.Logger, rr, console string, limit int64, cfg Config, plan func() logPlan) *logKeeper {
	k := &logKeeper{
		log: log, rr: rr, dir: filepath.Dir(rr), limit: limit, plan: plan,
		console: &logspace.Rotator{Path: console, MaxBytes: cfg.ConsoleMaxBytes, Keep: cfg.ConsoleKeep},
		atLimit: "keeping only the log a reader still needs",
	}
	if err := logspace.Probe(k.dir); err != nil {
		k.freeErr = err
		log.Warn("consumed rr log cannot be freed here: the log grows until the VM stops", "dir", k.dir, "err", err)
	}
	return k
}

// run checks every interval until ctx ends.
func (k *logKeeper) run(ctx context.Context, every time.Duration) {
	defer func() {
		k.mu.Lock()
		fr := k.freer
		k.mu.Unlock()
		if fr != nil {
			_ = fr.Close()
		}
	}()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		k.step(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// step frees, rotates, measures and judges once.
func (k *logKeeper) step(ctx context.Context) {
	p := k.plan()
	k.mu.Lock()
	over := k.usage.Allocated >= k.limit
	k.mu.Unlock()
	if !p.hold {
		k.free(p, over)
	}
	if _, err := k.console.Rotate(); err != nil {
		k.log.Warn("console rotation", "err", err)
	}
	usage, err := logspace.StatFiles(append([]string{k.rr}, k.console.Files()...)...)
	if err != nil {
		k.log.Warn("log disk usage", "err", err)
		return
	}
	fsFree, err := logspace.Free(k.dir)
	if err != nil {
		k.log.Warn("log disk free space", "err", err)
	}
	k.mu.Lock()
	paused := k.paused
	k.mu.Unlock()
	pauseNow := k.pause != nil && p.canWait && !paused && usage.Allocated >= k.limit
	resumeNow := paused && float64(usage.Allocated) < logResumeAt*float64(k.limit)
	switch {
	case pauseNow:
		if err := k.pause(ctx, true); err != nil {
			k.log.Warn("pause at the log disk limit", "err", err)
		} else {
			paused = true
			k.log.Warn("guest paused at the log disk limit until the backup acknowledges more log",
				"log_disk", usage.Allocated, "limit", k.limit)
		}
	case resumeNow:
		if err := k.pause(ctx, false); err != nil {
			k.log.Warn("resume below the log disk limit", "err", err)
		} else {
			paused = false
			k.log.Info("guest resumed below the log disk limit", "log_disk", usage.Allocated, "limit", k.limit)
		}
	}
	alarm := logAlarm(usage.Allocated, k.limit, fsFree, paused, k.atLimit)
	k.mu.Lock()
	prev := k.alarm
	k.usage, k.fsFree, k.keeps, k.alarm, k.paused = usage, fsFree, p.keeps, alarm, paused
	k.mu.Unlock()
	switch {
	case alarm != "" && prev == "":
		k.log.Warn("log disk alarm", "alarm", alarm, "log_disk", usage.Allocated, "limit", k.limit, "fs_free", fsFree)
	case alarm == "" && prev != "":
		k.log.Info("log disk alarm cleared", "log_disk", usage.Allocated, "limit", k.limit, "fs_free", fsFree)
	}
}

// free gives back the rr log's prefix the plan no longer keeps.
func (k *logKeeper) free(p logPlan, over bool) {
	if k.freeErr != nil {
		return
	}
	if k.freer == nil {
		fr, err := logspace.NewFreer(k.rr)
		if err != nil {
			return // not created yet: QEMU creates it
		}
		k.mu.Lock()
		k.freer = fr
		k.mu.Unlock()
	}
	to := p.keep.FreeTo(over)
	if over && to > p.keep.FreeTo(false) && !k.limitWon {
		k.mu.Lock()
		k.limitWon = true
		k.mu.Unlock()
		k.log.Warn("log disk limit reached: the rr log no longer keeps more than its readers need", "keeps", p.keeps, "limit", k.limit)
	}
	if _, err := k.freer.FreeTo(to); err != nil {
		if errors.Is(err, logspace.ErrUnsupported) {
			k.mu.Lock()
			k.freeErr = err
			k.mu.Unlock()
			k.log.Warn("consumed rr log cannot be freed here: the log grows until the VM stops", "err", err)
			return
		}
		k.log.Warn("free consumed rr log", "err", err)
	}
}

// logAlarm says what an operator must know about a VM's log space, or "".
func logAlarm(used, limit, fsFree int64, paused bool, atLimit string) string {
	var msg string
	switch {
	case used >= limit:
		what := atLimit
		if paused {
			what = "guest paused until the backup acknowledges more log"
		}
		msg = fmt.Sprintf("AT LIMIT: logs take %s of the VM's %s (max_log_disk): %s",
			logspace.FormatSize(used), logspace.FormatSize(limit), what)
	case float64(used) >= logAlarmAt*float64(limit):
		msg = fmt.Sprintf("logs take %s, %.0f%% of the VM's %s (max_log_disk)",
			logspace.FormatSize(used), 100*float64(used)/float64(limit), logspace.FormatSize(limit))
	}
	if room := limit - used; room > 0 && fsFree < room {
		low := fmt.Sprintf("the file system has %s free, less than the %s the logs may still grow by before their limit",
			logspace.FormatSize(fsFree), logspace.FormatSize(room))
		if msg == "" {
			return low
		}
		return msg + "; " + low
	}
	return msg
}

// fill puts the keeper's figures into a status.
func (k *logKeeper) fill(st *control.VMStatus) {
	if k == nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	st.LogDiskBytes, st.LogFileBytes = k.usage.Allocated, k.usage.Size
	st.LogDiskLimit, st.LogFSFree, st.LogKeeps = k.limit, k.fsFree, k.keeps
	st.LogDiskAlarm, st.LogLimitPaused = k.alarm, k.paused
	if k.freer != nil {
		st.LogFreed = k.freer.Freed()
	}
	if k.freeErr != nil {
		st.LogFreeError = k.freeErr.Error()
	}
	if err := k.console.Err(); err != nil {
		if st.LogFreeError != "" {
			st.LogFreeError += "; "
		}
		st.LogFreeError += "console log not rotated: " + err.Error()
	}
	if k.limitWon {
		st.LogKeeps += " (the limit was reached: what a retention or --keep-log kept was freed)"
	}
	st.ConsoleRotations = k.console.Rotations()
}

// logNeeds is how much log space a VM's logs keep by this agent's settings at
// least: the console and its rotated copies, and the tail an unprotected VM keeps.
func (a *Agent) logNeeds() int64 {
	n := a.cfg.ConsoleMaxBytes * int64(a.cfg.ConsoleKeep+1)
	if a.cfg.UnprotectedLogKeep > 0 {
		n += a.cfg.UnprotectedLogKeep
	}
	return n
}

// checkLogSpace refuses to start a VM copy whose logs may take more than the file
// system holding dir has free.
func checkLogSpace(dir string, limit int64) error {
	free, err := logspace.Free(dir)
	if err != nil {
		return err
	}
	if free < limit {
		return fmt.Errorf("its logs may take up to %s (max_log_disk; vm define --max-log-disk) but %s has only %s free (%s)",
			logspace.FormatSize(limit), dir, logspace.FormatSize(free), logspace.FSType(dir))
	}
	return nil
}
