package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/ftvmd/ftvmd/lab"
)

// DiskSide is one mode's figures in `ftvmd bench disk`.
type DiskSide struct {
	Records    int     `json:"records"`
	FsyncMS    Dist    `json:"durable_write_ms"` // `rec` round trip: 512-byte write + flush, then the answer
	RecordsPS  float64 `json:"records_per_s"`
	WriteKBs   float64 `json:"write_KB_s"`
	LogMbitS   float64 `json:"log_mbit_s"`
	CopyMBs    float64 `json:"initial_copy_MB_s,omitempty"`
	CopyS      float64 `json:"initial_copy_s,omitempty"`
	ImageBytes int64   `json:"image_bytes,omitempty"`
}

// DiskResult is `ftvmd bench disk`'s summary: durable writes in the guest,
// unprotected vs protected in one run, and the initial copy of a full image.
type DiskResult struct {
	Env         Env      `json:"env"`
	ImageSize   string   `json:"image_size"`
	Unprotected DiskSide `json:"unprotected"`
	Protected   DiskSide `json:"protected"`
	Ratio       float64  `json:"records_per_s_ratio"`
}

// Disk runs the disk benchmark. The image is fully preallocated, so the initial copy
// moves its whole size.
func Disk(ctx context.Context, s *Session, env Env, size string, records int) (DiskResult, error) {
	res := DiskResult{Env: env, ImageSize: size}
	for _, protected := range []bool{false, true} {
		img, err := lab.CreateImage(lab.HostA, "benchdisk", "64M")
		if protected {
			// A full image for the copy rate: preallocation writes every byte.
			img, err = lab.CreateImage(lab.HostA, "benchdisk", size, "preallocation=full")
		}
		if err != nil {
			return res, err
		}
		vm := "benchdisk"
		if _, err := s.StartGuest(ctx, vm, "", protected, "--disk", img); err != nil {
			return res, err
		}
		side, err := diskSide(ctx, s, vm, records)
		if err != nil {
			return res, err
		}
		if protected {
			st, err := lab.Status(ctx, lab.HostA, vm)
			if err == nil && st.CopyRate > 0 {
				side.CopyMBs = st.CopyRate / 1e6
				side.ImageBytes = st.CopyTotal
				side.CopyS = float64(st.CopyTotal) / st.CopyRate
			}
			res.Protected = side
		} else {
			res.Unprotected = side
		}
		if err := s.StopGuest(ctx, vm); err != nil {
			return res, err
		}
	}
	res.Ratio = res.Protected.RecordsPS / res.Unprotected.RecordsPS
	return res, nil
}

func diskSide(ctx context.Context, s *Session, vm string, records int) (DiskSide, error) {
	side := DiskSide{Records: records}
	c, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		return side, err
	}
	defer c.Close()
	var lat []float64
	l0, t0 := bulkSnapshot(ctx, vm).logWritten, time.Now()
	for n := 0; n < records; n++ {
		start := time.Now()
		resp, err := c.Do(fmt.Sprintf("rec %d bench-record-%d", n, n), 30*time.Second)
		if err != nil || resp != fmt.Sprintf("rec ok %d", n) {
			return side, fmt.Errorf("rec %d: %q %v", n, resp, err)
		}
		lat = append(lat, ms(time.Since(start)))
	}
	d := time.Since(t0)
	side.FsyncMS = NewDist(lat)
	side.RecordsPS = float64(records) / d.Seconds()
	side.WriteKBs = side.RecordsPS * 512 / 1024
	side.LogMbitS = mbit(bulkSnapshot(ctx, vm).logWritten-l0, d)
	s.logf("records: %.0f/s, durable write p50 %.2f ms p99 %.2f ms", side.RecordsPS, side.FsyncMS.P50, side.FsyncMS.P99)
	return side, nil
}
