package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/replay"
)

// These tests run ftvmd's QEMU build with the log-stream patch (Engine.LogStream):
// FTVMD_TEST_ENGINE names its qemu-system-x86_64, otherwise the installed build
// (EngineDir). Without such a build they skip, or fail under FTVMD_REQUIRE_QEMU=1.

// streamEngine returns the engine under test.
func streamEngine(t *testing.T) Engine {
	t.Helper()
	requireQEMU(t, "gcc")
	bin := os.Getenv("FTVMD_TEST_ENGINE")
	e, err := DetectEngine(context.Background(), bin)
	if err == nil && !e.LogStream {
		err = fmt.Errorf("%s (%s) does not write its log as a stream (patches %v)", e.Binary, e.Name, e.Patches)
	}
	if err != nil {
		if os.Getenv("FTVMD_REQUIRE_QEMU") == "1" {
			t.Fatalf("no QEMU with the log-stream patch and FTVMD_REQUIRE_QEMU=1: %v (build it: bash qemu/engine/build.sh)", err)
		}
		t.Skipf("no QEMU with the log-stream patch: %v", err)
	}
	t.Logf("engine under test: %s (%s)", e.Name, e.Binary)
	return e
}

// stockEngine is a QEMU without the patch, the control the tests compare with.
func stockEngine(t *testing.T) Engine {
	t.Helper()
	e, err := DetectEngine(context.Background(), DefaultBinary)
	if err != nil {
		t.Skipf("no distribution QEMU to compare with: %v", err)
	}
	if e.LogStream {
		t.Skipf("%s streams its log too: nothing to compare with", e.Binary)
	}
	return e
}

func requireRootMount(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("FTVMD_REQUIRE_ROOT") == "1" {
		t.Fatal("needs root to mount a small file system (FTVMD_REQUIRE_ROOT=1)")
	}
	t.Skip("needs root to mount a small file system")
}

// buildProbe compiles testdata/sendprobe.c into dir.
func buildProbe(t *testing.T, dir string) string {
	t.Helper()
	out := filepath.Join(dir, "sendprobe.so")
	cmd := exec.Command("gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", out, "testdata/sendprobe.c", "-ldl", "-lpthread")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build send probe: %v\n%s", err, b)
	}
	return out
}

// probeSend is one datagram QEMU sent: the log's logical length (file plus
// stdio buffer) and the file's length at that moment.
type probeSend struct {
	fd, len   int
	pos, size int64
}

// probeStale is the probe's staleness report: of samples taken every
// FTVMD_PROBE_STALE_US, how many found log bytes not yet in the file, each
// time bytes reached the file 1 ms or more after the probe first saw them, and
// how many times the thread it took for the flush thread flushed the log.
type probeStale struct {
	samples, stale, flushes int
	episodes                []staleEpisode
}

// staleEpisode: log bytes first seen at start reached the file dur later (the
// sampler's clock); they were out for held at least, waited of which the
// flush thread was kept off the CPU (testdata/sendprobe.c).
type staleEpisode struct {
	start        time.Time
	dur          time.Duration
	held, waited time.Duration
}

// engine is how long the engine itself kept the episode's bytes out of the
// file: what a busy host's scheduler added is not its doing.
func (e staleEpisode) engine() time.Duration { return max(e.held-e.waited, 0) }

// engineLongest is the longest engine() of the episodes that ended within
// [from, to] (ones the stop ended are the stop's).
func (p *probeStale) engineLongest(from, to time.Time) (longest staleEpisode) {
	for _, e := range p.episodes {
		if end := e.start.Add(e.dur); end.Before(from) || end.After(to) {
			continue
		}
		if e.engine() > longest.engine() {
			longest = e
		}
	}
	return longest
}

// longest is how long, at most, log bytes stayed out of the file within
// [from, to]: episodes are clipped to the window.
func (p *probeStale) longest(from, to time.Time) time.Duration {
	var l time.Duration
	for _, e := range p.episodes {
		begin, end := e.start, e.start.Add(e.dur)
		if begin.Before(from) {
			begin = from
		}
		if end.After(to) {
			end = to
		}
		l = max(l, end.Sub(begin))
	}
	return l
}

