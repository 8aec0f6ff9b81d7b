package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/journal"
)

// fakeAgent serves the control socket with handle until the test ends and returns
// the socket's path.
func fakeAgent(t *testing.T, handle control.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "a.sock")
	ln, err := control.Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = control.Serve(ctx, ln, handle, slog.New(slog.DiscardHandler))
	}()
	t.Cleanup(func() { cancel(); wg.Wait() })
	return sock
}

// runCLI runs the ftvmd command line against socket and returns what it printed.
func runCLI(ctx context.Context, t *testing.T, socket string, args ...string) (string, error) {
	t.Helper()
	root := newRoot()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(io.Discard)
	root.SetArgs(append([]string{"--socket", socket}, args...))
	err := root.ExecuteContext(ctx)
	return out.String(), err
}

// sampleStatus is a status with a bit of everything.
func sampleStatus() control.Response {
	return control.Response{OK: true, Host: "a",
		VMs: []control.VMStatus{{Name: "web1", Role: "primary", State: "protected", Epoch: 3, StartedAt: time.Unix(1_700_000_000, 0).UTC(),
			LogWritten: 5000, LagMS: 12.5, ThrottleQuota: 1, HeldFrames: 2,
			LagHist: &control.Histogram{Bounds: []float64{0.001, 0.002}, Counts: []uint64{1, 2, 3}, Sum: 0.01}}},
		Peers:    []control.PeerStatus{{Host: "b", Up: true, Channels: 1, RTTMS: 0.2, Since: time.Unix(1_700_000_000, 0).UTC()}},
		Counters: []control.VMCounters{{Name: "web1", Failovers: 1, ClaimsWon: 2, LastGoLiveMS: 900}},
	}
}

// TestStatusJSON: `ftvmd status --json` prints what the agent answered, all of it,
// in a form a script parses back.
func TestStatusJSON(t *testing.T) {
	want := sampleStatus()
	var asked atomic.Value
	sock := fakeAgent(t, func(_ context.Context, r control.Request) control.Response {
		asked.Store(r)
		return want
	})
	out, err := runCLI(context.Background(), t, sock, "status", "web1", "--json")
	if err != nil {
		t.Fatal(err)
	}
	if r := asked.Load().(control.Request); r.Op != control.OpStatus || r.VM != "web1" {
		t.Fatalf("asked %+v", r)
	}
	var got control.Response
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("parsed back\n%+v\nwant\n%+v", got, want)
	}
	// The text status shows the same peers and counters.
	txt, err := runCLI(context.Background(), t, sock, "status")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"vm        web1", "peer b", "rtt 0.20 ms", "failovers 1", "epoch claims won 2", "last go-live 900 ms"} {
		if !strings.Contains(strings.Join(strings.Fields(txt), " "), strings.Join(strings.Fields(s), " ")) {
			t.Errorf("text status lacks %q:\n%s", s, txt)
		}
	}
}

// TestStatusWatch: --watch asks again every interval until interrupted; with --json
// each refresh is one JSON document on its own line; a failed call is shown and the
// watch goes on.
func TestStatusWatch(t *testing.T) {
	var calls atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sock := fakeAgent(t, func(_ context.Context, r control.Request) control.Response {
		n := calls.Add(1)
		if n == 4 {
			cancel() // Ctrl-C during the fourth refresh
		}
		if n == 2 {
			return control.Response{Host: "a", Error: "agent busy"}
		}
		resp := sampleStatus()
		resp.VMs[0].Epoch = uint64(n)
		return resp
	})
	t0 := time.Now()
	out, err := runCLI(ctx, t, sock, "status", "--watch", "--interval", "50ms", "--json")
	if err != nil {
		t.Fatal(err)
	}
	if el := time.Since(t0); el < 150*time.Millisecond {
		t.Fatalf("three intervals took %s", el)
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	var lines []control.Response
	for sc.Scan() {
		var r control.Response
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		lines = append(lines, r)
	}
	if len(lines) != 3 {
		t.Fatalf("%d refreshes printed, want 3 (the fourth was interrupted):\n%s", len(lines), out)
	}
	if lines[0].VMs[0].Epoch != 1 || lines[1].Error != "agent busy" || lines[2].VMs[0].Epoch != 3 {
		t.Fatalf("refreshes %+v", lines)
	}

	// Text: a header per refresh, no terminal escapes into a file or pipe.
	calls.Store(0)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 180*time.Millisecond)
	defer cancel2()
	out, err = runCLI(ctx2, t, sock, "status", "--watch", "--interval", "50ms")
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(out, "ftvmd status"); n < 2 || strings.Contains(out, "\033[") {
		t.Fatalf("%d headers, escapes %v:\n%q", n, strings.Contains(out, "\033["), out)
	}
	if !strings.Contains(out, "ftvmd: agent busy") {
		t.Fatalf("the failed refresh is not shown:\n%s", out)
	}
	if _, err := runCLI(context.Background(), t, sock, "status", "--watch", "--interval", "0s"); err == nil {
		t.Fatal("--interval 0 accepted")
	}
}

