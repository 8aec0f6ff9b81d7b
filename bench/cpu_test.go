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
