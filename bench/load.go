package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/lab"
)

// LoadRun is one lab's pass over every pattern: one protected guest, one boot,
// the patterns one after another (as TestLoadLockstep runs them).
type LoadRun struct {
	Lab    int         `json:"lab"`
	BootS  float64     `json:"boot_s"`
	Phases []LoadPhase `json:"phases"`
	// TailError: after the last phase the backup had not replayed what the
	// primary printed a few seconds earlier ("" when it had).
	TailError string `json:"tail_error,omitempty"`
	Evidence  string `json:"evidence,omitempty"` // where a failed run's logs were kept
}

// LoadSummary is one pattern over all labs.
type LoadSummary struct {
	Pattern string `json:"pattern"`
	Desc    string `json:"desc"`
	Runs    int    `json:"runs"` // labs on which it ran
	// LagMS pools the lag samples of every run.
	LagMS       Dist    `json:"lag_ms"`
	Stalled     int     `json:"stalled_runs"`
	Failed      int     `json:"failed_runs"` // stalls included
	ToClientMBs Dist    `json:"guest_to_client_MB_s"`
	ToGuestMBs  Dist    `json:"client_to_guest_MB_s"`
	ThrottledS  Dist    `json:"throttled_s"`
	LongestStil float64 `json:"longest_still_s"`
}

// LoadResult is `ftvmd bench load`'s summary.
type LoadResult struct {
	Env        Env           `json:"env"`
	Labs       int           `json:"labs"`
	Seconds    float64       `json:"seconds_per_pattern"`
	Selected   []string      `json:"patterns_run"`
	LagBoundMS int           `json:"lag_bound_ms"`
	Patterns   []LoadSummary `json:"patterns"`
	Runs       []LoadRun     `json:"runs"`
}

// Load runs each of patterns (every pattern when nil) for d on each of labs fresh labs. A phase that fails
// (stall, divergence, wrong answer) ends its lab's pass: the patterns after it
// are reported as not run there, the lab's logs are kept under evidenceDir (if
// set) and the next lab starts fresh. Lab setup failures end the benchmark.
func Load(ctx context.Context, out io.Writer, env Env, labs int, d time.Duration, patterns []LoadPattern, evidenceDir string, la LabArgs) (LoadResult, error) {
	if patterns == nil {
		patterns = LoadPatterns()
	}
	res := LoadResult{Env: env, Labs: labs, Seconds: d.Seconds()}
	for _, p := range patterns {
		res.Selected = append(res.Selected, p.Name)
	}
	if labs < 1 || d <= 0 || len(patterns) == 0 {
		return res, fmt.Errorf("bench load: need at least one lab, a positive time and a pattern (got %d labs, %s, %d patterns)", labs, d, len(patterns))
	}
	for i := 1; i <= labs; i++ {
		run, bound, err := loadOneLab(ctx, out, i, d, patterns, evidenceDir, la)
		res.Runs = append(res.Runs, run)
		if err != nil {
			return res, fmt.Errorf("lab %d: %w", i, err)
		}
		res.LagBoundMS = bound
	}
	res.Patterns = summarizeLoad(patterns, res.Runs)
	return res, nil
}

func loadOneLab(ctx context.Context, out io.Writer, i int, d time.Duration, patterns []LoadPattern, evidenceDir string, la LabArgs) (run LoadRun, bound int, err error) {
	run.Lab = i
	s, err := OpenLab(ctx, out, la)
	if err != nil {
		return run, 0, err
	}
	defer func() {
		if cerr := s.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	const vm = "benchload"
	c := LabCopies(vm)
	boot, err := s.StartGuest(ctx, vm, "", true)
	if err != nil {
		return run, 0, err
	}
	run.BootS = boot.Seconds()
	// StartGuest waited for the lag; the backup's console shows its boot is replayed.
	if err := lab.WaitConsole(ctx, c.BackupConsole, "ftguest ready", 4*time.Minute); err != nil {
		return run, 0, err
	}
	st, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		return run, 0, err
	}
	fmt.Fprintf(out, "lab %d: guest booted in %.1f s, backup caught up; %s per pattern\n", i, boot.Seconds(), d)
	failed := ""
	for _, p := range patterns {
		if failed != "" {
			run.Phases = append(run.Phases, LoadPhase{Pattern: p.Name, Error: "not run: " + failed})
			continue
		}
		ph, err := RunLoadPhase(ctx, c, p, LabTarget(), d)
		run.Phases = append(run.Phases, ph)
		fmt.Fprintf(out, "lab %d: %s\n", i, ph.Line())
		if err != nil {
			if ctx.Err() != nil {
				return run, st.LagBoundMS, err
			}
			failed = fmt.Sprintf("phase %s failed", p.Name)
		}
	}
	if failed == "" {
		if err := BackupCaughtUp(ctx, c.PrimaryConsole, c.BackupConsole, 3*time.Second); err != nil {
			run.TailError = err.Error()
			fmt.Fprintf(out, "lab %d: %v\n", i, err)
		}
	}
	if (failed != "" || run.TailError != "") && evidenceDir != "" {
		dir := filepath.Join(evidenceDir, fmt.Sprintf("lab%d", i))
		if err := KeepEvidence(ctx, dir, vm); err != nil {
			fmt.Fprintf(out, "lab %d: keeping evidence: %v\n", i, err)
		} else {
			run.Evidence = dir
			fmt.Fprintf(out, "lab %d: logs, consoles and status kept in %s\n", i, dir)
		}
	}
	return run, st.LagBoundMS, nil
}

