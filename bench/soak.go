package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

// `ftvmd bench soak`: one protected guest kept busy (a CPU-bound loop in it) takes
// a bulk client->guest stream (every byte is logged on its way in) and a
// request/response client for a long time, while both hosts are watched: the logs'
// bytes on disk, the agents' and QEMUs' resident memory, the backup's lag. What it
// shows is what days of running would do to a host, in an hour: the logs held to
// what a reader still needs and under the VM's limit, no memory growing, the lag
// held near its bound, and no request lost.

// SoakOpts says what to soak and how to watch it.
type SoakOpts struct {
	VM       string
	Duration time.Duration // traffic time, from the backup having caught up
	Interval time.Duration // one sample (a table row) per interval
	// Poll is how often both copies' status is read between samples: each read is
	// a lag sample and a disk reading, so a peak between two rows is not missed.
	Poll time.Duration
	// MaxLogDisk is the VM's --max-log-disk ("" for the default), LagBoundMS its
	// --lag-bound-ms (0 for the default).
	MaxLogDisk string
	LagBoundMS int
	// Retention is the agents' --log-retention, recorded in the summary (the
	// caller starts the agents with it).
	Retention string
}

// Defaults of SoakOpts.
const (
	DefaultSoakInterval = 10 * time.Second
	DefaultSoakPoll     = 500 * time.Millisecond
)

// Flatness thresholds: a series is flat when the growth of its least-squares line
// over the judged window (the second half of the run) is at most
// max(FlatFloorBytes, FlatRel x the series' mean there). A leak of 1 MiB a minute
// shows as 10 MiB over the second half of a 20-minute run; an agent's Go heap and
// the kernel's accounting move RSS by a few MiB either way without any leak, which
// the floor absorbs.
const (
	FlatFloorBytes = 8 << 20
	FlatRel        = 0.05
	// flatMinSamples: fewer samples than this in the window judge nothing.
	flatMinSamples = 4
)

// Flatness is the judgement of one series over the judged window.
type Flatness struct {
	Series    string  `json:"series"`
	N         int     `json:"samples"`
	FromS     float64 `json:"from_s"`
	ToS       float64 `json:"to_s"`
	Mean      float64 `json:"mean"`
	SlopePerH float64 `json:"slope_per_hour"` // of the fitted line, in the series' unit
	Growth    float64 `json:"fitted_growth"`  // slope x (ToS - FromS)
	Threshold float64 `json:"threshold"`
	Flat      bool    `json:"flat"`
	Note      string  `json:"note,omitempty"`
}

// JudgeFlat fits a line to (ts, ys) by least squares and calls the series flat
// when the line grows by at most max(FlatFloorBytes, FlatRel x mean) over the
// span of ts. Only growth counts: a series that falls is flat. Fewer than
// flatMinSamples points, or points that do not span any time, judge nothing and
// are not flat.
func JudgeFlat(series string, ts, ys []float64) Flatness {
	f := Flatness{Series: series, N: len(ts)}
	if len(ts) != len(ys) {
		f.Note = fmt.Sprintf("%d times for %d values", len(ts), len(ys))
		return f
	}
	if len(ts) < flatMinSamples {
		f.Note = fmt.Sprintf("too few samples (%d, need %d): run longer or sample more often", len(ts), flatMinSamples)
		return f
	}
	n := float64(len(ts))
	var tm, ym float64
	for i := range ts {
		tm += ts[i]
		ym += ys[i]
	}
	tm, ym = tm/n, ym/n
	var sxy, sxx float64
	for i := range ts {
		sxy += (ts[i] - tm) * (ys[i] - ym)
		sxx += (ts[i] - tm) * (ts[i] - tm)
	}
	f.FromS, f.ToS = slicesMin(ts), slicesMax(ts)
	f.Mean = ym
	f.Threshold = max(FlatFloorBytes, FlatRel*math.Abs(ym))
	if sxx == 0 {
		f.Note = "the samples span no time"
		return f
	}
	slope := sxy / sxx
	f.SlopePerH = slope * 3600
	f.Growth = slope * (f.ToS - f.FromS)
	f.Flat = f.Growth <= f.Threshold
	return f
}

func slicesMin(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs[1:] {
		m = min(m, x)
	}
	return m
}

