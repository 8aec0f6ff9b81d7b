package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/journal"
	"github.com/ftvmd/ftvmd/lab"
)

// metricsPort is where the lab's agents serve their metrics in this test.
const metricsPort = 9464

// TestMetricsFailover: a real Prometheus (Debian's package) scrapes both agents
// every second while a protected guest's primary host is killed. The scraped series
// must show the pair protected (the backup replaying, the primary's lag histograms
// filling, the peer up), then the failover on the survivor: its failover counter
// going from 0 to 1, its copy turned primary and running alone, its peer down, the
// dead agent's target down. The survivor's journal (`ftvmd events`) and `ftvmd
// status --json` must say the same.
func TestMetricsFailover(t *testing.T) {
	if os.Getenv("FTVMD_E2E") != "1" {
		t.Skip("end-to-end test: set FTVMD_E2E=1 (test/run-tests.sh does)")
	}
	promBin, err := exec.LookPath("prometheus")
	if err != nil {
		t.Fatalf("prometheus not installed (test/setup.sh installs Debian's package): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	s := drillLab(ctx, t, "--metrics-listen", fmt.Sprintf(":%d", metricsPort))
	prom := startPrometheus(t, promBin)

	const vm = "met1"
	rep, err := bench.RunDrillOpts(ctx, s, bench.NewEnv("e2e"), bench.DrillOpts{VM: vm, Kind: bench.KillPrimary}, rand.New(rand.NewSource(time.Now().UnixNano())))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("drill: owner %s (%s), claim %.0f ms, go-live %.0f ms, outage %.0f ms", rep.Owner, rep.OwnerState, rep.ClaimMS, rep.GoLiveMS, rep.OutageMS)
	if rep.Owner != "b" || rep.OwnerState != "unprotected" {
		t.Fatalf("after the drill the VM runs on %s, %s", rep.Owner, rep.OwnerState)
	}

	a, b := `lab_host="a",vm="`+vm+`"`, `lab_host="b",vm="`+vm+`"`
	const window = "[5m]"
	checks := []promCheck{
		// Before the fault.
		{"the backup was replaying", `max_over_time(ftvmd_vm_state{` + b + `,role="backup",state="replaying"}` + window + `)`, eq(1)},
		{"the primary was protected", `max_over_time(ftvmd_vm_state{` + a + `,role="primary",state="protected"}` + window + `)`, eq(1)},
		{"age lag samples were observed", `max_over_time(ftvmd_backup_lag_seconds_count{` + a + `}` + window + `)`, gt(0)},
		{"work lag samples were observed", `max_over_time(ftvmd_backup_work_lag_seconds_count{` + a + `}` + window + `)`, gt(0)},
		{"the lag's p99 is computable", `histogram_quantile(0.99, max_over_time(ftvmd_backup_lag_seconds_bucket{` + a + `}` + window + `))`, gt(0)},
		{"the latest lag was exported", `count_over_time(ftvmd_backup_lag_latest_seconds{` + a + `}` + window + `)`, gt(0)},
		{"guest frames went through the output rule", `max_over_time(ftvmd_output_delay_seconds_count{` + a + `}` + window + `)`, gt(0)},
		{"the log was streamed and acked", `max_over_time(ftvmd_log_acked_bytes_total{` + a + `}` + window + `)`, gt(0)},
		{"a saw its peer b up", `max_over_time(ftvmd_peer_up{lab_host="a",peer="b"}` + window + `)`, eq(1)},
		{"b had counted no failover", `min_over_time(ftvmd_failovers_total{` + b + `}` + window + `)`, eq(0)},
		// After it.
		{"b counted the failover", `ftvmd_failovers_total{` + b + `}`, eq(1)},
		{"b's copy is the primary, alone", `ftvmd_vm_state{` + b + `,role="primary",state="unprotected"}`, eq(1)},
		{"b won an epoch claim", `ftvmd_epoch_claims_total{` + b + `,result="won"}`, gt(0)},
		{"b's epoch moved on", `ftvmd_vm_epoch{` + b + `,role="primary"} - ignoring(role) max_over_time(ftvmd_vm_epoch{` + b + `,role="backup"}` + window + `)`, eq(1)},
		{"b measured its go-live", `ftvmd_last_golive_seconds{` + b + `}`, gt(0)},
		{"b sees its peer a down", `ftvmd_peer_up{lab_host="b",peer="a"}`, eq(0)},
		{"b saw its peer a up before", `max_over_time(ftvmd_peer_up{lab_host="b",peer="a"}` + window + `)`, eq(1)},
		{"a's agent is gone", `up{lab_host="a"}`, eq(0)},
		{"b's agent is scraped", `up{lab_host="b"}`, eq(1)},
	}
	// The drill waits a few seconds after the go-live; expectScraped allows a few
	// scrapes more.
	expectScraped(ctx, t, prom, checks)

	// The survivor's journal tells the failover in order.
	out, err := s.Lab.Run(ctx, "b", "events", vm, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var evs []journal.Event
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var e journal.Event
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("events line %q: %v", line, err)
		}
		evs = append(evs, e)
	}
	want := []struct{ kind, result string }{
		{journal.KindPeerUp, ""}, {journal.KindPeerDown, ""}, {journal.KindClaim, journal.ClaimWon},
		{journal.KindFailover, ""}, {journal.KindGoLive, ""},
	}
	i := 0
	for _, e := range evs {
		if i < len(want) && e.Kind == want[i].kind && (want[i].result == "" || e.Result == want[i].result) {
			i++
		}
	}
	if i < len(want) {
		t.Errorf("b's events lack %s (in order: peer-up, peer-down, claim won, failover, go-live):\n%s", want[i].kind, out)
	}
	if text, err := s.Lab.Run(ctx, "b", "events", vm); err == nil {
		t.Logf("ftvmd events %s on b:\n%s", vm, text)
	}

	// And `ftvmd status --json` on the survivor parses to the same.
	out, err = s.Lab.Run(ctx, "b", "status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st control.Response
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if len(st.VMs) != 1 || st.VMs[0].Name != vm || st.VMs[0].Role != "primary" || st.VMs[0].State != "unprotected" {
		t.Errorf("status --json VMs: %+v", st.VMs)
	}
	if len(st.Counters) != 1 || st.Counters[0].Failovers != 1 || st.Counters[0].LastGoLiveMS <= 0 {
		t.Errorf("status --json counters: %+v", st.Counters)
	}
	if len(st.Peers) != 1 || st.Peers[0].Host != "a" || st.Peers[0].Up {
		t.Errorf("status --json peers: %+v", st.Peers)
	}
}

// promFailoverChecks are the series that show a kill-primary failover of vm from a
// to b, as scraped: b counted it, runs the VM alone under a later epoch, a is gone.
func promFailoverChecks(vm string) []promCheck {
	b := `lab_host="b",vm="` + vm + `"`
	return []promCheck{
		{"b counted the failover", `ftvmd_failovers_total{` + b + `}`, eq(1)},
		{"b's copy is the primary, alone", `ftvmd_vm_state{` + b + `,role="primary",state="unprotected"}`, eq(1)},
		{"b's backup was replaying before", `max_over_time(ftvmd_vm_state{` + b + `,role="backup",state="replaying"}[5m])`, eq(1)},
		{"b won an epoch claim", `ftvmd_epoch_claims_total{` + b + `,result="won"}`, gt(0)},
		{"b sees its peer a down", `ftvmd_peer_up{lab_host="b",peer="a"}`, eq(0)},
		{"a's agent is gone", `up{lab_host="a"}`, eq(0)},
	}
}

type promCheck struct {
	what  string
	query string
	ok    func(float64) bool
}

// expectScraped waits (up to 30 s: a few scrapes) for each check to hold in
// Prometheus.
func expectScraped(ctx context.Context, t *testing.T, prom *promServer, checks []promCheck) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, c := range checks {
		for {
			v, err := prom.query(ctx, c.query)
			if err == nil && c.ok(v) {
				t.Logf("ok: %s: %s = %g", c.what, c.query, v)
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("%s: %s = %g, %v", c.what, c.query, v, err)
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
	}
}

func eq(w float64) func(float64) bool { return func(v float64) bool { return v == w } }
func gt(w float64) func(float64) bool { return func(v float64) bool { return v > w } }

// promServer is a Prometheus server running in the lab's client namespace, which
// reaches both agents; the test talks to it through that namespace.
type promServer struct {
	addr   string
	client *http.Client
}

// startPrometheus runs Debian's Prometheus in the client namespace, scraping both
// agents' metrics every second, with a config and data directory of its own, and
// waits until it is ready. It is stopped when the test ends, before the lab goes.
func startPrometheus(t *testing.T, bin string) *promServer {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 900ms
  evaluation_interval: 1s
scrape_configs:
  - job_name: ftvmd
    static_configs:
      - targets: ['%s']
        labels: {lab_host: a}
      - targets: ['%s']
        labels: {lab_host: b}
`, net.JoinHostPort(lab.IPA, strconv.Itoa(metricsPort)), net.JoinHostPort(lab.IPB, strconv.Itoa(metricsPort)))
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "prometheus.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	const addr = "127.0.0.1:9090" // in the client namespace
	cmd := exec.Command("ip", "netns", "exec", lab.NSC, bin,
		"--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+addr, "--log.level=warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start prometheus: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logf.Close() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("prometheus log:\n%s", b)
			}
		}
	})
	p := &promServer{addr: addr, client: &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, a string) (net.Conn, error) { return lab.DialFromClient(ctx, a) }},
	}}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := p.client.Get("http://" + addr + "/-/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case err := <-exited:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("prometheus exited: %v\n%s", err, b)
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 30 s: %v", err)
		}
	}
}

// query runs an instant query that must return exactly one sample.
func (p *promServer) query(ctx context.Context, q string) (float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr+"/api/v1/query?query="+url.QueryEscape(q), nil)
	if err != nil {
		return 0, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	var r struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return 0, fmt.Errorf("prometheus answer: %w", err)
	}
	if r.Status != "success" {
		return 0, fmt.Errorf("prometheus: %s", r.Error)
	}
	if n := len(r.Data.Result); n != 1 {
		return 0, fmt.Errorf("%d series, want 1", n)
	}
	sv, ok := r.Data.Result[0].Value[1].(string)
	if !ok {
		return 0, fmt.Errorf("sample value %v", r.Data.Result[0].Value[1])
	}
	return strconv.ParseFloat(sv, 64)
}