// TestEventsCmd: `ftvmd events [vm]` prints the agent's journal as a table, or as
// JSON lines.
func TestEventsCmd(t *testing.T) {
	t0 := time.Date(2025, 3, 4, 5, 6, 7, 0, time.Local)
	evs := []journal.Event{
		{Time: t0, Kind: journal.KindClaim, VM: "web1", Role: "backup", Epoch: 4, Result: journal.ClaimWon, DurationMS: 12.34, Detail: "peer silent"},
		{Time: t0.Add(time.Second), Kind: journal.KindGoLive, VM: "web1", Role: "backup", Epoch: 4, DurationMS: 1500, Detail: "live"},
		{Time: t0.Add(2 * time.Second), Kind: journal.KindPeerDown, Peer: "a", Detail: "log channel ended"},
	}
	var asked atomic.Value
	sock := fakeAgent(t, func(_ context.Context, r control.Request) control.Response {
		asked.Store(r)
		return control.Response{OK: true, Host: "b", Events: evs}
	})
	out, err := runCLI(context.Background(), t, sock, "events", "web1", "--limit", "20")
	if err != nil {
		t.Fatal(err)
	}
	if r := asked.Load().(control.Request); r.Op != control.OpEvents || r.VM != "web1" || r.Limit != 20 {
		t.Fatalf("asked %+v", r)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "TIME") {
		t.Fatalf("table:\n%s", out)
	}
	for i, want := range []string{"2025-03-04 05:06:07.000 web1 backup claim won 4 - peer silent (12.3ms)",
		"2025-03-04 05:06:08.000 web1 backup go-live 4 - live (1.5s)",
		"2025-03-04 05:06:09.000 - - peer-down - a log channel ended"} {
		if got := strings.Join(strings.Fields(lines[i+1]), " "); got != want {
			t.Errorf("line %d: %q, want %q", i+1, got, want)
		}
	}
	out, err = runCLI(context.Background(), t, sock, "events", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var back []journal.Event
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		var e journal.Event
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		back = append(back, e)
	}
	if len(back) != 3 || !back[1].Time.Equal(evs[1].Time) || back[1].DurationMS != 1500 || back[2].Peer != "a" {
		t.Fatalf("JSON lines read back %+v", back)
	}
	if _, err := runCLI(context.Background(), t, sock, "events", "--limit", "-1"); err == nil {
		t.Fatal("--limit -1 accepted")
	}
}

// TestCompletion: cobra's completion is exposed, and VM names complete from the
// local agent.
func TestCompletion(t *testing.T) {
	sock := fakeAgent(t, func(context.Context, control.Request) control.Response { return sampleStatus() })
	for _, sh := range []string{"bash", "zsh", "fish"} {
		out, err := runCLI(context.Background(), t, sock, "completion", sh)
		if err != nil || !strings.Contains(out, "ftvmd") || len(out) < 1000 {
			t.Fatalf("completion %s: %v (%d bytes)", sh, err, len(out))
		}
	}
	out, err := runCLI(context.Background(), t, sock, "__complete", "failover", "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "web1\tprimary, protected\n") {
		t.Fatalf("completing a VM name: %q", out)
	}
}

// TestStatusThrottleAtFloor: a primary throttled to its floor while the lag is
// still over the bound says the backup's host is short of CPU; a throttle that
// is merely on does not.
func TestStatusThrottleAtFloor(t *testing.T) {
	for _, tc := range []struct {
		name    string
		floor   bool
		lag     float64
		wantMsg bool
	}{
		{"at the floor, behind", true, 900, true},
		{"at the floor, within the bound", true, 40, false},
		{"throttled above the floor", false, 900, false},
	} {
		st := sampleStatus()
		st.VMs[0].ThrottleQuota, st.VMs[0].ThrottleAtFloor = 0.02, tc.floor
		st.VMs[0].LagMS, st.VMs[0].LagBoundMS = tc.lag, 100
		sock := fakeAgent(t, func(context.Context, control.Request) control.Response { return st })
		txt, err := runCLI(context.Background(), t, sock, "status")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(txt, "ON: 2% of a CPU") {
			t.Errorf("%s: no throttle line:\n%s", tc.name, txt)
		}
		if got := strings.Contains(txt, "short of CPU for the replay"); got != tc.wantMsg {
			t.Errorf("%s: floor warning shown %v, want %v:\n%s", tc.name, got, tc.wantMsg, txt)
		}
	}
}