func slicesMax(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs[1:] {
		m = max(m, x)
	}
	return m
}

// SoakSample is one row of the table: the state at T, and the peaks since the
// row before.
type SoakSample struct {
	T float64 `json:"t_s"` // seconds since the traffic started
	// Logs on disk (allocated bytes: rr log, console and its rotated copies) on
	// host A (primary) and B (backup): at T, and the most any poll saw since the
	// row before.
	DiskA    int64 `json:"log_disk_a"`
	DiskAMax int64 `json:"log_disk_a_max"`
	DiskB    int64 `json:"log_disk_b"`
	DiskBMax int64 `json:"log_disk_b_max"`
	// WrittenA is the size of the primary's log files (what bounded logs keep off
	// the disk); FreedA/FreedB the rr log prefix each host has given back.
	WrittenA int64 `json:"log_files_a"`
	FreedA   int64 `json:"log_freed_a"`
	FreedB   int64 `json:"log_freed_b"`
	// Resident memory (VmRSS) of each host's agent and of the VM's QEMU there.
	RSSAgentA int64 `json:"rss_agent_a"`
	RSSAgentB int64 `json:"rss_agent_b"`
	RSSQEMUA  int64 `json:"rss_qemu_a"`
	RSSQEMUB  int64 `json:"rss_qemu_b"`
	// The primary's lag over the polls since the row before.
	LagP99MS float64 `json:"lag_p99_ms"`
	LagMaxMS float64 `json:"lag_max_ms"`
	// Traffic so far: requests answered (every answer checked) and bulk bytes
	// sent to the guest by puts under way or done.
	Requests  int64 `json:"requests"`
	BulkBytes int64 `json:"bulk_bytes"`
}

// SoakHeader is the table's header line; SoakSample.Row prints rows under it.
func SoakHeader() string {
	return fmt.Sprintf("%7s %9s %9s %9s %9s %9s %7s %7s %7s %7s %7s %7s %8s %9s",
		"t_s", "diskA_KiB", "maxA_KiB", "diskB_KiB", "maxB_KiB", "filesA_MiB",
		"agentA", "agentB", "qemuA", "qemuB", "lag_p99", "lag_max", "requests", "bulk_MiB")
}

