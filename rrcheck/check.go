package rrcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/logspace"
	"github.com/ftvmd/ftvmd/netbuf"
	"github.com/ftvmd/ftvmd/qemu"
	"github.com/ftvmd/ftvmd/replay"
)

// Defaults of Config.
const (
	DefaultStallTimeout = 20 * time.Second
	// DefaultPollEvery matches the backup agent's query-replay cadence: the
	// distribution's QEMU only moves an idle replay on when its main loop wakes,
	// and a query wakes it, so the check replays under the backup's conditions.
	DefaultPollEvery = 10 * time.Millisecond
)

// Config is one check.
type Config struct {
	Recording Recording
	// Binary replays with another QEMU than the recording's (the result then
	// carries a warning when its engine differs).
	Binary string
	// QEMUImg makes the disk overlays (default "qemu-img").
	QEMUImg string
	// WorkDir holds the replay's files; "" makes a temporary directory, removed
	// after a deterministic verdict unless KeepWorkDir.
	WorkDir     string
	KeepWorkDir bool
	// CPUs pins the replaying QEMU ("1", "0,2", "2-3"); "" leaves it unpinned.
	CPUs string
	// StallTimeout ends the replay when its icount has not moved for this long
	// (default DefaultStallTimeout); PollEvery is the query-replay period
	// (default DefaultPollEvery).
	StallTimeout time.Duration
	PollEvery    time.Duration
	Logger       *slog.Logger
	// Progress, if set, is called about once a second while the replay runs.
	Progress func(Progress)
}

// Progress is the replay's position.
type Progress struct {
	Elapsed        time.Duration
	ReplayedIcount uint64
	RecordedIcount uint64
}

// Result is a check's outcome. Reasons say why the verdict is not deterministic.
type Result struct {
	Verdict        Verdict  `json:"verdict"`
	Reasons        []string `json:"reasons,omitempty"`
	End            End      `json:"end"`
	RecordedIcount uint64   `json:"recorded_icount"`
	// ShutdownIcount is the icount at the log's first SHUTDOWN, if any (see
	// Outcome.ShutdownIcount).
	ShutdownIcount uint64      `json:"shutdown_icount,omitempty"`
	ReplayedIcount uint64      `json:"replayed_icount"`
	Console        ConsoleDiff `json:"console"`
	EmittedFrames  uint64      `json:"emitted_frames"`
	// ReplaySeconds is the replay's wall time, from QEMU's start to the end.
	ReplaySeconds float64 `json:"replay_s"`
	// RecordSeconds is the recording's wall time: from the manifest's start to
	// the log's last write.
	RecordSeconds float64           `json:"record_s,omitempty"`
	LogBytes      int64             `json:"log_bytes"`
	LogEvents     uint64            `json:"log_events"`
	LogCounts     map[string]uint64 `json:"log_counts"`
	RecordEngine  string            `json:"record_engine"`
	Engine        string            `json:"engine"`
	Binary        string            `json:"binary"`
	Warnings      []string          `json:"warnings,omitempty"`
	QEMUError     string            `json:"qemu_error,omitempty"`
	// WorkDir is where the replay's files were left ("" when removed).
	WorkDir string `json:"work_dir,omitempty"`
}

