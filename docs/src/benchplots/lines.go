package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"strings"
)

// linePlot is a time series: values of one result's samples (an array of
// objects, e.g. bench soak's "samples") against one of their fields.
type linePlot struct {
	file, title, unit string
	source            string  // results file
	samples           string  // the array field
	x                 string  // the time field of a sample, seconds
	scale             float64 // values are divided by it (e.g. 1<<20 for MiB)
	lines             []line
	refLine           *ref // a horizontal line from the file's top level (scaled too), or nil
	note              string
}

type line struct {
	label, field string
}

var linePlots = []linePlot{
	{
		file: "bench-soak-disk.svg", title: "Soak: logs on disk while the log files grow", unit: "MiB",
		source: "soak-1h-2026-11-30-s9.json", samples: "samples", x: "t_s", scale: 1 << 20,
		lines: []line{{"host A (primary), on disk", "log_disk_a_max"}, {"host B (backup), on disk", "log_disk_b_max"}, {"host A, log files' size / 100", "log_files_a"}},
		note:  "ftvmd bench soak: most on disk at any poll of each 10 s; the files' size divided by 100",
	},
	{
		file: "bench-soak-rss.svg", title: "Soak: resident memory of the agents and QEMUs", unit: "MiB",
		source: "soak-1h-2026-11-30-s9.json", samples: "samples", x: "t_s", scale: 1 << 20,
		lines: []line{{"agent A", "rss_agent_a"}, {"agent B", "rss_agent_b"}, {"QEMU A (recording)", "rss_qemu_a"}, {"QEMU B (replaying)", "rss_qemu_b"}},
		note:  "ftvmd bench soak: VmRSS every 10 s",
	},
	{
		file: "bench-soak-lag.svg", title: "Soak: backup lag, p99 of each 10 s", unit: "ms",
		source: "soak-1h-2026-11-30-s9.json", samples: "samples", x: "t_s", scale: 1,
		lines:   []line{{"lag p99", "lag_p99_ms"}, {"lag max", "lag_max_ms"}},
		refLine: &ref{label: "lag bound", field: "lag_bound_ms"},
		note:    "ftvmd bench soak: the primary's lag polled every 0.5 s",
	},
}

// divisors: a line whose label ends in "/ N" is divided by N more, to share an
// axis with lines 100 times smaller.
func divisor(label string) float64 {
	i := strings.LastIndex(label, "/ ")
	if i < 0 {
		return 1
	}
	var d float64
	if _, err := fmt.Sscanf(label[i+2:], "%g", &d); err != nil || d <= 0 {
		return 1
	}
	return d
}