// probeReader collects the probe's lines until its pipe closes (QEMU exits).
type probeReader struct {
	mu       sync.Mutex
	sends    []probeSend
	episodes []staleEpisode
	stale    *probeStale // set by the summary at the log's close
	done     chan struct{}
}

func readProbe(r io.ReadCloser) *probeReader {
	p := &probeReader{done: make(chan struct{})}
	go func() { // owned: ends when the last writer (QEMU) closes the pipe
		defer close(p.done)
		defer r.Close()
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			var s probeSend
			var samples, stale, flushes int
			var at, us, held, waited int64
			line := sc.Text()
			p.mu.Lock()
			if _, err := fmt.Sscanf(line, "send %d %d %d %d", &s.fd, &s.len, &s.pos, &s.size); err == nil {
				p.sends = append(p.sends, s)
			} else if _, err := fmt.Sscanf(line, "stale_ep %d %d %d %d", &at, &us, &held, &waited); err == nil {
				p.episodes = append(p.episodes, staleEpisode{start: time.Unix(0, at), dur: time.Duration(us) * time.Microsecond,
					held: time.Duration(held) * time.Microsecond, waited: time.Duration(waited) * time.Microsecond})
			} else if _, err := fmt.Sscanf(line, "stale %d %d %d", &samples, &stale, &flushes); err == nil {
				p.stale = &probeStale{samples: samples, stale: stale, flushes: flushes, episodes: p.episodes}
			}
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *probeReader) all() []probeSend {
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sends
}

// staleness is the summary QEMU's closing of the log produced (nil if none).
func (p *probeReader) staleness() *probeStale {
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stale
}

// startProbed starts cfg with the send probe preloaded (env adds probe
// settings); the probe's report is complete once the machine has exited.
func startProbed(t *testing.T, cfg Config, probe string, env ...string) (*Machine, *probeReader) {
	t.Helper()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	m := startMachine(t, cfg, WithExtraFiles(pw),
		WithEnv(append([]string{"LD_PRELOAD=" + probe, "FTVMD_RRFILE=" + cfg.RRFile, "FTVMD_PROBE_FD=3"}, env...)...))
	pw.Close()
	return m, readProbe(pr)
}

// arpWho is an ARP request for ip from the test's MAC: the guest answers each
// one with a frame of its own.
func arpWho(ip net.IP) []byte {
	src := net.HardwareAddr{0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc}
	f := make([]byte, 0, 42)
	f = append(f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	f = append(f, src...)
	f = append(f, 0x08, 0x06)             // ARP
	f = append(f, 0, 1, 8, 0, 6, 4, 0, 1) // Ethernet/IPv4, request
	f = append(f, src...)
	f = append(f, 10, 77, 0, 1)
	f = append(f, 0, 0, 0, 0, 0, 0)
	return append(f, ip.To4()...)
}

// guestNIC is the test's end of a guest's datagram NIC: it asks the guest
// (default address 10.77.0.100) for ARP replies and counts the frames it sends.
type guestNIC struct {
	sock   *net.UnixConn
	qemu   *net.UnixAddr
	frames chan int // length of each frame received
}

func newGuestNIC(t *testing.T, dir string) (*NIC, *guestNIC) {
	t.Helper()
	nic := &NIC{MAC: "52:54:00:12:34:60", SocketPath: filepath.Join(dir, "agent.sock"), LocalPath: filepath.Join(dir, "qemu.sock")}
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: nic.SocketPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	g := &guestNIC{sock: sock, qemu: &net.UnixAddr{Name: nic.LocalPath, Net: "unixgram"}, frames: make(chan int, 4096)}
	go func() { // owned: ends when the test closes the socket
		buf := make([]byte, 65536)
		for {
			n, err := sock.Read(buf)
			if err != nil {
				close(g.frames)
				return
			}
			select {
			case g.frames <- n:
			default:
			}
		}
	}()
	t.Cleanup(func() { sock.Close() })
	return nic, g
}

// ask sends one ARP request to the guest (errors are ignored: QEMU's socket
// appears only once it has started).
func (g *guestNIC) ask() { _, _ = g.sock.WriteToUnix(arpWho(net.IPv4(10, 77, 0, 100)), g.qemu) }

// TestLogStreamFlushBeforeSend: every frame the guest sends leaves QEMU only
// after the log of everything before it is in the file. The send probe reads,
// at each datagram send, the log's logical length and the file's length; with
// the stream engine they are equal at every send, with the stock engine (no
// flush library) they are not.
func TestLogStreamFlushBeforeSend(t *testing.T) {
	eng := streamEngine(t)
	stock := stockEngine(t)
	dir := shortDir(t)
	probe := buildProbe(t, dir)
	if k, _ := guestFiles(t); k == "" {
		t.Skip("needs the lab guest (build/guest) to answer ARP")
	}

	run := func(name string, e Engine) []probeSend {
		sub := filepath.Join(dir, name)
		if err := os.Mkdir(sub, 0o700); err != nil {
			t.Fatal(err)
		}
		cfg := baseConfig(t, sub, name, ModeRecord)
		// No flush library for either engine (LogStream only tells Validate
		// not to insist on one): the stock run is the control.
		cfg.Binary, cfg.LogStream = e.Binary, true
		var g *guestNIC
		cfg.NIC, g = newGuestNIC(t, sub)
		m, pr := startProbed(t, cfg, probe)
		frames := 0
		deadline := time.After(90 * time.Second)
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for frames < 200 {
			select {
			case <-tick.C:
				g.ask()
			case _, ok := <-g.frames:
				if !ok {
					t.Fatal("guest NIC socket closed")
				}
				frames++
			case <-deadline:
				t.Fatalf("%s: the guest sent %d frames in 90 s", name, frames)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := m.Stop(ctx, 5*time.Second); err != nil {
			t.Fatalf("stop: %v", err)
		}
		sends := pr.all()
		t.Logf("%s (%s): %d frames received, %d datagram sends probed", name, e.Name, frames, len(sends))
		if len(sends) < frames {
			t.Fatalf("%s: the probe saw %d sends for %d frames (not loaded?)", name, len(sends), frames)
		}
		return sends
	}

	stale := func(sends []probeSend) (n int, worst int64) {
		for _, s := range sends {
			if s.pos != s.size {
				n++
				worst = max(worst, s.pos-s.size)
			}
		}
		return n, worst
	}
	sn, sw := stale(run("stock", stock))
	t.Logf("stock engine: %d sends with log bytes still buffered (up to %d bytes)", sn, sw)
	if sn == 0 {
		t.Fatal("the stock engine left no log bytes buffered at any send: the probe cannot tell")
	}
	sends := run("stream", eng)
	if n, w := stale(sends); n != 0 {
		t.Errorf("stream engine: %d of %d sends left the file behind the log (up to %d bytes)", n, len(sends), w)
	}
}

// TestLogStreamFresh: a reader of a log being recorded sees a valid header at
// once, and log bytes stay out of the file for about a millisecond at most
// while the guest idles, without the flush library. The send probe samples the
// log's logical length against the file's every 200 us. The stock engine's file
// has no version until exit, grows in 4 KiB blocks and lags for seconds.
//
// It holds on a busy host: the test waits for the firmware to go idle (its
// console says so) rather than for a time, compares the two engines over the
// same growth of the log rather than the same seconds, and bounds the time
// the engine kept bytes out, not counting the time its flush thread waited
// for a CPU (the probe reads it from the kernel's schedstat). Counted in wall
// time, a flush thread at nice 19 on a loaded host was 49-245 ms late.
func TestLogStreamFresh(t *testing.T) {
	eng := streamEngine(t)
	stock := stockEngine(t)
	dir := shortDir(t)
	probe := buildProbe(t, dir)
	type result struct {
		sizes   sizeStats
		stale   *probeStale
		longest time.Duration // while the VM ran: from QMP's answer to the stop
		engine  staleEpisode  // the longest the engine kept bytes out then
		header  error
	}
	run := func(name string, e Engine) result {
		cfg := baseConfig(t, dir, name, ModeRecord)
		// BIOS only: an idle firmware logs clock events steadily at a few
		// KB/s (see TestFlushLibraryKeepsLogFresh).
		cfg.Kernel, cfg.Initrd, cfg.Append = "", "", ""
		cfg.Binary, cfg.LogStream = e.Binary, true // no flush library (see above)
		m, pr := startProbed(t, cfg, probe, "FTVMD_PROBE_STALE_US=200")
		running := time.Now() // QMP answers once the machine is built
		var r result
		hdr := make([]byte, replay.HeaderSize)
		f, err := os.Open(cfg.RRFile)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, rerr := io.ReadFull(f, hdr)
		r.header = errors.Join(rerr, replay.CheckHeader(hdr))
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		// Past the firmware's first burst, which writes large arrays past
		// the stdio buffer (the stock engine's sizes would not be aligned):
		// SeaBIOS has found nothing to boot and idles.
		if err := waitConsole(ctx, cfg.ConsoleLog, "No bootable device."); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// One 4 KiB block of the stock engine's stdio buffer.
		sizes, err := sampleGrowth(ctx, cfg.RRFile, 4096)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r.sizes = statsOf(sizes)
		stopping := time.Now()
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if err := m.Stop(sctx, 5*time.Second); err != nil {
			t.Errorf("stop: %v", err)
		}
		if r.stale = pr.staleness(); r.stale == nil {
			t.Fatalf("%s: no staleness report from the probe (not loaded?)", name)
		}
		r.longest = r.stale.longest(running, stopping)
		r.engine = r.stale.engineLongest(running, stopping)
		t.Logf("%s (%s): header as QMP answers: %v; sizes %+v; stale in %d of %d samples; longest while running %s; "+
			"longest by the engine %s (out %s, flush thread off the CPU %s of it; %d flushes by it)",
			name, e.Name, r.header, r.sizes, r.stale.stale, r.stale.samples, r.longest,
			r.engine.engine(), r.engine.held, r.engine.waited, r.stale.flushes)
		return r
	}
	without := run("stock", stock)
	if !errors.Is(without.header, replay.ErrRecording) {
		t.Errorf("stock engine's header while recording: %v, want ErrRecording", without.header)
	}
	with := run("stream", eng)
	if with.header != nil {
		t.Errorf("stream engine's header while recording: %v, want a valid header", with.header)
	}
	if !mostlyAligned(without.sizes) {
		t.Errorf("stock: %d of %d samples were not 12+k*4096: the test cannot tell flushed from unflushed", without.sizes.unaligned, without.sizes.samples)
	}
	if without.longest < time.Second {
		t.Errorf("stock: log bytes stayed out of the file for %s at most: the probe cannot tell", without.longest)
	}
	if with.sizes.unaligned < with.sizes.samples/2 {
		t.Errorf("stream: only %d of %d samples were off 4 KiB block boundaries", with.sizes.unaligned, with.sizes.samples)
	}
	if with.sizes.changes < 10*max(without.sizes.changes, 1) {
		t.Errorf("stream: the size changed %d times while the log grew by 4 KiB, stock %d: not continuous", with.sizes.changes, without.sizes.changes)
	}
	// The waits subtracted are the flush thread's: the thread the probe took
	// for it must be the one flushing.
	if with.stale.flushes == 0 {
		t.Fatalf("stream: the thread the probe took for the flush thread never flushed the log: its waits say nothing")
	}
	// The flush thread runs every 1 ms. A flush that waited for the vCPU to
	// stop executing took 60-300 ms here, the stock engine over a second.
	if e := with.engine; e.engine() > 20*time.Millisecond {
		t.Errorf("stream: the engine kept log bytes out of the file for %s while the VM ran (out %s, its flush thread off the CPU %s of it)",
			e.engine(), e.held, e.waited)
	}
}

// waitConsole waits until the console log at path holds text.
func waitConsole(ctx context.Context, path, text string) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, err := os.ReadFile(path); err == nil && strings.Contains(string(b), text) {
			return nil
		}
		select {
		case <-ctx.Done():
			b, _ := os.ReadFile(path)
			return fmt.Errorf("console %s never said %q: %w (it holds %q)", path, text, ctx.Err(), b)
		case <-tick.C:
		}
	}
}

// sampleGrowth records the file's size every 1 ms until it has grown by grow
// bytes from the first sample.
func sampleGrowth(ctx context.Context, path string, grow int64) ([]int64, error) {
	sizes := []int64{fileSize(path)}
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for sizes[len(sizes)-1]-sizes[0] < grow {
		select {
		case <-ctx.Done():
			return sizes, fmt.Errorf("%s grew by %d of %d bytes: %w", path, sizes[len(sizes)-1]-sizes[0], grow, ctx.Err())
		case <-t.C:
		}
		sizes = append(sizes, fileSize(path))
	}
	return sizes, nil
}

// TestLogStreamFullDisk records the lab guest onto a small tmpfs and, once the
// guest answers the test's ARP requests, fills the file system but for a few
// hundred KiB, so the log runs out of room while the guest transmits. QEMU must
// report the failed write (REPLAY_WRITE_ERROR, run state io-error), refuse to
// continue, write nothing more even once there is room again, let no frame out
// ahead of its log, and leave a log that parses cleanly up to where it stopped.
func TestLogStreamFullDisk(t *testing.T) {
	eng := streamEngine(t)
	requireRootMount(t)
	if k, _ := guestFiles(t); k == "" {
		t.Skip("needs the lab guest (build/guest) to answer ARP")
	}
	dir := shortDir(t)
	fs := filepath.Join(dir, "fs")
	if err := os.Mkdir(fs, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=8m,mode=0700", "ftvmd-test", fs).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", fs).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", fs, err, out)
		}
	})
	freeBytes := func() int64 {
		var st syscall.Statfs_t
		if err := syscall.Statfs(fs, &st); err != nil {
			t.Fatal(err)
		}
		return int64(st.Bavail) * st.Bsize
	}

	cfg := baseConfig(t, dir, "full", ModeRecord)
	cfg.RRFile = filepath.Join(fs, "full.rr")
	cfg.Binary, cfg.LogStream = eng.Binary, true
	var g *guestNIC
	cfg.NIC, g = newGuestNIC(t, dir)
	probe := buildProbe(t, dir)
	m, pr := startProbed(t, cfg, probe)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	waitErr := make(chan error, 1)
	go func() { waitErr <- m.WaitIOError(ctx) }()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	// ARP traffic keeps the guest transmitting; once it answers, leave the log
	// little room.
	const room = 64 << 10
	filler := filepath.Join(fs, "filler")
	var before, after int // frames from the guest before and after the fill
	var filledAt time.Time
	var err error