// Check replays a finished recording and compares. An error means the check
// could not run (a bad log, missing files, a QEMU that did not start); a
// replay that runs and goes wrong is a Result with verdict diverged or
// stalled. The replay's QEMU is gone when Check returns.
func Check(ctx context.Context, cfg Config) (res Result, err error) {
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	if cfg.PollEvery <= 0 {
		cfg.PollEvery = DefaultPollEvery
	}
	if cfg.QEMUImg == "" {
		cfg.QEMUImg = "qemu-img"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	rec := cfg.Recording
	m := rec.Manifest
	var pin *unix.CPUSet
	if cfg.CPUs != "" {
		set, err := ParseCPUList(cfg.CPUs)
		if err != nil {
			return res, fmt.Errorf("rrcheck: %w", err)
		}
		pin = &set
	}
	if err := m.validate(); err != nil {
		return res, fmt.Errorf("rrcheck: %w", err)
	}
	if err := m.ArgsMatch(); err != nil {
		return res, fmt.Errorf("rrcheck: %w", err)
	}
	if err := m.CheckFiles(); err != nil {
		return res, fmt.Errorf("rrcheck: the replay would boot other files than the recording: %w", err)
	}
	sum, err := checkLog(rec.Log)
	if err != nil {
		return res, err
	}
	res.RecordedIcount, res.LogBytes, res.LogEvents = sum.Icount, sum.Bytes, sum.Events
	if sum.SawShutdown {
		res.ShutdownIcount = sum.ShutdownIcount
	}
	res.LogCounts = map[string]uint64{}
	for k, n := range sum.Counts {
		if n > 0 {
			res.LogCounts[replay.Kind(k).String()] = n
		}
	}
	if st, err := os.Stat(rec.Log); err == nil && !m.Started.IsZero() {
		res.RecordSeconds = st.ModTime().Sub(m.Started).Seconds()
	}
	recConsole, err := readConsole(rec.Console, m.Config.ConsoleLog != "")
	if err != nil {
		return res, err
	}
	if len(rec.DiskCopies) != len(m.Config.Disks) {
		return res, fmt.Errorf("rrcheck: %d disk copies for the recording's %d disks", len(rec.DiskCopies), len(m.Config.Disks))
	}
	for i, p := range rec.DiskCopies {
		if p == "" {
			return res, fmt.Errorf("rrcheck: disk %d (%s) has no pre-record copy: the replay needs the image as it was when recording started (run the VM with --keep-disk-copy)", i, m.Config.Disks[i].Path)
		}
		if st, err := os.Stat(p); err != nil {
			return res, fmt.Errorf("rrcheck: disk %d pre-record copy: %w", i, err)
		} else if !st.Mode().IsRegular() {
			return res, fmt.Errorf("rrcheck: disk %d pre-record copy %s is not a regular file", i, p)
		}
	}

	binary := cfg.Binary
	if binary == "" {
		binary = m.Binary
	}
	eng, err := qemu.DetectEngine(ctx, binary)
	if err != nil {
		return res, fmt.Errorf("rrcheck: %w", err)
	}
	res.RecordEngine, res.Engine, res.Binary = m.Engine, eng.Name, eng.Binary
	if m.Engine != "" && eng.Name != m.Engine {
		if cfg.Binary == "" {
			return res, fmt.Errorf("rrcheck: recorded on %q but %s is now %q: a replay needs the QEMU build that recorded (pass another binary to replay on it anyway)", m.Engine, eng.Binary, eng.Name)
		}
		res.Warnings = append(res.Warnings, fmt.Sprintf("replaying on %q, recorded on %q: a different engine may diverge for its own reasons", eng.Name, m.Engine))
	}

	work := cfg.WorkDir
	if work == "" {
		if work, err = os.MkdirTemp("", "ftvmd-rrcheck-"); err != nil {
			return res, fmt.Errorf("rrcheck: work dir: %w", err)
		}
	} else if err := os.MkdirAll(work, 0o700); err != nil {
		return res, fmt.Errorf("rrcheck: work dir: %w", err)
	}
	defer func() {
		// A temporary directory stays only to show what went wrong in a replay
		// (its console and QEMU's output); an error carries its own story.
		keep := cfg.WorkDir != "" || (err == nil && (cfg.KeepWorkDir || res.Verdict != Deterministic))
		if keep {
			res.WorkDir = work
			return
		}
		if rerr := os.RemoveAll(work); rerr != nil {
			log.Warn("remove rrcheck work dir", "dir", work, "err", rerr)
		}
	}()

	// QEMU runs in the work directory: a log path relative to ours names
	// nothing there (`ftvmd rr check .` found no log.rr).
	logPath, err := filepath.Abs(rec.Log)
	if err != nil {
		return res, fmt.Errorf("rrcheck: log: %w", err)
	}
	paths := ReplayPaths{Log: logPath, Work: work, Binary: eng.Binary}
	for i, p := range rec.DiskCopies {
		ov := filepath.Join(work, fmt.Sprintf("disk%d.overlay.qcow2", i))
		if err := makeOverlay(ctx, cfg.QEMUImg, p, ov); err != nil {
			return res, err
		}
		paths.Overlays = append(paths.Overlays, ov)
	}
	var sink *frameSink
	if n := m.Config.NIC; n != nil {
		if n.TapName != "" {
			paths.Tap = fmt.Sprintf("ftrc%d", os.Getpid()%100000000)
			if _, err := netbuf.CreateTap(paths.Tap, ""); err != nil {
				return res, fmt.Errorf("rrcheck: the recording's NIC is a tap, so the replay needs one: %w", err)
			}
			defer func() {
				if derr := netbuf.DeleteTap(paths.Tap); derr != nil {
					log.Warn("remove replay tap", "tap", paths.Tap, "err", derr)
				}
			}()
		} else {
			if sink, err = newFrameSink(filepath.Join(work, ReplayNetSink)); err != nil {
				return res, err
			}
			defer sink.close()
		}
	}
	rcfg, err := ReplayConfig(m.Config, paths)
	if err != nil {
		return res, err
	}
	qlog, err := os.OpenFile(filepath.Join(work, "qemu.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return res, fmt.Errorf("rrcheck: %w", err)
	}
	defer qlog.Close()
	tail := &tailBuffer{max: 4096}
	out := io.MultiWriter(qlog, tail)
	mach, err := qemu.New(rcfg, qemu.WithLogger(log), qemu.WithStdout(out), qemu.WithStderr(out))
	if err != nil {
		return res, fmt.Errorf("rrcheck: %w", err)
	}
	t0 := time.Now()
	o := Outcome{RecordedIcount: sum.Icount, ShutdownIcount: res.ShutdownIcount}
	if err := mach.Start(ctx); err != nil {
		if !errors.Is(err, qemu.ErrExited) {
			return res, fmt.Errorf("rrcheck: start the replay: %w (QEMU said: %s)", err, tail.lastLines(3))
		}
		// QEMU refused the log or the machine at once: that is the replay's answer.
		o.End, o.ExitErr = EndExited, err.Error()
	} else {
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if serr := mach.Stop(sctx, 2*time.Second); serr != nil {
				log.Warn("stop replaying qemu", "err", serr)
			}
		}()
		if pin != nil {
			if err := pinProcess(mach.PID(), *pin); err != nil {
				return res, fmt.Errorf("rrcheck: %w", err)
			}
		}
		if err := follow(ctx, mach, cfg, &o); err != nil {
			return res, err
		}
	}
	res.ReplaySeconds = time.Since(t0).Seconds()
	if o.End == EndExited {
		<-mach.Exited()
		if o.ExitErr == "" {
			if ee := mach.ExitErr(); ee != nil {
				o.ExitErr = ee.Error()
			}
		}
	}
	o.QEMUError = tail.lastLines(3)
	var repConsole []byte
	if m.Config.ConsoleLog != "" {
		if repConsole, err = os.ReadFile(rcfg.ConsoleLog); err != nil && !errors.Is(err, os.ErrNotExist) {
			return res, fmt.Errorf("rrcheck: replay console: %w", err)
		}
	}
	o.Console = CompareConsoles(recConsole, repConsole)
	if sink != nil {
		o.Emitted = sink.count()
	}
	res.End, res.ReplayedIcount, res.Console, res.EmittedFrames = o.End, o.ReplayedIcount, o.Console, o.Emitted
	if o.End != EndLogEnd {
		res.QEMUError = o.QEMUError
	}
	res.Verdict, res.Reasons = Decide(o)
	return res, nil
}

// follow polls the replay until it reaches the log's end, exits or stalls.
func follow(ctx context.Context, mach *qemu.Machine, cfg Config, o *Outcome) error {
	tick := time.NewTicker(cfg.PollEvery)
	defer tick.Stop()
	start := time.Now()
	lastMove, lastReport := start, start
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("rrcheck: replay at icount %d of %d: %w", o.ReplayedIcount, o.RecordedIcount, ctx.Err())
		case <-mach.Exited():
			o.End = EndExited
			return nil
		case <-tick.C:
		}
		now := time.Now()
		if ri, err := mach.QueryReplay(ctx); err == nil {
			if ri.Icount != o.ReplayedIcount {
				o.ReplayedIcount, lastMove = ri.Icount, now
			}
		} else if ctx.Err() != nil {
			continue // reported at the top
		}
		st, err := mach.Status(ctx)
		if err == nil {
			o.Status = st
		}
		if st == "shutdown" {
			// Paused at the logged SHUTDOWN: read the final icount.
			if ri, err := mach.QueryReplay(ctx); err == nil {
				o.ReplayedIcount = ri.Icount
			}
			o.End = EndLogEnd
			return nil
		}
		if d := now.Sub(lastMove); d >= cfg.StallTimeout {
			o.End, o.Stall = EndStalled, d
			o.HostWaits = lastingHostWaits(ctx, mach.PID())
			return nil
		}
		if cfg.Progress != nil && now.Sub(lastReport) >= time.Second {
			lastReport = now
			cfg.Progress(Progress{Elapsed: now.Sub(start), ReplayedIcount: o.ReplayedIcount, RecordedIcount: o.RecordedIcount})
		}
	}
}