// KeepEvidence keeps what a failed load run needs for a diagnosis in dir: both
// agents' logs, both copies' status and their run directories' files (consoles,
// the primary's rr log and the backup's received copy of it, which an offline
// replay can retry). Large logs are hard-linked where dir is on the same file
// system, so they survive the next lab's purge without a copy.
func KeepEvidence(ctx context.Context, dir, vm string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var errs []error
	for _, h := range []lab.Host{lab.HostA, lab.HostB} {
		if err := keepFile(lab.AgentLog(h), filepath.Join(dir, "agent-"+h.Name+".log")); err != nil {
			errs = append(errs, err)
		}
		runs, _ := filepath.Glob(filepath.Join(h.Dir, "run", vm+".*"))
		for _, run := range runs {
			ents, err := os.ReadDir(run)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			for _, e := range ents {
				// Regular files only (no sockets, FIFOs); disk images are not evidence.
				if !e.Type().IsRegular() || strings.HasSuffix(e.Name(), ".qcow2") {
					continue
				}
				dst := filepath.Join(dir, h.Name+"-"+filepath.Base(run)+"-"+e.Name())
				if err := keepFile(filepath.Join(run, e.Name()), dst); err != nil {
					errs = append(errs, err)
				}
			}
		}
		st, err := lab.Status(ctx, h, vm)
		if err != nil {
			errs = append(errs, fmt.Errorf("status on %s: %w", h.Name, err))
			continue
		}
		b, err := json.MarshalIndent(st, "", "  ")
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "status-"+h.Name+".json"), b, 0o644)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("status of %s: %w", h.Name, err))
		}
	}
	return errors.Join(errs...)
}

// keepFile hard-links src to dst, or copies it when they are on different file
// systems.
func keepFile(src, dst string) error {
	_ = os.Remove(dst)
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	return out.Close()
}

func summarizeLoad(patterns []LoadPattern, runs []LoadRun) []LoadSummary {
	var sums []LoadSummary
	for _, p := range patterns {
		s := LoadSummary{Pattern: p.Name, Desc: p.Desc}
		var lags, toC, toG, thr []float64
		for _, r := range runs {
			for _, ph := range r.Phases {
				if ph.Pattern != p.Name || ph.Seconds == 0 {
					continue
				}
				s.Runs++
				lags = append(lags, ph.lags...)
				if ph.Stalled {
					s.Stalled++
				}
				if ph.Error != "" {
					s.Failed++
				}
				toC, toG, thr = append(toC, ph.ToClientMBs), append(toG, ph.ToGuestMBs), append(thr, ph.ThrottledS)
				s.LongestStil = max(s.LongestStil, ph.LongestStillS)
			}
		}
		s.LagMS, s.ToClientMBs, s.ToGuestMBs, s.ThrottledS = NewDist(lags), NewDist(toC), NewDist(toG), NewDist(thr)
		sums = append(sums, s)
	}
	return sums
}

// Line is the pattern's summary as one human line.
func (s LoadSummary) Line() string {
	stalled := "no"
	if s.Stalled > 0 {
		stalled = fmt.Sprintf("YES (%d of %d runs)", s.Stalled, s.Runs)
	}
	failed := ""
	if s.Failed > s.Stalled {
		failed = fmt.Sprintf(", %d runs failed otherwise", s.Failed-s.Stalled)
	}
	return fmt.Sprintf("%-9s runs %d  lag p50 %6.1f ms  p99 %7.1f ms  max %7.1f ms  stalled %s  guest->client %6.2f MB/s  client->guest %6.2f MB/s (medians)  throttled %.1f s (median)  longest still %.2f s%s",
		s.Pattern, s.Runs, s.LagMS.P50, s.LagMS.P99, s.LagMS.Max, stalled, s.ToClientMBs.P50, s.ToGuestMBs.P50, s.ThrottledS.P50, s.LongestStil, failed)
}
