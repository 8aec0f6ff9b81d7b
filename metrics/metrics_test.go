package metrics

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/outputrule"
)

// fakeAgent is a Source whose state the test changes between scrapes.
type fakeAgent struct {
	mu   sync.Mutex
	resp control.Response
}

func (f *fakeAgent) Snapshot() control.Response {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.resp
}

func (f *fakeAgent) set(r control.Response) {
	f.mu.Lock()
	f.resp = r
	f.mu.Unlock()
}

// protectedPair is host a's view: web1's primary with its backup on b, and db1's
// backup (its primary on b) with a stalled replay.
func protectedPair() control.Response {
	var delay outputrule.DelayHist
	for _, d := range []time.Duration{10 * time.Microsecond, 30 * time.Microsecond, 30 * time.Microsecond, 2 * time.Second} {
		delay.Add(d)
	}
	return control.Response{OK: true, Host: "a",
		VMs: []control.VMStatus{
			{Name: "db1", Role: "backup", State: "replaying", Peer: "b", Engine: "ftvmd-7.2", DataPath: "relay",
				StartedAt: time.Unix(1_700_000_000, 0), Epoch: 7, LogWritten: 9000, LogAcked: 8000, LogReplayed: 7000, LogOnDisk: 9000,
				LogDiskBytes: 12288, LogDiskLimit: 1 << 30, LogDiskAlarm: "logs take 80%",
				Icount: 123456, ReplayStallReported: true, ReplayStalled: true, ReplayStalledSec: 4.5, ReplayStalls: 2,
				NICFrames: 900, NICChecked: 880, NICSkipped: 3, NICDropped: 1},
			{Name: "web1", Role: "primary", State: "protected", Peer: "10.0.0.2:7800", Engine: "ftvmd-7.2", DataPath: "relay",
				StartedAt: time.Unix(1_700_000_100, 0), Epoch: 3, LogWritten: 5000, LogSent: 4800, LogAcked: 4700, LogReplayed: 4000,
				LogOnDisk: 5000, Icount: 99, BackupIcount: 90, LagMS: 12.5, WorkLagMS: 3, LagBytes: 1000, LagBoundMS: 100,
				ThrottleQuota: 0.5, ThrottledSec: 1.25, PacingEnabled: true, PacingActive: true, PacedSec: 2, PacedFrames: 40,
				PaceDrops: 1, PaceRateBps: 1e6, PaceQueueBytes: 3000, PaceEngaged: 2,
				HeldFrames: 3, HeldBytes: 4500, OldestHeldMS: 7, Released: 4, Backpressure: 5, NICFrames: 950, NICDropped: 2,
				LagHist:         &control.Histogram{Bounds: []float64{0.001, 0.01, 0.1}, Counts: []uint64{5, 3, 2, 1}, Sum: 0.75},
				WorkLagHist:     &control.Histogram{Bounds: []float64{0.001, 0.01, 0.1}, Counts: []uint64{9, 0, 0, 0}, Sum: 0.002},
				AddedDelayHist:  delay.Counts(),
				AddedDelaySumMS: 2000.07,
			},
		},
		Peers: []control.PeerStatus{
			{Host: "b", Up: true, Channels: 2, RTTMS: 0.25, LastHeardMS: 12},
			{Host: "c", Up: false},
		},
		Counters: []control.VMCounters{
			{Name: "db1"},
			{Name: "web1", Failovers: 1, ClaimsWon: 2, ClaimsLost: 1, LastClaimMS: 35, LastGoLiveMS: 1500},
		},
	}
}

// scrape serves src through the real handler and returns the exposition text.
func scrape(t *testing.T, src Source, log *slog.Logger) string {
	t.Helper()
	reg, err := NewRegistry(src)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(Handler(reg, log))
	defer srv.Close()
	resp, err := http.Get(srv.URL + Path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s: %s", resp.Status, b)
	}
	return string(b)
}