func (p linePlot) render(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, p.source))
	if err != nil {
		return "", err
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		return "", fmt.Errorf("%s: %w", p.source, err)
	}
	arr, ok := doc[p.samples].([]any)
	if !ok || len(arr) < 2 {
		return "", fmt.Errorf("%s: %q is not an array of at least 2 samples", p.source, p.samples)
	}
	xs := make([]float64, len(arr))
	ys := make([][]float64, len(p.lines))
	maxX, maxY := 0.0, 0.0
	for i, a := range arr {
		m, ok := a.(map[string]any)
		if !ok {
			return "", fmt.Errorf("%s: %s[%d] is not an object", p.source, p.samples, i)
		}
		if xs[i], err = value(m, p.x); err != nil {
			return "", fmt.Errorf("%s: %s[%d]: %w", p.source, p.samples, i, err)
		}
		maxX = math.Max(maxX, xs[i])
		for j, l := range p.lines {
			v, err := value(m, l.field)
			if err != nil {
				return "", fmt.Errorf("%s: %s[%d]: %w", p.source, p.samples, i, err)
			}
			v = v / p.scale / divisor(l.label)
			if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
				return "", fmt.Errorf("%s: %s[%d].%s = %v", p.source, p.samples, i, l.field, v)
			}
			ys[j] = append(ys[j], v)
			maxY = math.Max(maxY, v)
		}
	}
	var refV float64
	if p.refLine != nil {
		v, err := value(doc, p.refLine.field)
		if err != nil {
			return "", fmt.Errorf("%s: %w", p.source, err)
		}
		refV = v / p.scale
		maxY = math.Max(maxY, refV)
	}
	if maxY == 0 || maxX == 0 {
		return "", errors.New("every value is 0")
	}
	const (
		width, height          = 720, 400
		left, right, top, foot = 70, 20, 50, 95
	)
	plotW, plotH := float64(width-left-right), float64(height-top-foot)
	yStep, yTicks := niceScale(maxY)
	xStep, xTicks := niceScale(maxX)
	yMax, xMax := yStep*float64(yTicks), xStep*float64(xTicks)
	px := func(v float64) float64 { return float64(left) + plotW*v/xMax }
	py := func(v float64) float64 { return float64(top) + plotH*(1-v/yMax) }

	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&sb, `<rect width="%d" height="%d" fill="#ffffff"/>`+"\n", width, height)
	fmt.Fprintf(&sb, `<text x="%d" y="24" font-size="16" text-anchor="middle">%s</text>`+"\n", width/2, html.EscapeString(p.title))
	for i := 0; i <= yTicks; i++ {
		v := yStep * float64(i)
		fmt.Fprintf(&sb, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#dddddd"/>`+"\n", left, width-right, py(v), py(v))
		fmt.Fprintf(&sb, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, py(v)+4, tick(v, yStep))
	}
	for i := 0; i <= xTicks; i++ {
		v := xStep * float64(i)
		fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", px(v), py(0)+16, tick(v, xStep))
	}
	fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f" text-anchor="middle">seconds of traffic</text>`+"\n", float64(left)+plotW/2, py(0)+32)
	fmt.Fprintf(&sb, `<text x="16" y="%.1f" transform="rotate(-90 16 %.1f)" text-anchor="middle">%s</text>`+"\n", float64(top)+plotH/2, float64(top)+plotH/2, html.EscapeString(p.unit))
	fmt.Fprintf(&sb, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#333333"/>`+"\n", left, width-right, py(0), py(0))
	colours := []string{"#2b6cb0", "#2f855a", "#c05621", "#805ad5"}
	for j, l := range p.lines {
		var pts []string
		for i := range xs {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", px(xs[i]), py(ys[j][i])))
		}
		fmt.Fprintf(&sb, `<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"><title>%s</title></polyline>`+"\n",
			colours[j%len(colours)], strings.Join(pts, " "), html.EscapeString(l.label))
	}
	if p.refLine != nil {
		fmt.Fprintf(&sb, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#c53030" stroke-dasharray="6 4"/>`+"\n", left, width-right, py(refV), py(refV))
		fmt.Fprintf(&sb, `<text x="%d" y="%.1f" fill="#c53030">%s %s %s</text>`+"\n", left+4, py(refV)-4, html.EscapeString(p.refLine.label), num(refV), html.EscapeString(p.unit))
	}
	lx, ly := float64(left), float64(height-foot+50)
	for j, l := range p.lines {
		fmt.Fprintf(&sb, `<rect x="%.1f" y="%.1f" width="12" height="3" fill="%s"/>`+"\n", lx, ly-5, colours[j%len(colours)])
		fmt.Fprintf(&sb, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+16, ly, html.EscapeString(l.label))
		lx += 16 + 6.5*float64(len(l.label)) + 14
	}
	env, _ := doc["env"].(map[string]any)
	date, _ := env["date"].(string)
	if len(date) >= 10 {
		date = date[:10]
	}
	fmt.Fprintf(&sb, `<text x="%d" y="%d" font-size="10" fill="#555555">%s</text>`+"\n", left, height-26, html.EscapeString(p.note))
	fmt.Fprintf(&sb, `<text x="%d" y="%d" font-size="10" fill="#555555">%s</text>`+"\n", left, height-12, html.EscapeString(fmt.Sprintf("data: %s (%s)", p.source, date)))
	sb.WriteString("</svg>\n")
	return sb.String(), nil
}