wait:
	for {
		select {
		case err = <-waitErr:
			break wait
		case <-tick.C:
			g.ask()
		case _, ok := <-g.frames:
			if !ok {
				t.Fatal("guest NIC socket closed")
			}
			if filledAt.IsZero() {
				before++
			} else {
				after++
			}
			if before == 20 && filledAt.IsZero() {
				if err := os.WriteFile(filler, make([]byte, max(freeBytes()-room, 0)), 0o600); err != nil {
					t.Fatalf("fill the file system: %v", err)
				}
				filledAt = time.Now()
			}
		}
	}
	var le *LogWriteError
	if !errors.As(err, &le) {
		t.Fatalf("WaitIOError = %v, want a *LogWriteError", err)
	}
	if filledAt.IsZero() {
		t.Fatalf("the log failed (%v) before the guest answered ARP", le)
	}
	stopped := fileSize(cfg.RRFile)
	t.Logf("log write failed %s after the fill: %+v; log %d bytes, %d free; frames from the guest: %d before the fill, %d after",
		time.Since(filledAt).Round(time.Millisecond), *le, stopped, freeBytes(), before, after)
	if !le.NoSpace || le.File != cfg.RRFile || !strings.Contains(le.Reason, "No space") {
		t.Errorf("event = %+v, want nospace for %s", *le, cfg.RRFile)
	}
	if after == 0 {
		t.Errorf("the guest sent no frame between the fill and the failure: the test did not fail a transmitting guest")
	}
	if free := freeBytes(); free >= 64<<10 {
		t.Errorf("log stopped at %d bytes with %d free: the file system was not full", stopped, free)
	}

	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	var state string
	for state != RunStateIOError { // the STOP follows the event at once
		if state, err = m.Status(sctx); err != nil {
			t.Fatalf("query-status: %v", err)
		}
		if state != RunStateIOError {
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := m.Cont(sctx); err == nil || !strings.Contains(err.Error(), "log could not be written") {
		t.Errorf("cont after the failure: %v, want a refusal", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	for range 20 { // several flush periods with room to write, and traffic
		g.ask()
		time.Sleep(10 * time.Millisecond)
	}
	if n := fileSize(cfg.RRFile); n != stopped {
		t.Errorf("the log grew from %d to %d bytes after the failure", stopped, n)
	}
	if err := m.Stop(sctx, 5*time.Second); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if n := fileSize(cfg.RRFile); n != stopped {
		t.Errorf("exit wrote to the log after the failure: %d bytes, was %d", n, stopped)
	}
	qlog, _ := os.ReadFile(filepath.Join(dir, "full.log"))
	if !strings.Contains(string(qlog), "No space left on device") {
		t.Errorf("QEMU's output does not report the failure:\n%s", qlog)
	}

	// Every frame left after its log was in the file; none after the failure.
	sends := pr.all()
	for _, s := range sends {
		if s.pos != s.size {
			t.Errorf("a frame left with %d log bytes buffered (log %d, file %d)", s.pos-s.size, s.pos, s.size)
			break
		}
	}
	t.Logf("%d frames left QEMU, the last with the file at %d bytes", len(sends), sends[len(sends)-1].size)

	// The log parses cleanly up to where it stopped: a valid header, whole
	// events, and at most one event cut short by the failed write.
	f, err := os.Open(cfg.RRFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	hdr := make([]byte, replay.HeaderSize)
	if _, err := io.ReadFull(f, hdr); err != nil {
		t.Fatal(err)
	}
	if err := replay.CheckHeader(hdr); err != nil {
		t.Errorf("header: %v", err)
	}
	d := replay.NewDecoder(f, replay.HeaderSize)
	events, nets, largest := 0, 0, 0
	for {
		ev, err := d.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, replay.ErrTruncated) {
				t.Fatalf("log does not parse at offset %d after %d events: %v", d.Offset(), events, err)
			}
			t.Logf("log: %d events (%d network frames received) to offset %d of %d, icount %d, ends with %v",
				events, nets, d.Offset(), stopped, d.Icount(), err)
			break
		}
		events++
		largest = max(largest, ev.Size)
		if ev.Kind == replay.KindAsyncNet {
			nets++
		}
		if ev.Kind == replay.KindEnd {
			t.Errorf("END at offset %d: nothing may be written after a failed write", ev.Offset)
		}
	}
	// What the decoder could not read is one event cut short, no bigger than
	// the network frames (with their headers) the log holds.
	if tail := stopped - d.Offset(); tail > int64(max(largest, 65536+16)) {
		t.Errorf("the parse stopped %d bytes before the end of the log", tail)
	}
}