// series maps each sample line's series ("name{labels}") to its value.
func series(t *testing.T, text string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("sample %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	return out
}

func TestCollectorReadsAgentState(t *testing.T) {
	src := &fakeAgent{resp: protectedPair()}
	text := scrape(t, src, slog.New(slog.DiscardHandler))
	got := series(t, text)
	want := map[string]float64{
		`ftvmd_agent_info{host="a"}`: 1,
		`ftvmd_vm_info{data_path="relay",engine="ftvmd-7.2",peer="10.0.0.2:7800",role="primary",vm="web1"}`: 1,
		`ftvmd_vm_state{role="primary",state="protected",vm="web1"}`:                                        1,
		`ftvmd_vm_state{role="primary",state="unprotected",vm="web1"}`:                                      0,
		`ftvmd_vm_state{role="backup",state="replaying",vm="db1"}`:                                          1,
		`ftvmd_vm_epoch{role="primary",vm="web1"}`:                                                          3,
		`ftvmd_vm_epoch{role="backup",vm="db1"}`:                                                            7,
		`ftvmd_vm_start_time_seconds{role="primary",vm="web1"}`:                                             1_700_000_100,
		`ftvmd_log_written_bytes_total{role="primary",vm="web1"}`:                                           5000,
		`ftvmd_log_sent_bytes_total{role="primary",vm="web1"}`:                                              4800,
		`ftvmd_log_acked_bytes_total{role="backup",vm="db1"}`:                                               8000,
		`ftvmd_log_replayed_bytes_total{role="backup",vm="db1"}`:                                            7000,
		`ftvmd_log_disk_bytes{role="backup",vm="db1"}`:                                                      9000,
		`ftvmd_log_space_bytes{role="backup",vm="db1"}`:                                                     12288,
		`ftvmd_log_space_limit_bytes{role="backup",vm="db1"}`:                                               1 << 30,
		`ftvmd_log_space_alarm{role="backup",vm="db1"}`:                                                     1,
		`ftvmd_log_space_alarm{role="primary",vm="web1"}`:                                                   0,
		`ftvmd_log_space_paused{role="primary",vm="web1"}`:                                                  0,
		`ftvmd_backup_lag_latest_seconds{role="primary",vm="web1"}`:                                         0.0125,
		`ftvmd_backup_lag_latest_bytes{role="primary",vm="web1"}`:                                           1000,
		`ftvmd_backup_lag_bound_seconds{role="primary",vm="web1"}`:                                          0.1,
		`ftvmd_throttle_quota_ratio{role="primary",vm="web1"}`:                                              0.5,
		`ftvmd_throttled_seconds_total{role="primary",vm="web1"}`:                                           1.25,
		`ftvmd_pacing_active{role="primary",vm="web1"}`:                                                     1,
		`ftvmd_pace_dropped_frames_total{role="primary",vm="web1"}`:                                         1,
		`ftvmd_pace_rate_bytes_per_second{role="primary",vm="web1"}`:                                        1e6,
		`ftvmd_output_held_frames{role="primary",vm="web1"}`:                                                3,
		`ftvmd_output_held_bytes{role="primary",vm="web1"}`:                                                 4500,
		`ftvmd_output_oldest_held_seconds{role="primary",vm="web1"}`:                                        0.007,
		`ftvmd_output_released_frames_total{role="primary",vm="web1"}`:                                      4,
		`ftvmd_output_backpressure_total{role="primary",vm="web1"}`:                                         5,
		`ftvmd_replay_stalled{role="backup",vm="db1"}`:                                                      1,
		`ftvmd_replay_stall_seconds{role="backup",vm="db1"}`:                                                4.5,
		`ftvmd_replay_stalls_total{role="backup",vm="db1"}`:                                                 2,
		`ftvmd_replay_emitted_frames_total{role="backup",vm="db1"}`:                                         0,
		`ftvmd_sentinel_nic_frames_total{role="backup",vm="db1"}`:                                           900,
		`ftvmd_sentinel_nic_checked_frames_total{role="backup",vm="db1"}`:                                   880,
		`ftvmd_sentinel_nic_skipped_frames_total{role="backup",vm="db1"}`:                                   3,
		`ftvmd_sentinel_nic_dropped_total{role="backup",vm="db1"}`:                                          1,
		`ftvmd_sentinel_nic_frames_total{role="primary",vm="web1"}`:                                         950,
		`ftvmd_sentinel_nic_dropped_total{role="primary",vm="web1"}`:                                        2,
		// The lag histogram, cumulative, from the agent's per-bucket counts.
		`ftvmd_backup_lag_seconds_bucket{role="primary",vm="web1",le="0.001"}`: 5,
		`ftvmd_backup_lag_seconds_bucket{role="primary",vm="web1",le="0.01"}`:  8,
		`ftvmd_backup_lag_seconds_bucket{role="primary",vm="web1",le="0.1"}`:   10,
		`ftvmd_backup_lag_seconds_bucket{role="primary",vm="web1",le="+Inf"}`:  11,
		`ftvmd_backup_lag_seconds_count{role="primary",vm="web1"}`:             11,
		`ftvmd_backup_lag_seconds_sum{role="primary",vm="web1"}`:               0.75,
		`ftvmd_backup_work_lag_seconds_count{role="primary",vm="web1"}`:        9,
		// The output delay histogram on outputrule's bounds (25 µs doubling).
		`ftvmd_output_delay_seconds_bucket{role="primary",vm="web1",le="2.5e-05"}`: 1,
		`ftvmd_output_delay_seconds_bucket{role="primary",vm="web1",le="5e-05"}`:   3,
		`ftvmd_output_delay_seconds_bucket{role="primary",vm="web1",le="0.8192"}`:  3,
		`ftvmd_output_delay_seconds_bucket{role="primary",vm="web1",le="+Inf"}`:    4,
		`ftvmd_output_delay_seconds_sum{role="primary",vm="web1"}`:                 2.00007,
		// Per VM, across copies.
		`ftvmd_failovers_total{vm="web1"}`:                  1,
		`ftvmd_failovers_total{vm="db1"}`:                   0,
		`ftvmd_reprotections_total{vm="web1"}`:              0,
		`ftvmd_epoch_claims_total{result="won",vm="web1"}`:  2,
		`ftvmd_epoch_claims_total{result="lost",vm="web1"}`: 1,
		`ftvmd_last_failover_claim_seconds{vm="web1"}`:      0.035,
		`ftvmd_last_golive_seconds{vm="web1"}`:              1.5,
		// Peers.
		`ftvmd_peer_up{peer="b"}`:                 1,
		`ftvmd_peer_up{peer="c"}`:                 0,
		`ftvmd_peer_channels{peer="b"}`:           2,
		`ftvmd_peer_rtt_seconds{peer="b"}`:        0.00025,
		`ftvmd_peer_last_heard_seconds{peer="b"}`: 0.012,
	}
	for k, w := range want {
		v, ok := got[k]
		if !ok {
			t.Errorf("missing %s", k)
			continue
		}
		if diff := v - w; diff > 1e-9*max(1, w) || diff < -1e-9*max(1, w) {
			t.Errorf("%s = %g, want %g", k, v, w)
		}
	}
	// What does not apply to a copy is left out, not shown as 0.
	for _, absent := range []string{
		`ftvmd_throttle_quota_ratio{role="backup",vm="db1"}`,
		`ftvmd_pacing_active{role="backup",vm="db1"}`,
		`ftvmd_output_held_frames{role="backup",vm="db1"}`,
		`ftvmd_backup_lag_seconds_count{role="backup",vm="db1"}`,
		// web1's primary has no stall report from its backup (an older ftvmd).
		`ftvmd_replay_stalled{role="primary",vm="web1"}`,
		`ftvmd_last_golive_seconds{vm="db1"}`,
		`ftvmd_peer_rtt_seconds{peer="c"}`,
		`ftvmd_peer_last_heard_seconds{peer="c"}`,
	} {
		if _, ok := got[absent]; ok {
			t.Errorf("%s is exported", absent)
		}
	}
	// The enum has one series per state, exactly one of them 1.
	ones := 0
	for _, st := range control.VMStates {
		k := `ftvmd_vm_state{role="primary",state="` + st + `",vm="web1"}`
		v, ok := got[k]
		if !ok {
			t.Errorf("missing %s", k)
		}
		ones += int(v)
	}
	if ones != 1 {
		t.Errorf("web1 is in %d states", ones)
	}
	if _, ok := got["go_goroutines"]; !ok {
		t.Error("no Go runtime metrics")
	}
	promtoolCheck(t, text)
}

// TestCollectorFollowsState: each scrape reads the agent's state afresh. After a
// failover the VM's copy here is the primary, the failover counted.
func TestCollectorFollowsState(t *testing.T) {
	src := &fakeAgent{resp: control.Response{Host: "b",
		VMs:      []control.VMStatus{{Name: "web1", Role: "backup", State: "replaying", Epoch: 3}},
		Counters: []control.VMCounters{{Name: "web1"}},
		Peers:    []control.PeerStatus{{Host: "a", Up: true, Channels: 1}},
	}}
	log := slog.New(slog.DiscardHandler)
	before := series(t, scrape(t, src, log))
	src.set(control.Response{Host: "b",
		VMs:      []control.VMStatus{{Name: "web1", Role: "primary", State: "unprotected", Epoch: 4}},
		Counters: []control.VMCounters{{Name: "web1", Failovers: 1, ClaimsWon: 1, LastGoLiveMS: 900}},
		Peers:    []control.PeerStatus{{Host: "a"}},
	})
	after := series(t, scrape(t, src, log))
	for _, c := range []struct {
		m           map[string]float64
		series      string
		want        float64
		wantLeftOut bool
		when        string
	}{
		{before, `ftvmd_vm_state{role="backup",state="replaying",vm="web1"}`, 1, false, "before"},
		{before, `ftvmd_failovers_total{vm="web1"}`, 0, false, "before"},
		{before, `ftvmd_peer_up{peer="a"}`, 1, false, "before"},
		{after, `ftvmd_vm_state{role="backup",state="replaying",vm="web1"}`, 0, true, "after"},
		{after, `ftvmd_vm_state{role="primary",state="unprotected",vm="web1"}`, 1, false, "after"},
		{after, `ftvmd_vm_epoch{role="primary",vm="web1"}`, 4, false, "after"},
		{after, `ftvmd_failovers_total{vm="web1"}`, 1, false, "after"},
		{after, `ftvmd_last_golive_seconds{vm="web1"}`, 0.9, false, "after"},
		{after, `ftvmd_peer_up{peer="a"}`, 0, false, "after"},
	} {
		v, ok := c.m[c.series]
		if c.wantLeftOut {
			if ok {
				t.Errorf("%s: %s still exported", c.when, c.series)
			}
			continue
		}
		if !ok || v != c.want {
			t.Errorf("%s: %s = %g (present %v), want %g", c.when, c.series, v, ok, c.want)
		}
	}
}

// TestCollectorBadHistogram: a histogram the exporter cannot read is an error the
// scrape reports (logged), while every other metric is still served.
func TestCollectorBadHistogram(t *testing.T) {
	r := protectedPair()
	r.VMs[1].LagHist = &control.Histogram{Bounds: []float64{0.001}, Counts: []uint64{1}}
	var logged bytes.Buffer
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logged}, nil))
	got := series(t, scrape(t, &fakeAgent{resp: r}, log))
	if _, ok := got[`ftvmd_backup_lag_seconds_count{role="primary",vm="web1"}`]; ok {
		t.Error("the bad histogram was exported")
	}
	if got[`ftvmd_failovers_total{vm="web1"}`] != 1 || got[`ftvmd_output_held_frames{role="primary",vm="web1"}`] != 3 {
		t.Error("a bad histogram hid the other metrics")
	}
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(logged.String(), "histogram with 1 bounds and 1 counts") {
		t.Errorf("the error was not logged: %q", logged.String())
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestServe serves on a real listener until the context ends.
func TestServe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, ln, &fakeAgent{resp: protectedPair()}, slog.New(slog.DiscardHandler)) }()
	resp, err := http.Get("http://" + ln.Addr().String() + Path)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `ftvmd_peer_up{peer="b"} 1`) {
		t.Fatalf("served:\n%s", b)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the context ended")
	}
	if _, err := http.Get("http://" + ln.Addr().String() + Path); err == nil {
		t.Fatal("still serving after the context ended")
	}
}

// promtoolCheck runs `promtool check metrics` (Debian's prometheus package) on an
// exposition: naming conventions, units, types. Without promtool it skips, or fails
// under FTVMD_REQUIRE_PROMETHEUS=1 (test/run-tests.sh, which installs it).
func promtoolCheck(t *testing.T, text string) {
	t.Helper()
	bin, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("FTVMD_REQUIRE_PROMETHEUS") == "1" {
			t.Fatalf("promtool not found and FTVMD_REQUIRE_PROMETHEUS=1: %v", err)
		}
		t.Log("promtool not installed (apt-get install prometheus): exposition not linted")
		return
	}
	cmd := exec.Command(bin, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("promtool check metrics: %v\n%s", err, out)
	}
	if err != nil {
		t.Fatal(err)
	}
}
