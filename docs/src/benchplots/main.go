// Command benchplots draws the benchmark figures in docs/ as SVG from the raw
// results in docs/bench-results/ (the JSON `ftvmd bench` writes):
//
//	go run ./docs/src/benchplots -in docs/bench-results -out docs
//
// Bar charts (plots) compare summaries; line charts (linePlots, lines.go) follow a
// long run's samples over time.
//
// test/docs.sh runs it. Every value comes from a named field of a named file; a
// missing file or field is an error, so a changed result format cannot yield a
// silently empty plot. The output depends only on the input (no timestamps), so
// regenerating unchanged results changes no file.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"html"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

func main() {
	in := flag.String("in", "docs/bench-results", "directory of bench results")
	out := flag.String("out", "docs", "directory the SVG files are written to")
	flag.Parse()
	for _, p := range plots {
		svg, err := p.render(*in)
		if err != nil {
			fmt.Fprintf(os.Stderr, "benchplots: %s: %v\n", p.file, err)
			os.Exit(1)
		}
		if err := os.WriteFile(filepath.Join(*out, p.file), []byte(svg), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "benchplots:", err)
			os.Exit(1)
		}
		fmt.Println(filepath.Join(*out, p.file))
	}
	for _, p := range linePlots {
		svg, err := p.render(*in)
		if err != nil {
			fmt.Fprintf(os.Stderr, "benchplots: %s: %v\n", p.file, err)
			os.Exit(1)
		}
		if err := os.WriteFile(filepath.Join(*out, p.file), []byte(svg), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "benchplots:", err)
			os.Exit(1)
		}
		fmt.Println(filepath.Join(*out, p.file))
	}
}

// series is one bar colour: a label and, per group, the field it reads.
type series struct {
	label  string
	file   string   // in the results directory
	fields []string // one dotted path per group
}

// plot is a grouped bar chart.
type plot struct {
	file, title, unit string
	groups            []string
	series            []series
	refLine           *ref // a horizontal line (e.g. the lag bound), or nil
	note              string
}

type ref struct {
	label string
	file  string
	field string
}

var plots = []plot{
	{
		file: "bench-net-latency.svg", title: "Request round trip, unprotected vs protected", unit: "ms",
		groups: []string{"RTT p50", "RTT p99"},
		series: []series{
			{"relay, unprotected", "net-datapath-relay.json", []string{"unprotected.rtt_ms.p50", "unprotected.rtt_ms.p99"}},
			{"relay, protected", "net-datapath-relay.json", []string{"protected.rtt_ms.p50", "protected.rtt_ms.p99"}},
			{"tap, unprotected", "net-datapath-tap.json", []string{"unprotected.rtt_ms.p50", "unprotected.rtt_ms.p99"}},
			{"tap, protected", "net-datapath-tap.json", []string{"protected.rtt_ms.p50", "protected.rtt_ms.p99"}},
		},
		note: "ftvmd bench net on the lab, both data paths (docs/benchmarks.md)",
	},
	{
		file: "bench-net-throughput.svg", title: "Bulk TCP transfer, unprotected vs protected", unit: "MB/s",
		groups: []string{"client -> guest", "guest -> client"},
		series: []series{
			{"relay, unprotected", "net-datapath-relay.json", []string{"unprotected.client_to_guest_MB_s", "unprotected.guest_to_client_MB_s"}},
			{"relay, protected", "net-datapath-relay.json", []string{"protected.client_to_guest_MB_s", "protected.guest_to_client_MB_s"}},
			{"tap, unprotected", "net-datapath-tap.json", []string{"unprotected.client_to_guest_MB_s", "unprotected.guest_to_client_MB_s"}},
			{"tap, protected", "net-datapath-tap.json", []string{"protected.client_to_guest_MB_s", "protected.guest_to_client_MB_s"}},
		},
		note: "ftvmd bench net --mb 100 on the lab (docs/benchmarks.md)",
	},
	{
		file: "bench-failover.svg", title: "Failover after the primary's host dies", unit: "ms",
		groups: []string{"detection", "claim", "go-live", "client outage"},
		series: []series{
			{"p50", "failover.json", []string{"detection_ms.p50", "claim_ms.p50", "go_live_ms.p50", "client_outage_ms.p50"}},
			{"p99", "failover.json", []string{"detection_ms.p99", "claim_ms.p99", "go_live_ms.p99", "client_outage_ms.p99"}},
		},
		note: "ftvmd bench failover (SIGKILL of host A's processes), 20 runs",
	},
	{
		file: "bench-lag.svg", title: "Backup lag behind the primary", unit: "ms",
		groups: []string{"lag p50", "lag p99", "lag max"},
		series: []series{
			{"idle guest", "lag-idle.json", []string{"lag_ms.p50", "lag_ms.p99", "lag_ms.max"}},
			{"busy guest", "lag-busy.json", []string{"lag_ms.p50", "lag_ms.p99", "lag_ms.max"}},
		},
		refLine: &ref{"lag bound", "lag-busy.json", "lag_bound_ms"},
		note:    "ftvmd bench lag; the throttle slows the primary when the lag passes the bound",
	},
	{
		file: "bench-overhead.svg", title: "Protected speed as a fraction of unprotected", unit: "protected / unprotected",
		groups: []string{"CPU (md5)", "disk records/s", "client -> guest", "guest -> client"},
		series: []series{
			{"ratio", "", []string{"cpu.json:speed_ratio_protected_vs_unprotected", "disk.json:records_per_s_ratio",
				"net-datapath-relay.json:client_to_guest_ratio", "net-datapath-relay.json:guest_to_client_ratio"}},
		},
		note: "ftvmd bench cpu, disk and net (relay data path)",
	},
}