// lastingHostWaits is HostWaits on /proc seen twice, 200 ms apart: a thread
// caught once in a short disk read is no diagnosis of a 20 s stall.
func lastingHostWaits(ctx context.Context, pid int) []string {
	first := HostWaits(os.DirFS("/proc"), pid)
	if len(first) == 0 {
		return nil
	}
	select {
	case <-ctx.Done():
		return nil
	case <-time.After(200 * time.Millisecond):
	}
	var both []string
	for _, w := range HostWaits(os.DirFS("/proc"), pid) {
		if slices.Contains(first, w) {
			both = append(both, w)
		}
	}
	return both
}

// checkLog refuses a log QEMU could not replay to its end, with the reason.
func checkLog(path string) (replay.Summary, error) {
	if n, err := logspace.FreedPrefix(path); err != nil {
		return replay.Summary{}, fmt.Errorf("rrcheck: log: %w", err)
	} else if n > 0 {
		return replay.Summary{}, fmt.Errorf("rrcheck: log %s lost its first %d bytes to bounded logs (freed once the backup acknowledged them, or beyond the agent's --unprotected-log-keep): a replay needs the whole log; run or protect the VM with --keep-log", path, n)
	}
	f, err := os.Open(path)
	if err != nil {
		return replay.Summary{}, fmt.Errorf("rrcheck: log: %w", err)
	}
	defer f.Close()
	s, err := replay.Summarize(f)
	switch {
	case err != nil:
		return s, fmt.Errorf("rrcheck: log %s: %w", path, err)
	case s.Version == 0:
		return s, fmt.Errorf("rrcheck: log %s has no version in its header: QEMU is still recording it or was killed (stop the VM first: ftvmd stop <vm>)", path)
	case s.Truncated:
		return s, fmt.Errorf("rrcheck: log %s ends inside an event at offset %d (%d bytes after the last whole event): truncated", path, s.Boundary, s.Bytes-s.Boundary)
	case !s.SawEnd:
		return s, fmt.Errorf("rrcheck: log %s has no END event after its %d events (%d bytes): truncated", path, s.Events, s.Bytes)
	}
	return s, nil
}

