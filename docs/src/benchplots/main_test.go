package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPlotsUpToDate: the committed SVGs are what the committed results give (run
// bash test/docs.sh after changing either).
func TestPlotsUpToDate(t *testing.T) {
	for _, p := range plots {
		got, err := p.render("../../bench-results")
		if err != nil {
			t.Fatalf("%s: %v", p.file, err)
		}
		want, err := os.ReadFile(filepath.Join("../..", p.file))
		if err != nil {
			t.Fatalf("%s: %v (run bash test/docs.sh)", p.file, err)
		}
		if got != string(want) {
			t.Errorf("docs/%s is stale: run bash test/docs.sh", p.file)
		}
	}
	for _, p := range linePlots {
		got, err := p.render("../../bench-results")
		if err != nil {
			t.Fatalf("%s: %v", p.file, err)
		}
		want, err := os.ReadFile(filepath.Join("../..", p.file))
		if err != nil {
			t.Fatalf("%s: %v (run bash test/docs.sh)", p.file, err)
		}
		if got != string(want) {
			t.Errorf("docs/%s is stale: run bash test/docs.sh", p.file)
		}
	}
}

// TestLinePlot: a time series is drawn from every sample, a sample without the
// plotted field is an error naming it.
func TestLinePlot(t *testing.T) {
	dir := t.TempDir()
	p := linePlot{file: "x.svg", title: "t", unit: "MiB", source: "soak.json", samples: "samples", x: "t_s", scale: 1 << 20,
		lines: []line{{"a", "rss_a"}, {"files / 100", "files"}}, refLine: &ref{label: "limit", field: "limit"}}
	write := func(s string) {
		if err := os.WriteFile(filepath.Join(dir, "soak.json"), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"env":{"date":"2026-11-30T07:00:00Z"},"limit":104857600,"samples":[{"t_s":10,"rss_a":20971520,"files":1048576000},{"t_s":20,"rss_a":31457280}]}`)
	if _, err := p.render(dir); err == nil || !strings.Contains(err.Error(), "files") || !strings.Contains(err.Error(), "samples[1]") {
		t.Fatalf("err = %v, want it to name samples[1] and files", err)
	}
	write(`{"env":{"date":"2026-11-30T07:00:00Z"},"limit":104857600,"samples":[{"t_s":10,"rss_a":20971520,"files":1048576000},{"t_s":20,"rss_a":31457280,"files":2097152000}]}`)
	svg, err := p.render(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Values in MiB (the files line divided by 100 more); the limit line labelled.
	for _, want := range []string{"<polyline", "soak.json (2026-11-30)", "limit 100 MiB", "files / 100"} {
		if !strings.Contains(svg, want) {
			t.Errorf("svg lacks %q", want)
		}
	}
	if n := strings.Count(svg, "<polyline"); n != 2 {
		t.Errorf("%d lines drawn, want 2", n)
	}
}

// TestMissingFieldFails: a result without a plotted field is an error naming it,
// not an empty bar.
func TestMissingFieldFails(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "failover.json"), []byte(`{"env":{"date":"2026-01-01T00:00:00Z"},"detection_ms":{"p50":1}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	var fo plot
	for _, p := range plots {
		if p.file == "bench-failover.svg" {
			fo = p
		}
	}
	_, err := fo.render(dir)
	if err == nil || !strings.Contains(err.Error(), "failover.json") || !strings.Contains(err.Error(), "claim_ms") {
		t.Fatalf("err = %v, want it to name failover.json and claim_ms", err)
	}
	// With every field there, the values appear in the picture.
	if err := os.WriteFile(filepath.Join(dir, "failover.json"), []byte(`{"env":{"date":"2026-01-01T00:00:00Z"},
		"detection_ms":{"p50":41,"p99":52},"claim_ms":{"p50":3,"p99":9},"go_live_ms":{"p50":640,"p99":790},"client_outage_ms":{"p50":1020,"p99":1170}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	svg, err := fo.render(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{">640<", ">1170<", "failover.json (2026-01-01)", "<svg "} {
		if !strings.Contains(svg, want) {
			t.Errorf("svg lacks %q", want)
		}
	}
}

func TestNiceScale(t *testing.T) {
	for _, max := range []float64{0.07, 1, 7.5, 19.2, 130, 1170, 52000} {
		step, n := niceScale(max)
		if top := step * float64(n); top < max || n < 1 || n > 10 {
			t.Errorf("niceScale(%v) = %v x %d", max, step, n)
		}
	}
}