// value reads a dotted path of numbers from a decoded JSON document.
func value(doc map[string]any, path string) (float64, error) {
	var cur any = doc
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return 0, fmt.Errorf("field %s: %q is not an object", path, k)
		}
		if cur, ok = m[k]; !ok {
			return 0, fmt.Errorf("field %s: no %q", path, k)
		}
	}
	f, ok := cur.(float64)
	if !ok {
		return 0, fmt.Errorf("field %s is not a number", path)
	}
	return f, nil
}

type loader struct {
	dir  string
	docs map[string]map[string]any
}

func (l *loader) get(file, field string) (float64, error) {
	if file == "" { // "file:field"
		var ok bool
		if file, field, ok = strings.Cut(field, ":"); !ok {
			return 0, fmt.Errorf("%q: want file:field", field)
		}
	}
	doc, ok := l.docs[file]
	if !ok {
		b, err := os.ReadFile(filepath.Join(l.dir, file))
		if err != nil {
			return 0, err
		}
		if err := json.Unmarshal(b, &doc); err != nil {
			return 0, fmt.Errorf("%s: %w", file, err)
		}
		l.docs[file] = doc
	}
	v, err := value(doc, field)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", file, err)
	}
	return v, nil
}

// source says which runs a plot shows: each file's command and date.
func (l *loader) source(files []string) string {
	var parts []string
	seen := map[string]bool{}
	for _, f := range files {
		if seen[f] {
			continue
		}
		seen[f] = true
		env, _ := l.docs[f]["env"].(map[string]any)
		date, _ := env["date"].(string)
		if len(date) >= 10 {
			date = date[:10]
		}
		parts = append(parts, fmt.Sprintf("%s (%s)", f, date))
	}
	return "data: " + strings.Join(parts, ", ")
}

var palette = []string{"#9ec5e8", "#2b6cb0", "#b7dfb0", "#2f855a", "#f6c48f", "#c05621"}

