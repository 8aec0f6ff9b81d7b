package bench

import (
	"bufio"
	"math"
	"os"
	"strings"
	"testing"
)

// line builds n samples every step seconds of a + b*t plus a fixed zigzag of
// amplitude noise (no randomness: the judgement must not depend on a draw).
func line(n int, step, a, b, noise float64) (ts, ys []float64) {
	for i := 0; i < n; i++ {
		t := float64(i) * step
		z := noise
		if i%2 == 1 {
			z = -noise
		}
		ts, ys = append(ts, t), append(ys, a+b*t+z)
	}
	return ts, ys
}

func TestJudgeFlat(t *testing.T) {
	const MiB = 1 << 20
	cases := []struct {
		name     string
		n        int
		a, b     float64 // bytes, bytes/s
		noise    float64
		wantFlat bool
		note     string
	}{
		{"constant", 60, 40 * MiB, 0, 0, true, ""},
		// GC-like swings of 3 MiB each way around a constant: no trend.
		{"noisy constant", 60, 40 * MiB, 0, 3 * MiB, true, ""},
		// 1 MiB a minute over 10 minutes: 10 MiB, above the 8 MiB floor.
		{"leak 1 MiB/min", 61, 40 * MiB, MiB / 60.0, 1 * MiB, false, ""},
		// Half of that stays under the floor.
		{"creep 0.5 MiB/min", 61, 40 * MiB, MiB / 120.0, 0, true, ""},
		// A QEMU of 300 MiB may move by 5 % (15 MiB) before it counts.
		{"big process 12 MiB", 61, 300 * MiB, 12 * MiB / 600.0, 0, true, ""},
		{"big process 20 MiB", 61, 300 * MiB, 20 * MiB / 600.0, 0, false, ""},
		// Falling is flat: it does not fill anything.
		{"falling", 60, 500 * MiB, -MiB, 0, true, ""},
		// An rr log no one frees: 10 MB/s.
		{"unbounded log", 60, 0, 10e6, 0, false, ""},
		{"too few", 3, 0, 0, 0, false, "too few samples"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ts, ys := line(c.n, 10, c.a, c.b, c.noise)
			f := JudgeFlat(c.name, ts, ys)
			if f.Flat != c.wantFlat {
				t.Fatalf("flat = %v, want %v: %+v", f.Flat, c.wantFlat, f)
			}
			if c.note != "" {
				if !strings.Contains(f.Note, c.note) {
					t.Fatalf("note %q, want %q", f.Note, c.note)
				}
				return
			}
			// The fit recovers the growth the series was built with, noise aside.
			if want := c.b * (f.ToS - f.FromS); math.Abs(f.Growth-want) > 0.1*FlatFloorBytes {
				t.Fatalf("fitted growth %.0f, want %.0f", f.Growth, want)
			}
			if math.Abs(f.SlopePerH-f.Growth/(f.ToS-f.FromS)*3600) > 1e-6*math.Abs(f.SlopePerH)+1e-9 {
				t.Fatalf("slope %.0f/h does not match growth %.0f over %.0f s", f.SlopePerH, f.Growth, f.ToS-f.FromS)
			}
			if want := math.Max(FlatFloorBytes, FlatRel*math.Abs(f.Mean)); f.Threshold != want {
				t.Fatalf("threshold %.0f, want %.0f", f.Threshold, want)
			}
		})
	}
	if f := JudgeFlat("mismatch", []float64{1, 2, 3, 4}, []float64{1, 2}); f.Flat || f.Note == "" {
		t.Fatalf("mismatched lengths judged: %+v", f)
	}
	if f := JudgeFlat("no time", []float64{5, 5, 5, 5}, []float64{1, 2, 3, 4}); f.Flat || f.Note == "" {
		t.Fatalf("samples at one instant judged: %+v", f)
	}
}

// soakRun is a healthy run's figures: 40 samples, 10 s apart.
func soakRun() SoakResult {
	r := SoakResult{RanS: 400, LagBoundMS: 100, LogDiskLimit: 256 << 20, MaxDiskA: 2 << 20, MaxDiskB: 3 << 20,
		LagMS: Dist{N: 800, P50: 20, P99: 90, Max: 140}, Requests: 5000, BulkBytes: 4 << 30, Puts: 512}
	for i := 1; i <= 40; i++ {
		r.Samples = append(r.Samples, SoakSample{T: float64(i * 10), DiskA: 64 << 10, DiskB: 128 << 10,
			RSSAgentA: 40 << 20, RSSAgentB: 38 << 20, RSSQEMUA: 300 << 20, RSSQEMUB: 310 << 20})
	}
	return r
}

