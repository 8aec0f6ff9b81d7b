package metrics

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

// dashboardPath is the Grafana dashboard shipped in docs/.
const dashboardPath = "../docs/grafana/ftvmd-dashboard.json"

// TestDashboard: the Grafana dashboard is valid JSON, every query names only
// metrics this exporter serves, and every query parses as PromQL (promtool).
func TestDashboard(t *testing.T) {
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Title  string `json:"title"`
		Panels []struct {
			Type    string `json:"type"`
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Annotations struct {
			List []struct {
				Expr string `json:"expr"`
			} `json:"list"`
		} `json:"annotations"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var exprs []string
	titles := map[string]bool{}
	for _, p := range d.Panels {
		titles[p.Title] = true
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, a := range d.Annotations.List {
		exprs = append(exprs, a.Expr)
	}
	for _, want := range []string{"Backup lag (age)", "Held guest frames", "Throttle", "Failovers (last 24 h)", "Peers up"} {
		if !titles[want] {
			t.Errorf("no panel %q", want)
		}
	}
	served := servedNames()
	name := regexp.MustCompile(`\bftvmd_[a-z_]+`)
	for _, e := range exprs {
		for _, n := range name.FindAllString(e, -1) {
			base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(n, "_bucket"), "_count"), "_sum")
			if !served[n] && !served[base] {
				t.Errorf("query %q uses %s, which the exporter does not serve", e, n)
			}
		}
	}
	checkPromQL(t, exprs)
}

// servedNames are the metric names the collector describes.
func servedNames() map[string]bool {
	ch := make(chan *prometheus.Desc, 200)
	NewCollector(nil).Describe(ch)
	close(ch)
	re := regexp.MustCompile(`fqName: "([^"]+)"`)
	out := map[string]bool{}
	for d := range ch {
		if m := re.FindStringSubmatch(d.String()); m != nil {
			out[m[1]] = true
		}
	}
	return out
}

// checkPromQL has promtool parse each query, as recording rules with Grafana's
// variables filled in.
func checkPromQL(t *testing.T, exprs []string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("FTVMD_REQUIRE_PROMETHEUS") == "1" {
			t.Fatalf("promtool not found and FTVMD_REQUIRE_PROMETHEUS=1: %v", err)
		}
		t.Log("promtool not installed: the dashboard's queries are not parsed")
		return
	}
	fill := strings.NewReplacer("$__rate_interval", "1m", "$instance", ".*", "$vm", ".*")
	var rules strings.Builder
	rules.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	for i, e := range exprs {
		q, _ := json.Marshal(fill.Replace(e)) // a JSON string is a YAML string
		fmt.Fprintf(&rules, "      - record: dashboard:q%d\n        expr: %s\n", i, q)
	}
	path := filepath.Join(t.TempDir(), "rules.yml")
	if err := os.WriteFile(path, []byte(rules.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
}
