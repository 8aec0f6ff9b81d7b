package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/lab"
)

// CPUResult is `ftvmd bench cpu`'s summary: the same CPU-bound task in the guest,
// unprotected and protected on the same engine (icount + record), in one run.
type CPUResult struct {
	Env          Env       `json:"env"`
	MB           int       `json:"md5_mb"`
	Runs         int       `json:"runs"`
	Unprotected  []float64 `json:"unprotected_s"`
	Protected    []float64 `json:"protected_s"`
	Ratio        float64   `json:"speed_ratio_protected_vs_unprotected"` // >1 is faster
	ThrottledSec float64   `json:"throttled_s"`
}

// CPU times `md5 <mb>` in the guest, a few times each way.
func CPU(ctx context.Context, s *Session, env Env, mb, runs int) (CPUResult, error) {
	res := CPUResult{Env: env, MB: mb, Runs: runs}
	for _, protected := range []bool{false, true} {
		vm := "benchcpu"
		if _, err := s.StartGuest(ctx, vm, "", protected); err != nil {
			return res, err
		}
		c, err := lab.NewClient(ctx, 30*time.Second)
		if err != nil {
			return res, err
		}
		for i := 0; i < runs; i++ {
			t0 := time.Now()
			out, err := c.Do(fmt.Sprintf("md5 %d", mb), 10*time.Minute)
			if err != nil || !strings.HasPrefix(out, "md5 ") {
				c.Close()
				return res, fmt.Errorf("md5 in guest: %q %v", out, err)
			}
			d := time.Since(t0).Seconds()
			s.logf("protected=%v run %d: %.2f s", protected, i, d)
			if protected {
				res.Protected = append(res.Protected, d)
			} else {
				res.Unprotected = append(res.Unprotected, d)
			}
		}
		c.Close()
		if protected {
			if st, err := lab.Status(ctx, lab.HostA, vm); err == nil {
				res.ThrottledSec = st.ThrottledSec
			}
		}
		if err := s.StopGuest(ctx, vm); err != nil {
			return res, err
		}
	}
	res.Ratio = NewDist(res.Unprotected).P50 / NewDist(res.Protected).P50
	return res, nil
}
