package bench

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/ftvmd/ftvmd/lab"
)

// LagResult is `ftvmd bench lag`'s summary.
type LagResult struct {
	Env          Env     `json:"env"`
	Busy         bool    `json:"busy"`
	DurationS    float64 `json:"duration_s"`
	LagBoundMS   int     `json:"lag_bound_ms"`
	IcountShift  int     `json:"icount_shift"`
	BootS        float64 `json:"boot_s"`
	BootLogBytes int64   `json:"boot_log_bytes"`
	BootMbitS    float64 `json:"boot_log_mbit_s"`
	LagMS        Dist    `json:"lag_ms"`
	LagBytes     Dist    `json:"lag_bytes"`
	WorkLagMS    Dist    `json:"work_lag_ms"`
	LogMbitS     float64 `json:"log_mbit_s"`
	// Throttle cost: share of the run the primary was throttled, and the guest's
	// progress (instructions per second) protected.
	ThrottledFrac float64 `json:"throttled_fraction"`
	AvgQuota      float64 `json:"avg_quota"`
	PrimaryIPS    float64 `json:"primary_instructions_per_s"`
	OverBoundFrac float64 `json:"samples_over_bound_fraction"`
}

// Lag protects a guest (busy: a CPU-bound loop in it) and samples the backup's lag.
func Lag(ctx context.Context, s *Session, env Env, d time.Duration, busy bool) (LagResult, error) {
	res := LagResult{Env: env, Busy: busy, DurationS: d.Seconds()}
	vm := "benchlag"
	extra := ""
	if busy {
		extra = "ft.busy=1"
	}
	boot, err := s.StartGuest(ctx, vm, extra, true)
	if err != nil {
		return res, err
	}
	res.BootS = boot.Seconds()
	st, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		return res, err
	}
	res.BootLogBytes = st.LogWritten
	res.BootMbitS = float64(st.LogWritten) * 8 / 1e6 / boot.Seconds()
	res.LagBoundMS = st.LagBoundMS
	res.IcountShift = 4
	s.logf("guest booted in %.1f s (%d log bytes); sampling lag for %s", boot.Seconds(), st.LogWritten, d)
	var lags, lagBytes, quotas, work []float64
	first := st
	t0 := time.Now()
	over := 0
	for time.Since(t0) < d {
		time.Sleep(50 * time.Millisecond)
		st, err = lab.Status(ctx, lab.HostA, vm)
		if err != nil {
			return res, err
		}
		if st.State != "protected" {
			return res, fmt.Errorf("vm left protection: %s %s", st.State, st.Detail)
		}
		lags = append(lags, st.LagMS)
		lagBytes = append(lagBytes, float64(st.LagBytes))
		work = append(work, st.WorkLagMS)
		quotas = append(quotas, st.ThrottleQuota)
		if st.LagMS > float64(st.LagBoundMS) {
			over++
		}
	}
	el := time.Since(t0).Seconds()
	res.LagMS, res.LagBytes, res.WorkLagMS = NewDist(lags), NewDist(lagBytes), NewDist(work)
	res.LogMbitS = float64(st.LogWritten-first.LogWritten) * 8 / 1e6 / el
	res.ThrottledFrac = (st.ThrottledSec - first.ThrottledSec) / el
	res.AvgQuota = NewDist(quotas).Avg
	res.PrimaryIPS = float64(st.Icount-first.Icount) / el
	res.OverBoundFrac = float64(over) / float64(len(lags))
	if err := s.StopGuest(ctx, vm); err != nil {
		fmt.Fprintln(os.Stderr, "stop:", err)
	}
	return res, nil
}