func TestSoakJudge(t *testing.T) {
	r := soakRun()
	r.Judge()
	if !r.Pass || len(r.Failed()) != 0 {
		t.Fatalf("a healthy run failed: %v", r.Failed())
	}
	if len(r.Flatness) != 6 {
		t.Fatalf("%d series judged, want 6", len(r.Flatness))
	}
	// Only the second half is judged: a first half of warm-up growth does not count.
	if f := r.Flatness[0]; f.FromS != 200 || f.ToS != 400 || f.N != 21 {
		t.Fatalf("judged window %.0f-%.0f s (%d samples), want 200-400 s (21)", f.FromS, f.ToS, f.N)
	}
	for _, c := range []struct {
		target string
		spoil  func(*SoakResult)
	}{
		{"RSS flat", func(r *SoakResult) { // the backup's agent leaks 4 MiB a minute
			for i := range r.Samples {
				r.Samples[i].RSSAgentB += int64(r.Samples[i].T) * (4 << 20) / 60
			}
		}},
		{"log disk flat after warm-up", func(r *SoakResult) { // the primary stops freeing half way
			for i := range r.Samples {
				if r.Samples[i].T > 200 {
					r.Samples[i].DiskA += int64(r.Samples[i].T-200) * 1e6
				}
			}
		}},
		{"log disk under the limit", func(r *SoakResult) { r.MaxDiskB = r.LogDiskLimit + 1 }},
		{"lag p99 within the bound", func(r *SoakResult) { r.LagMS.P99 = float64(r.LagBoundMS+SoakControllerStepMS) + 1 }},
		{"0 requests lost", func(r *SoakResult) { r.RequestsLost = 1 }},
		{"0 requests lost", func(r *SoakResult) { r.Inconsistent = 1 }},
		{"0 requests lost", func(r *SoakResult) { r.Requests = 0 }},
		{"bulk stream intact", func(r *SoakResult) { r.BulkError = "put: the guest answered \"got 1 0\"" }},
		{"ran to the end", func(r *SoakResult) { r.Error = "at 30 s: a copy left its state" }},
	} {
		r := soakRun()
		c.spoil(&r)
		r.Judge()
		if r.Pass {
			t.Fatalf("%s spoiled, the run still passed", c.target)
		}
		failed := r.Failed()
		if len(failed) != 1 || !strings.HasPrefix(failed[0], c.target+": ") {
			t.Fatalf("%s spoiled: failed %q", c.target, failed)
		}
	}
	// A warm-up that grows in the first half only (a retention lapsing, the
	// guest's memory filling) is not held against the run.
	r = soakRun()
	for i := range r.Samples {
		if r.Samples[i].T < 200 {
			r.Samples[i].DiskB = int64(r.Samples[i].T) * 1e6
			r.Samples[i].RSSQEMUA = (200 << 20) + int64(r.Samples[i].T)*(1<<20)/2
		}
	}
	r.Judge()
	if !r.Pass {
		t.Fatalf("warm-up growth held against the run: %v", r.Failed())
	}
	// A run with too few samples judges nothing flat.
	r = soakRun()
	r.Samples = r.Samples[:4]
	r.Judge()
	if r.Pass {
		t.Fatal("a run of 4 samples passed")
	}
}

func TestSoakTable(t *testing.T) {
	h := SoakHeader()
	s := SoakSample{T: 3590, DiskA: 1 << 30, DiskAMax: 1 << 30, DiskB: 123 << 10, DiskBMax: 999 << 10, WrittenA: 12 << 30,
		RSSAgentA: 41 << 20, RSSAgentB: 39 << 20, RSSQEMUA: 301 << 20, RSSQEMUB: 299 << 20,
		LagP99MS: 123.4, LagMaxMS: 456.7, Requests: 1234567, BulkBytes: 20 << 30}
	row := s.Row()
	hf, rf := strings.Fields(h), strings.Fields(row)
	if len(hf) != len(rf) {
		t.Fatalf("header has %d columns, the row %d:\n%s\n%s", len(hf), len(rf), h, row)
	}
	// Each column ends where its header ends, so the table reads straight down.
	if len(h) != len(row) {
		t.Fatalf("header %d characters, row %d:\n%s\n%s", len(h), len(row), h, row)
	}
	want := map[string]string{"t_s": "3590", "diskA_KiB": "1048576", "diskB_KiB": "123", "maxB_KiB": "999",
		"filesA_MiB": "12288.0", "agentA": "41.0", "qemuB": "299.0", "lag_p99": "123.4", "lag_max": "456.7",
		"requests": "1234567", "bulk_MiB": "20480.0"}
	for i, name := range hf {
		if w, ok := want[name]; ok && rf[i] != w {
			t.Errorf("column %s = %s, want %s", name, rf[i], w)
		}
	}
}

func TestParseVmRSS(t *testing.T) {
	status := "Name:\tftvmd\nVmPeak:\t  900000 kB\nVmRSS:\t   41234 kB\nThreads:\t12\n"
	n, err := parseVmRSS(bufio.NewScanner(strings.NewReader(status)))
	if err != nil || n != 41234<<10 {
		t.Fatalf("got %d, %v", n, err)
	}
	for _, bad := range []string{"Name:\tkthreadd\nThreads:\t1\n", "VmRSS:\t12 MB\n", "VmRSS:\tx kB\n"} {
		if _, err := parseVmRSS(bufio.NewScanner(strings.NewReader(bad))); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
	self, err := ReadRSS(os.Getpid())
	if err != nil || self <= 0 {
		t.Fatalf("own RSS: %d, %v", self, err)
	}
	if _, err := ReadRSS(0); err == nil {
		t.Fatal("pid 0 read")
	}
	if la := strings.Fields(LoadAvg()); len(la) != 3 {
		t.Fatalf("load averages %q", la)
	}
}
