package bench

import "testing"

func TestMD5Reps(t *testing.T) {
	for _, c := range []struct {
		once, min float64
		want      int
	}{
		{0.7, 30, 50}, // 30 MiB on the lab: 50 x 0.7 s = 35 s
		{3.5, 30, 10}, // 100 MiB: 35 s
		{3.0, 30, 12}, // 34.5 s needs 11.5: 12
		{45, 30, 1},   // one command already lasts long enough
		{0.7, 0, 1},   // no minimum: one command per run
		{0, 30, 1},    // a zero calibration cannot size anything
	} {
		got := md5Reps(c.once, c.min)
		if got != c.want {
			t.Errorf("md5Reps(%v, %v) = %d, want %d", c.once, c.min, got, c.want)
		}
		if c.once > 0 && c.min > 0 && float64(got)*c.once < c.min*md5Margin {
			t.Errorf("md5Reps(%v, %v) = %d runs only %.1f s", c.once, c.min, got, float64(got)*c.once)
		}
	}
}

// The replay's CPU per record CPU is core-seconds over core-seconds: the cores each
// QEMU used times the time its side's runs took, 0 when a side has no reading.
func TestReplayPerRecord(t *testing.T) {
	r := CPUResult{
		Unprotected:    []float64{35, 35},
		Protected:      []float64{40, 42},
		CPUUnprotected: CPUUse{PrimaryQEMU: 1.0},
		CPUProtected:   CPUUse{PrimaryQEMU: 0.9, BackupQEMU: 0.875},
	}
	// 0.875 * 82 = 71.75 core-s replaying, 1.0 * 70 = 70 recording.
	if got, want := replayPerRecord(r), 71.75/70; got < want-1e-9 || got > want+1e-9 {
		t.Fatalf("replayPerRecord = %v, want %v", got, want)
	}
	r.CPUProtected.BackupQEMU = 0
	if got := replayPerRecord(r); got != 0 {
		t.Fatalf("without the backup's reading: %v, want 0", got)
	}
}