func readConsole(path string, want bool) ([]byte, error) {
	if !want {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("rrcheck: recorded console: %w", err)
	}
	return b, nil
}

func makeOverlay(ctx context.Context, qemuImg, base, overlay string) error {
	abs, err := filepath.Abs(base)
	if err != nil {
		return fmt.Errorf("rrcheck: %w", err)
	}
	out, err := exec.CommandContext(ctx, qemuImg, "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", abs, overlay).CombinedOutput()
	if err != nil {
		return fmt.Errorf("rrcheck: overlay on %s: %w: %s", base, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// frameSink is the socket a replaying dgram NIC sends to. A replay sends
// nothing; what arrives is counted and dropped.
type frameSink struct {
	conn *net.UnixConn
	n    atomic.Uint64
	wg   sync.WaitGroup
}

func newFrameSink(path string) (*frameSink, error) {
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, fmt.Errorf("rrcheck: network sink: %w", err)
	}
	s := &frameSink{conn: conn}
	s.wg.Add(1)
	go func() { // owned by the sink: ends when close closes the socket
		defer s.wg.Done()
		buf := make([]byte, 65536)
		for {
			if _, _, err := conn.ReadFrom(buf); err != nil {
				return
			}
			s.n.Add(1)
		}
	}()
	return s, nil
}

func (s *frameSink) count() uint64 { return s.n.Load() }

func (s *frameSink) close() {
	_ = s.conn.Close()
	s.wg.Wait()
	_ = os.Remove(s.conn.LocalAddr().String())
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

// lastLines returns up to n last non-empty lines, joined with " | ".
func (t *tailBuffer) lastLines(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	lines := strings.Split(string(t.b), "\n")
	for i := len(lines) - 1; i >= 0 && len(out) < n; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			out = append([]string{l}, out...)
		}
	}
	return strings.Join(out, " | ")
}

// String renders a result for people: a few lines, the verdict first.
func (r Result) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "verdict: %s\n", strings.ToUpper(string(r.Verdict)))
	for _, x := range r.Reasons {
		fmt.Fprintf(&b, "  - %s\n", x)
	}
	fmt.Fprintf(&b, "icount: recorded %d, replayed %d (%s)", r.RecordedIcount, r.ReplayedIcount, r.End)
	if r.ShutdownIcount > 0 {
		fmt.Fprintf(&b, "; shutdown logged at %d", r.ShutdownIcount)
	}
	b.WriteString("\n")
	if r.Console.Identical {
		fmt.Fprintf(&b, "console: identical (%d bytes)\n", r.Console.RecordBytes)
	} else {
		fmt.Fprintf(&b, "console: differ at byte %d (record %d bytes, replay %d)\n  record: %s\n  replay: %s\n",
			r.Console.FirstDiff, r.Console.RecordBytes, r.Console.ReplayBytes, strconv.Quote(r.Console.RecordExcerpt), strconv.Quote(r.Console.ReplayExcerpt))
	}
	fmt.Fprintf(&b, "log: %d bytes, %d events", r.LogBytes, r.LogEvents)
	if n := r.LogCounts["ASYNC_NET"]; n > 0 {
		fmt.Fprintf(&b, ", %d network frames in", n)
	}
	if n := r.LogCounts["ASYNC_BLOCK"]; n > 0 {
		fmt.Fprintf(&b, ", %d block completions", n)
	}
	b.WriteString("\n")
	fmt.Fprintf(&b, "wall time: replay %.1f s", r.ReplaySeconds)
	if r.RecordSeconds > 0 {
		fmt.Fprintf(&b, ", record %.1f s", r.RecordSeconds)
	}
	fmt.Fprintf(&b, "\nengine: %s (recorded on %s)\n", r.Engine, r.RecordEngine)
	if r.EmittedFrames > 0 {
		fmt.Fprintf(&b, "emitted frames: %d\n", r.EmittedFrames)
	}
	for _, w := range r.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	if r.QEMUError != "" {
		fmt.Fprintf(&b, "qemu said: %s\n", r.QEMUError)
	}
	if r.WorkDir != "" {
		fmt.Fprintf(&b, "replay files kept in %s\n", r.WorkDir)
	}
	return b.String()
}
