package bench

import (
	"context"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/lab"
)

// CPUResult is `ftvmd bench cpu`'s summary: the same CPU-bound task in the guest,
// unprotected and protected on the same engine (icount + record), in one run.
type CPUResult struct {
	Env  Env `json:"env"`
	MB   int `json:"md5_mb"`
	Runs int `json:"runs"`
	// Reps is how many `md5 MB` commands one run sends back to back: enough for
	// an unprotected run to last MinSeconds, measured once before the first run.
	Reps       int     `json:"md5_per_run"`
	MinSeconds float64 `json:"min_run_s"`
	// IcountShift is the guest's --icount-shift when the run set one (0: vm
	// define's default).
	IcountShift int       `json:"icount_shift,omitempty"`
	Unprotected []float64 `json:"unprotected_s"`
	Protected   []float64 `json:"protected_s"`
	Ratio       float64   `json:"speed_ratio_protected_vs_unprotected"` // >1 is faster
	// ThrottledSec is how long the primary's CPU quota was below 1 during the
	// protected runs (boot catch-up excluded): the throttle slows the primary
	// when the backup's replay falls behind.
	ThrottledSec float64 `json:"throttled_s"`
	// LagMSAtEnd is the backup's lag when the last protected run ended.
	LagMSAtEnd float64 `json:"lag_ms_at_end"`
	// Where the CPU went during each side's runs.
	CPUUnprotected CPUUse `json:"cpu_unprotected"`
	CPUProtected   CPUUse `json:"cpu_protected"`
	// ReplayPerRecordCPU is the CPU time the backup's QEMU took to replay the
	// protected runs over the CPU time the unprotected QEMU took to record the same
	// work (both sides run the same md5 commands). Above 1 the replay costs more
	// than the recording: a backup with a whole core to itself would still hold
	// the primary to about its inverse. The gap between that and Ratio is what the
	// lab's sharing of the backup's core (its agent, the primary's agent) costs.
	ReplayPerRecordCPU float64 `json:"replay_cpu_per_record_cpu,omitempty"`
}

// replayPerRecord is CPUResult.ReplayPerRecordCPU, 0 when a side has no CPU reading.
func replayPerRecord(r CPUResult) float64 {
	rec := r.CPUUnprotected.PrimaryQEMU * sum(r.Unprotected)
	rep := r.CPUProtected.BackupQEMU * sum(r.Protected)
	if rec <= 0 || rep <= 0 {
		return 0
	}
	return rep / rec
}

func sum(xs []float64) float64 {
	var t float64
	for _, x := range xs {
		t += x
	}
	return t
}

// md5Margin covers the spread between one md5 and the next on a shared host, so
// that a run sized from one timed md5 still lasts minSeconds.
const md5Margin = 1.15

// md5Reps is how many md5 commands of once seconds each make a run of at least
// minSeconds with md5Margin to spare (one at least).
func md5Reps(once, minSeconds float64) int {
	if once <= 0 || minSeconds <= 0 {
		return 1
	}
	return max(1, int(math.Ceil(minSeconds*md5Margin/once)))
}

// CPU times `md5 <mb>` in the guest, repeated so that one unprotected run lasts
// at least minSeconds, runs times each way: unprotected first, then protected.
//
// icountShift, when not 0, defines the guest with that --icount-shift: the
// guest time one instruction stands for, which sets how many timer events, and
// so log events, the same work brings.
func CPU(ctx context.Context, s *Session, env Env, mb, runs int, minSeconds float64, icountShift int) (CPUResult, error) {
	res := CPUResult{Env: env, MB: mb, Runs: runs, MinSeconds: minSeconds, IcountShift: icountShift}
	if mb <= 0 || runs <= 0 {
		return res, fmt.Errorf("bench cpu: --mb and --runs must be positive (got %d, %d)", mb, runs)
	}
	var define []string
	if icountShift != 0 {
		define = []string{"--icount-shift", strconv.Itoa(icountShift)}
	}
	for _, protected := range []bool{false, true} {
		vm := "benchcpu"
		if _, err := s.StartGuest(ctx, vm, "", protected, define...); err != nil {
			return res, err
		}
		if protected {
			// Time the task, not the backup catching up with boot.
			if err := s.WaitSettled(ctx, vm, 5*time.Minute); err != nil {
				return res, err
			}
		}
		if err := cpuSide(ctx, s, vm, protected, &res); err != nil {
			return res, err
		}
		if err := s.StopGuest(ctx, vm); err != nil {
			return res, err
		}
	}
	res.Ratio = NewDist(res.Unprotected).P50 / NewDist(res.Protected).P50
	res.ReplayPerRecordCPU = replayPerRecord(res)
	return res, nil
}

// cpuSide runs one side's measurements on a started guest and adds them to res.
func cpuSide(ctx context.Context, s *Session, vm string, protected bool, res *CPUResult) error {
	c, err := lab.NewClient(ctx, 30*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	defer context.AfterFunc(ctx, func() { c.Close() })()
	md5 := func() error {
		out, err := c.Do(fmt.Sprintf("md5 %d", res.MB), 10*time.Minute)
		if err != nil || !strings.HasPrefix(out, "md5 ") {
			return fmt.Errorf("md5 in guest: %q %v", out, err)
		}
		return nil
	}
	if res.Reps == 0 {
		// Calibrate on the unprotected guest: one md5 to warm up (the first
		// takes longer), one timed.
		if err := md5(); err != nil {
			return err
		}
		t0 := time.Now()
		if err := md5(); err != nil {
			return err
		}
		once := time.Since(t0).Seconds()
		res.Reps = md5Reps(once, res.MinSeconds)
		s.logf("md5 %d MiB took %.2f s: %d per run", res.MB, once, res.Reps)
	}
	probe, err := newCPUProbe(ctx, s.Lab, vm, protected)
	if err != nil {
		return err
	}
	st0, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		return err
	}
	c0, err := probe.snap()
	if err != nil {
		return err
	}
	for i := 0; i < res.Runs; i++ {
		t0 := time.Now()
		for j := 0; j < res.Reps; j++ {
			if err := md5(); err != nil {
				return err
			}
		}
		d := time.Since(t0).Seconds()
		s.logf("protected=%v run %d: %.2f s", protected, i, d)
		if protected {
			res.Protected = append(res.Protected, d)
		} else {
			res.Unprotected = append(res.Unprotected, d)
		}
	}
	c1, err := probe.snap()
	if err != nil {
		return err
	}
	if !protected {
		res.CPUUnprotected = use(c0, c1)
		return nil
	}
	res.CPUProtected = use(c0, c1)
	st1, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		return err
	}
	res.ThrottledSec = st1.ThrottledSec - st0.ThrottledSec
	res.LagMSAtEnd = st1.LagMS
	return nil
}