// render draws the plot.
func (p plot) render(dir string) (string, error) {
	l := &loader{dir: dir, docs: map[string]map[string]any{}}
	vals := make([][]float64, len(p.series))
	var files []string
	maxV := 0.0
	for i, s := range p.series {
		if len(s.fields) != len(p.groups) {
			return "", fmt.Errorf("series %q has %d fields for %d groups", s.label, len(s.fields), len(p.groups))
		}
		for _, f := range s.fields {
			v, err := l.get(s.file, f)
			if err != nil {
				return "", err
			}
			if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
				return "", fmt.Errorf("series %q: %s = %v", s.label, f, v)
			}
			vals[i] = append(vals[i], v)
			maxV = math.Max(maxV, v)
			file := s.file
			if file == "" {
				file, _, _ = strings.Cut(f, ":")
			}
			files = append(files, file)
		}
	}
	var refV float64
	if p.refLine != nil {
		v, err := l.get(p.refLine.file, p.refLine.field)
		if err != nil {
			return "", err
		}
		refV = v
		maxV = math.Max(maxV, v)
		files = append(files, p.refLine.file)
	}
	if maxV == 0 {
		return "", errors.New("every value is 0")
	}

	const (
		width, height          = 720, 400
		left, right, top, foot = 70, 20, 50, 95
	)
	plotW, plotH := float64(width-left-right), float64(height-top-foot)
	step, ticks := niceScale(maxV)
	yMax := step * float64(ticks)
	y := func(v float64) float64 { return float64(top) + plotH*(1-v/yMax) }

	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="Helvetica, Arial, sans-serif" font-size="12">`+"\n", width, height, width, height)
	fmt.Fprintf(&b, `<rect width="%d" height="%d" fill="#ffffff"/>`+"\n", width, height)
	fmt.Fprintf(&b, `<text x="%d" y="24" font-size="16" text-anchor="middle">%s</text>`+"\n", width/2, html.EscapeString(p.title))
	// Grid and y axis.
	for i := 0; i <= ticks; i++ {
		v := step * float64(i)
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#dddddd"/>`+"\n", left, width-right, y(v), y(v))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">%s</text>`+"\n", left-6, y(v)+4, tick(v, step))
	}
	fmt.Fprintf(&b, `<text x="16" y="%.1f" transform="rotate(-90 16 %.1f)" text-anchor="middle">%s</text>`+"\n", float64(top)+plotH/2, float64(top)+plotH/2, html.EscapeString(p.unit))
	// Bars.
	groupW := plotW / float64(len(p.groups))
	barW := groupW * 0.8 / float64(len(p.series))
	for g, name := range p.groups {
		x0 := float64(left) + groupW*float64(g) + groupW*0.1
		for s := range p.series {
			v := vals[s][g]
			x := x0 + barW*float64(s)
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"><title>%s %s: %s %s</title></rect>`+"\n",
				x, y(v), barW-2, y(0)-y(v), palette[s%len(palette)], html.EscapeString(p.series[s].label), html.EscapeString(name), num(v), html.EscapeString(p.unit))
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" font-size="10">%s</text>`+"\n", x+(barW-2)/2, y(v)-3, num(v))
		}
		fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", float64(left)+groupW*(float64(g)+0.5), y(0)+16, html.EscapeString(name))
	}
	fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#333333"/>`+"\n", left, width-right, y(0), y(0))
	if p.refLine != nil {
		fmt.Fprintf(&b, `<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#c53030" stroke-dasharray="6 4"/>`+"\n", left, width-right, y(refV), y(refV))
		fmt.Fprintf(&b, `<text x="%d" y="%.1f" fill="#c53030">%s %s %s</text>`+"\n", left+4, y(refV)-4, html.EscapeString(p.refLine.label), num(refV), html.EscapeString(p.unit))
	}
	// Legend, then the sources.
	lx := float64(left)
	ly := float64(height - foot + 38)
	if len(p.series) > 1 {
		for s, se := range p.series {
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="12" height="12" fill="%s"/>`+"\n", lx, ly-10, palette[s%len(palette)])
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f">%s</text>`+"\n", lx+16, ly, html.EscapeString(se.label))
			lx += 16 + 7*float64(len(se.label)) + 18
		}
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="10" fill="#555555">%s</text>`+"\n", left, height-26, html.EscapeString(p.note))
	fmt.Fprintf(&b, `<text x="%d" y="%d" font-size="10" fill="#555555">%s</text>`+"\n", left, height-12, html.EscapeString(l.source(files)))
	b.WriteString("</svg>\n")
	return b.String(), nil
}

// niceScale picks a tick step of 1, 2 or 5 times a power of ten giving 4-8 ticks
// up to at least max.
func niceScale(max float64) (step float64, ticks int) {
	raw := max / 5
	mag := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		step = m * mag
		if max/step <= 6 {
			break
		}
	}
	ticks = int(math.Ceil(max/step - 1e-9))
	if ticks < 1 {
		ticks = 1
	}
	return step, ticks
}

// tick prints an axis value with the decimals its step needs.
func tick(v, step float64) string {
	d := 0
	if step < 1 {
		d = int(math.Ceil(-math.Log10(step) - 1e-9))
	}
	return strconv.FormatFloat(v, 'f', d, 64)
}

// num prints a value with up to 3 significant digits.
func num(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case v >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case v >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	}
	return strconv.FormatFloat(v, 'g', 2, 64)
}