// Row is the sample as one line of the table: disk in KiB, file sizes and bulk in
// MiB, RSS in MiB, lag in ms.
func (s SoakSample) Row() string {
	return fmt.Sprintf("%7.0f %9d %9d %9d %9d %10.1f %7.1f %7.1f %7.1f %7.1f %7.1f %7.1f %8d %9.1f",
		s.T, s.DiskA>>10, s.DiskAMax>>10, s.DiskB>>10, s.DiskBMax>>10, mib(s.WrittenA),
		mib(s.RSSAgentA), mib(s.RSSAgentB), mib(s.RSSQEMUA), mib(s.RSSQEMUB),
		s.LagP99MS, s.LagMaxMS, s.Requests, mib(s.BulkBytes))
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

// SoakTarget is one target and whether the run met it.
type SoakTarget struct {
	Name   string `json:"name"`
	Met    bool   `json:"met"`
	Detail string `json:"detail"`
}

// SoakResult is `ftvmd bench soak`'s summary.
type SoakResult struct {
	Env          Env     `json:"env"`
	VM           string  `json:"vm"`
	DurationS    float64 `json:"duration_s"` // asked for
	RanS         float64 `json:"ran_s"`      // traffic time actually run
	IntervalS    float64 `json:"interval_s"`
	PollS        float64 `json:"poll_s"`
	Retention    string  `json:"log_retention"`
	LagBoundMS   int     `json:"lag_bound_ms"`
	LogDiskLimit int64   `json:"log_disk_limit"`
	BootS        float64 `json:"boot_s"`
	// LoadBefore / LoadAfter: the machine's load averages (1, 5, 15 min) when the
	// traffic started and ended; the lab shares its two cores with whatever else
	// runs, and the lag and throughput show it.
	LoadBefore string `json:"loadavg_before"`
	LoadAfter  string `json:"loadavg_after"`
	// LagMS: the primary's lag at every poll of the run.
	LagMS Dist `json:"lag_ms"`
	// The most the logs took on disk at any poll, per host.
	MaxDiskA int64 `json:"max_log_disk_a"`
	MaxDiskB int64 `json:"max_log_disk_b"`
	// At the end: the log files' sizes and the rr log given back, per host.
	FilesA int64 `json:"log_files_a"`
	FilesB int64 `json:"log_files_b"`
	FreedA int64 `json:"log_freed_a"`
	FreedB int64 `json:"log_freed_b"`
	// AlarmPolls / PausedPolls: polls that found a log disk alarm raised, or the
	// primary paused at the limit, on either host.
	AlarmPolls  int    `json:"alarm_polls"`
	PausedPolls int    `json:"paused_polls"`
	LastAlarm   string `json:"last_alarm,omitempty"`
	// The bulk stream (every put's CRC checked by the guest).
	BulkBytes int64   `json:"bulk_bytes"`
	BulkMBs   float64 `json:"bulk_MB_s"`
	Puts      int     `json:"puts"`
	BulkError string  `json:"bulk_error,omitempty"`
	// The request/response client (`seq`, every answer checked).
	Requests     int    `json:"requests"`
	RequestsLost int    `json:"requests_lost"`
	Inconsistent int    `json:"requests_inconsistent"`
	RequestError string `json:"request_error,omitempty"`
	// Error: why the run ended before its time ("" when it ran to the end).
	Error    string       `json:"error,omitempty"`
	Samples  []SoakSample `json:"samples"`
	Flatness []Flatness   `json:"flatness"`
	Targets  []SoakTarget `json:"targets"`
	Pass     bool         `json:"pass"`
}

// Failed lists the targets the run missed, one line each.
func (r SoakResult) Failed() []string {
	var out []string
	for _, t := range r.Targets {
		if !t.Met {
			out = append(out, t.Name+": "+t.Detail)
		}
	}
	return out
}

// Judge fills Flatness, Targets and Pass from the run's figures and samples. The
// judged window for flatness is the second half of the run: the first half is
// warm-up (the guest's memory filling, a log retention lapsing, the throttle and
// pacing settling).
func (r *SoakResult) Judge() {
	r.Flatness, r.Targets = nil, nil
	add := func(name string, met bool, f string, a ...any) {
		r.Targets = append(r.Targets, SoakTarget{Name: name, Met: met, Detail: fmt.Sprintf(f, a...)})
	}
	add("ran to the end", r.Error == "", "%s", orText(r.Error, fmt.Sprintf("%.0f s of traffic", r.RanS)))

	var half float64
	if n := len(r.Samples); n > 0 {
		half = r.Samples[n-1].T / 2
	}
	var ts []float64
	series := map[string][]float64{}
	names := []string{"log disk A", "log disk B", "RSS agent A", "RSS agent B", "RSS qemu A", "RSS qemu B"}
	for _, s := range r.Samples {
		if s.T < half {
			continue
		}
		ts = append(ts, s.T)
		for i, v := range []int64{s.DiskA, s.DiskB, s.RSSAgentA, s.RSSAgentB, s.RSSQEMUA, s.RSSQEMUB} {
			series[names[i]] = append(series[names[i]], float64(v))
		}
	}
	for _, n := range names {
		r.Flatness = append(r.Flatness, JudgeFlat(n, ts, series[n]))
	}
	flatTarget := func(name string, fs []Flatness) {
		met, parts := true, []string{}
		for _, f := range fs {
			met = met && f.Flat
			p := fmt.Sprintf("%s %+.1f MiB over %.0f-%.0f s (threshold %.1f MiB, mean %.1f MiB, %d samples)",
				f.Series, f.Growth/(1<<20), f.FromS, f.ToS, f.Threshold/(1<<20), f.Mean/(1<<20), f.N)
			if f.Note != "" {
				p = f.Series + ": " + f.Note
			}
			parts = append(parts, p)
		}
		add(name, met, "%s", strings.Join(parts, "; "))
	}
	flatTarget("log disk flat after warm-up", r.Flatness[:2])
	add("log disk under the limit", r.LogDiskLimit > 0 && r.MaxDiskA <= r.LogDiskLimit && r.MaxDiskB <= r.LogDiskLimit,
		"at most %.1f MiB (A) and %.1f MiB (B) on disk at any poll; limit %.0f MiB", mib(r.MaxDiskA), mib(r.MaxDiskB), mib(r.LogDiskLimit))
	flatTarget("RSS flat", r.Flatness[2:])
	// As TestPacingBoundsLag judges it: the throttle and the pacer act only once
	// the lag has passed the bound, every SoakControllerStepMS, so a p99 within the
	// bound plus one step is the bound held.
	add("lag p99 within the bound", r.LagMS.N > 0 && r.LagBoundMS > 0 && r.LagMS.P99 <= float64(r.LagBoundMS+SoakControllerStepMS),
		"p50 %.1f / p99 %.1f / max %.1f ms over %d polls; bound %d ms (+%d ms, one controller step)", r.LagMS.P50, r.LagMS.P99, r.LagMS.Max, r.LagMS.N, r.LagBoundMS, SoakControllerStepMS)
	add("0 requests lost", r.Requests > 0 && r.RequestsLost == 0 && r.Inconsistent == 0 && r.RequestError == "",
		"%d answered, %d lost, %d wrong%s", r.Requests, r.RequestsLost, r.Inconsistent, orText(prefixed("; ", r.RequestError), ""))
	add("bulk stream intact", r.BulkBytes > 0 && r.BulkError == "",
		"%.1f MiB to the guest in %d puts, each checked%s", mib(r.BulkBytes), r.Puts, orText(prefixed("; ", r.BulkError), ""))
	r.Pass = true
	for _, t := range r.Targets {
		r.Pass = r.Pass && t.Met
	}
}

func orText(s, alt string) string {
	if s != "" {
		return s
	}
	return alt
}

func prefixed(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}

// LoadAvg is the machine's 1, 5 and 15 minute load averages (/proc/loadavg), or
// why they cannot be read.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown: " + err.Error()
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return fmt.Sprintf("unknown: /proc/loadavg reads %q", b)
	}
	return strings.Join(f[:3], " ")
}

// ReadRSS is a process's resident memory (VmRSS in /proc/PID/status), in bytes.
func ReadRSS(pid int) (int64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("no process (pid %d)", pid)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseVmRSS(bufio.NewScanner(f))
}

// parseVmRSS finds "VmRSS: N kB" in a /proc/PID/status.
func parseVmRSS(sc *bufio.Scanner) (int64, error) {
	for sc.Scan() {
		v, ok := strings.CutPrefix(sc.Text(), "VmRSS:")
		if !ok {
			continue
		}
		f := strings.Fields(v)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("VmRSS line %q", sc.Text())
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("VmRSS line %q: %w", sc.Text(), err)
		}
		return n << 10, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, errors.New("no VmRSS line (a kernel thread, or a zombie)")
}

// soakWatch accumulates the polls between two rows and over the run.
type soakWatch struct {
	res            *SoakResult
	lags, rowLags  []float64
	rowMaxA        int64
	rowMaxB        int64
	lastA, lastB   control.VMStatus
	agentA, agentB int
}

// poll reads both copies (the backup first: it can only hold what the primary
// has logged), checks that they still protect the VM, and keeps the lag and disk
// readings.
func (w *soakWatch) poll(ctx context.Context, vm string) error {
	b, err := lab.Status(ctx, lab.HostB, vm)
	if err != nil {
		return fmt.Errorf("backup status: %w", err)
	}
	p, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		return fmt.Errorf("primary status: %w", err)
	}
	w.lastA, w.lastB = p, b
	if p.State != "protected" || b.State != "replaying" {
		return fmt.Errorf("a copy left its state: primary %s (%s), backup %s (%s); %s", p.State, p.Detail, b.State, b.Detail, describe(p, b))
	}
	if b.Divergence != "" {
		return fmt.Errorf("the backup's console diverged: %s", b.Divergence)
	}
	if p.InvariantFails != 0 || b.InvariantFails != 0 || b.EmittedFrames != 0 {
		return fmt.Errorf("output rule: %d invariant failures on the primary, %d on the backup, %d frames emitted by the replay", p.InvariantFails, b.InvariantFails, b.EmittedFrames)
	}
	w.lags = append(w.lags, p.LagMS)
	w.rowLags = append(w.rowLags, p.LagMS)
	w.rowMaxA, w.rowMaxB = max(w.rowMaxA, p.LogDiskBytes), max(w.rowMaxB, b.LogDiskBytes)
	w.res.MaxDiskA, w.res.MaxDiskB = max(w.res.MaxDiskA, p.LogDiskBytes), max(w.res.MaxDiskB, b.LogDiskBytes)
	if p.LogDiskAlarm != "" || b.LogDiskAlarm != "" {
		w.res.AlarmPolls++
		w.res.LastAlarm = orText(p.LogDiskAlarm, b.LogDiskAlarm)
	}
	if p.LogLimitPaused {
		w.res.PausedPolls++
	}
	return nil
}

// sample makes a row from the last poll and the resident memory now, and starts
// the next row's peaks.
func (w *soakWatch) sample(t float64, requests, bulk int64) (SoakSample, error) {
	p, b := w.lastA, w.lastB
	s := SoakSample{T: t, DiskA: p.LogDiskBytes, DiskAMax: w.rowMaxA, DiskB: b.LogDiskBytes, DiskBMax: w.rowMaxB,
		WrittenA: p.LogFileBytes, FreedA: p.LogFreed, FreedB: b.LogFreed, Requests: requests, BulkBytes: bulk}
	d := NewDist(w.rowLags)
	s.LagP99MS, s.LagMaxMS = d.P99, d.Max
	var errs []error
	for _, m := range []struct {
		what string
		pid  int
		dst  *int64
	}{{"agent A", w.agentA, &s.RSSAgentA}, {"agent B", w.agentB, &s.RSSAgentB}, {"qemu A", p.PID, &s.RSSQEMUA}, {"qemu B", b.PID, &s.RSSQEMUB}} {
		n, err := ReadRSS(m.pid)
		if err != nil {
			errs = append(errs, fmt.Errorf("RSS of %s (pid %d): %w", m.what, m.pid, err))
		}
		*m.dst = n
	}
	w.rowLags, w.rowMaxA, w.rowMaxB = w.rowLags[:0], 0, 0
	return s, errors.Join(errs...)
}

// SoakControllerStepMS is the period at which the primary's throttle and pacer
// act on the lag (agent: 100 ms); the lag target allows the bound plus one step.
const SoakControllerStepMS = 100

// Soak boots one busy guest (ft.busy=1) protected on the session's lab, waits for
// the backup to catch up, then for o.Duration runs a bulk `put` stream and a
// `seq` request loop against it while polling both copies every o.Poll and
// printing a sample row every o.Interval; it then stops the guest and judges the
// run (SoakResult.Judge). The error is for a run that could not start; a run
// that ends early (a copy leaving protection, a status that cannot be read)
// returns its result with Error set and its targets judged.
func Soak(ctx context.Context, s *Session, env Env, o SoakOpts) (SoakResult, error) {
	if o.VM == "" {
		o.VM = "soak"
	}
	if o.Interval <= 0 {
		o.Interval = DefaultSoakInterval
	}
	if o.Poll <= 0 {
		o.Poll = DefaultSoakPoll
	}
	res := SoakResult{Env: env, VM: o.VM, DurationS: o.Duration.Seconds(), IntervalS: o.Interval.Seconds(), PollS: o.Poll.Seconds(), Retention: orText(o.Retention, "0")}
	if o.Duration <= 0 || o.Poll > o.Interval || o.Interval > o.Duration {
		return res, fmt.Errorf("bench soak: need poll <= interval <= duration, all positive (got poll %s, interval %s, duration %s)", o.Poll, o.Interval, o.Duration)
	}
	var flags []string
	if o.MaxLogDisk != "" {
		flags = append(flags, "--max-log-disk", o.MaxLogDisk)
	}
	if o.LagBoundMS > 0 {
		flags = append(flags, "--lag-bound-ms", strconv.Itoa(o.LagBoundMS))
	}
	boot, err := s.StartGuest(ctx, o.VM, "ft.busy=1", true, flags...)
	if err != nil {
		return res, err
	}
	res.BootS = boot.Seconds()
	if err := lab.WaitConsole(ctx, LabCopies(o.VM).BackupConsole, "ftguest ready", 4*time.Minute); err != nil {
		return res, err
	}
	st, err := lab.Status(ctx, lab.HostA, o.VM)
	if err != nil {
		return res, err
	}
	res.LagBoundMS, res.LogDiskLimit = st.LagBoundMS, st.LogDiskLimit
	c, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		return res, err
	}
	defer c.Close()
	s.logf("soak: %s booted busy in %.1f s, backup caught up; %s of bulk put + seq requests, a row every %s (lag bound %d ms, max log disk %.0f MiB, retention %s)",
		o.VM, boot.Seconds(), o.Duration, o.Interval, res.LagBoundMS, mib(res.LogDiskLimit), res.Retention)

	w := &soakWatch{res: &res, agentA: s.Lab.AgentPID(lab.HostA), agentB: s.Lab.AgentPID(lab.HostB)}
	tctx, stopTraffic := context.WithCancel(ctx)
	defer stopTraffic()
	res.LoadBefore = LoadAvg()
	t0 := time.Now()
	ld := startLoadMode(tctx, c, false)
	bulk := startBulk(tctx, DrivePut, o.Duration)
	var loadEnded *loadResult // the loader ended by itself (a request failed)

	s.logf("%s", SoakHeader())
	tick := time.NewTicker(o.Poll)
	defer tick.Stop()
	nextRow := o.Interval
	for res.Error == "" {
		select {
		case <-ctx.Done():
			res.Error = context.Cause(ctx).Error()
			continue
		case <-tick.C:
		}
		el := time.Since(t0)
		if err := w.poll(ctx, o.VM); err != nil {
			res.Error = fmt.Sprintf("at %.0f s: %v", el.Seconds(), err)
			break
		}
		if loadEnded == nil {
			select {
			case r := <-ld.done:
				loadEnded = &r
				res.Error = fmt.Sprintf("at %.0f s: the request client stopped: %v", el.Seconds(), r.err)
			default:
			}
		}
		select {
		case <-bulk.done:
			if bulk.err != nil {
				res.BulkError = bulk.err.Error()
				res.Error = fmt.Sprintf("at %.0f s: the bulk stream stopped: %v", el.Seconds(), bulk.err)
			}
		default:
		}
		if el >= nextRow || el >= o.Duration {
			smp, err := w.sample(el.Seconds(), ld.answeredN.Load(), bulk.moved())
			if err != nil && res.Error == "" {
				res.Error = fmt.Sprintf("at %.0f s: %v", el.Seconds(), err)
			}
			res.Samples = append(res.Samples, smp)
			s.logf("%s", smp.Row())
			nextRow += o.Interval
		}
		if el >= o.Duration {
			break
		}
	}
	res.RanS = time.Since(t0).Seconds()
	res.LoadAfter = LoadAvg()
	s.logf("soak: %.0f s of traffic; load average %s at its start, %s at its end", res.RanS, res.LoadBefore, res.LoadAfter)
	var lr loadResult
	if loadEnded != nil {
		lr = *loadEnded
	} else {
		lr = ld.stop()
	}
	stopped := res.Error != ""
	if stopped {
		stopTraffic() // do not wait for a put of a run already failed
	}
	tr, berr := bulk.wait()
	res.Requests, res.RequestsLost, res.Inconsistent = lr.answered, lr.lost, lr.inconsistent
	if lr.err != nil {
		res.RequestError = lr.err.Error()
	}
	res.BulkBytes, res.Puts = tr.ToGuestBytes, tr.Puts
	if berr != nil && !stopped {
		res.BulkError = berr.Error()
	}
	if res.RanS > 0 {
		res.BulkMBs = float64(tr.ToGuestBytes) / 1e6 / res.RanS
	}
	res.LagMS = NewDist(w.lags)
	res.FilesA, res.FilesB = w.lastA.LogFileBytes, w.lastB.LogFileBytes
	res.FreedA, res.FreedB = w.lastA.LogFreed, w.lastB.LogFreed
	// Stop the guest even when the run was interrupted (ctx cancelled): a guest
	// left running keeps both agents busy until the lab goes down.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer cancel()
	if err := s.StopGuest(sctx, o.VM); err != nil {
		s.logf("soak: stop %s: %v", o.VM, err)
	}
	res.Judge()
	return res, nil
}
