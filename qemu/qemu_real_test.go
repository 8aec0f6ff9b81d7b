package qemu

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// requireQEMU skips the test when QEMU is missing, unless
// FTVMD_REQUIRE_QEMU=1, which turns the skip into a failure.
func requireQEMU(t *testing.T, tools ...string) {
	t.Helper()
	for _, bin := range append([]string{DefaultBinary, "qemu-img"}, tools...) {
		if _, err := exec.LookPath(bin); err != nil {
			if os.Getenv("FTVMD_REQUIRE_QEMU") == "1" {
				t.Fatalf("%s not found and FTVMD_REQUIRE_QEMU=1: %v", bin, err)
			}
			t.Skipf("%s not found: %v", bin, err)
		}
	}
}

// shortDir is a temp dir with a short path: unix socket paths are limited
// to 108 bytes and t.TempDir's can be longer.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ftq")
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("FTVMD_TEST_KEEP") == "1" {
		t.Logf("FTVMD_TEST_KEEP=1: keeping %s", d)
		return d
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// buildFlushLib compiles flush/ftflush.c into dir, so tests always run the
// library in this tree.
func buildFlushLib(t *testing.T, dir string) string {
	t.Helper()
	requireQEMU(t, "gcc")
	out := filepath.Join(dir, "libftflush.so")
	cmd := exec.Command("gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", out, "flush/ftflush.c", "-ldl", "-lpthread")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build flush library: %v\n%s", err, b)
	}
	return out
}

// guestFiles returns the lab guest's kernel and initrd when
// <repo>/build/guest holds them; otherwise the VM runs BIOS and iPXE only.
func guestFiles(t *testing.T) (kernel, initrd string) {
	t.Helper()
	k, i := filepath.Join("..", "build", "guest", "vmlinuz"), filepath.Join("..", "build", "guest", "initrd.img")
	if regularFile(k) != nil || regularFile(i) != nil {
		t.Log("no lab guest in build/guest: running BIOS + iPXE only")
		return "", ""
	}
	k, _ = filepath.Abs(k)
	i, _ = filepath.Abs(i)
	return k, i
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func baseConfig(t *testing.T, dir, name string, mode Mode) Config {
	kernel, initrd := guestFiles(t)
	c := Config{
		Name: name, MemoryMB: 256, Mode: mode, IcountShift: 4,
		RRFile:     filepath.Join(dir, name+".rr"),
		QMPSocket:  filepath.Join(dir, name+".qmp"),
		ConsoleLog: filepath.Join(dir, name+".console"),
		Dir:        dir,
	}
	if kernel != "" {
		c.Kernel, c.Initrd, c.Append = kernel, initrd, "console=ttyS0 panic=-1"
	}
	return c
}

func startMachine(t *testing.T, cfg Config, opts ...Opt) *Machine {
	t.Helper()
	m, err := New(cfg, append([]Opt{WithLogger(testLogger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatalf("start %s: %v (see %s)", cfg.Name, err, filepath.Join(cfg.Dir, cfg.Name+".log"))
	}
	t.Cleanup(func() {
		_ = m.Kill()
		<-m.Exited()
	})
	return m
}

func fileSize(path string) int64 {
	st, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return st.Size()
}

// blockAligned reports whether an rr log size is what unflushed stdio
// leaves behind: the header plus whole 4 KiB blocks.
func blockAligned(size int64) bool { return size <= LogHeaderSize || (size-LogHeaderSize)%4096 == 0 }

// mostlyAligned reports whether an unflushed log's sizes were 12+k*4096 but for a
// few samples: a 4 KiB block written at offset 12+k*4096 spans two pages, and a
// sample can see the size after the first page (seen: 1 of 1765).
func mostlyAligned(s sizeStats) bool { return s.unaligned*100 <= s.samples }

// sampleSizes records the file's size every 1 ms for d.
func sampleSizes(path string, d time.Duration) []int64 {
	var sizes []int64
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		<-t.C
		sizes = append(sizes, fileSize(path))
	}
	return sizes
}

type sizeStats struct {
	samples, changes, unaligned int
	first, last                 int64
	maxStall                    int // longest run of identical samples (~ms)
}

func statsOf(sizes []int64) sizeStats {
	s := sizeStats{samples: len(sizes)}
	run := 0
	for i, v := range sizes {
		if !blockAligned(v) {
			s.unaligned++
		}
		if i > 0 && v != sizes[i-1] {
			s.changes++
			run = 0
		} else {
			run++
			s.maxStall = max(s.maxStall, run)
		}
	}
	if len(sizes) > 0 {
		s.first, s.last = sizes[0], sizes[len(sizes)-1]
	}
	return s
}

// TestFlushLibraryKeepsLogFresh records the same BIOS-only VM with and
// without the flush library and samples the log size every 1 ms for 2 s.
func TestFlushLibraryKeepsLogFresh(t *testing.T) {
	requireQEMU(t)
	dir := shortDir(t)
	lib := buildFlushLib(t, dir)
	run := func(name, lib string) sizeStats {
		cfg := baseConfig(t, dir, name, ModeRecord)
		// BIOS only: an idle firmware logs clock events steadily at a
		// few KB/s. A booting kernel logs MB/s, fills 4 KiB blocks in
		// microseconds and writes big arrays past the buffer, which hides
		// the difference.
		cfg.Kernel, cfg.Initrd, cfg.Append = "", "", ""
		cfg.FlushLib = lib
		m, err := New(cfg, WithLogger(testLogger(t)))
		if err != nil {
			t.Fatal(err)
		}
		if lib == "" {
			// Validate rightly refuses record mode without the library.
			m.Handlers = m.Handlers.Remove(ValidateHandlerName)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := m.Start(ctx); err != nil {
			t.Fatal(err)
		}
		defer func() {
			if err := m.Stop(ctx, 5*time.Second); err != nil {
				t.Errorf("stop: %v", err)
			}
		}()
		time.Sleep(500 * time.Millisecond) // past the BIOS's first burst
		s := statsOf(sampleSizes(cfg.RRFile, 2*time.Second))
		t.Logf("%s: %+v (%.1f KB/s)", name, s, float64(s.last-s.first)/2/1024)
		return s
	}
	without := run("nolib", "")
	with := run("lib", lib)

	if !mostlyAligned(without) {
		t.Errorf("without the library %d of %d samples were not 12+k*4096: the test cannot tell flushed from unflushed", without.unaligned, without.samples)
	}
	if with.unaligned < with.samples/2 {
		t.Errorf("with the library only %d of %d samples were off 4 KiB block boundaries", with.unaligned, with.samples)
	}
	if with.maxStall*4 > without.maxStall {
		t.Errorf("with the library the size stood still for %d samples, without for %d", with.maxStall, without.maxStall)
	}
	if with.changes < 10*max(without.changes, 1) {
		t.Errorf("with the library the size changed %d times in 2 s, without %d: not continuous", with.changes, without.changes)
	}
}

// TestFlushBeforeSend has the VM send frames (iPXE's DHCP, or the guest's
// traffic) to a unix datagram socket the test owns. The library reports,
// through FTVMD_FLUSH_DEBUG, its ftell() right after the flush that precedes
// each send; the file's size when the test receives the frame must cover it.
func TestFlushBeforeSend(t *testing.T) {
	requireQEMU(t)
	dir := shortDir(t)
	lib := buildFlushLib(t, dir)
	cfg := baseConfig(t, dir, "send", ModeRecord)
	cfg.FlushLib = lib
	cfg.FlushInterval = time.Second // the periodic flush must not be what makes the file fresh
	cfg.NIC = &NIC{MAC: "52:54:00:12:34:56", SocketPath: filepath.Join(dir, "agent.sock"), LocalPath: filepath.Join(dir, "qemu.sock")}

	agent, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: cfg.NIC.SocketPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	dr, dw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer dr.Close()

	type sendLine struct {
		fd       int
		len, pos int64
	}
	var (
		mu    sync.Mutex
		sends []sendLine
		wg    sync.WaitGroup
	)
	wg.Add(1)
	go func() { // owned: ends when QEMU (the only writer left) exits
		defer wg.Done()
		sc := bufio.NewScanner(dr)
		for sc.Scan() {
			var l sendLine
			if _, err := fmt.Sscanf(sc.Text(), "send %d %d %d", &l.fd, &l.len, &l.pos); err == nil {
				mu.Lock()
				sends = append(sends, l)
				mu.Unlock()
			}
		}
	}()

	m := startMachine(t, cfg, WithExtraFiles(dw), WithEnv("FTVMD_FLUSH_DEBUG=3"))
	dw.Close()

	type recv struct {
		len, size int64
	}
	var frames []recv
	buf := make([]byte, 65536)
	deadline := time.Now().Add(40 * time.Second)
	for len(frames) < 4 && time.Now().Before(deadline) {
		_ = agent.SetReadDeadline(deadline)
		n, err := agent.Read(buf)
		size := fileSize(cfg.RRFile) // first thing after the frame arrives
		if err != nil {
			break
		}
		frames = append(frames, recv{int64(n), size})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := m.Stop(ctx, 5*time.Second); err != nil {
		t.Errorf("stop: %v", err)
	}
	wg.Wait()
	if len(frames) == 0 {
		t.Fatal("the VM sent no frame")
	}

	// Pick the NIC's fd: the one whose sends have the frames' lengths, in order.
	byFD := map[int][]sendLine{}
	for _, s := range sends {
		byFD[s.fd] = append(byFD[s.fd], s)
	}
	var nic []sendLine
	for _, ls := range byFD {
		if len(ls) < len(frames) {
			continue
		}
		ok := true
		for i, f := range frames {
			ok = ok && ls[i].len == f.len
		}
		if ok {
			nic = ls
		}
	}
	if nic == nil {
		t.Fatalf("no flush-before-send was reported for the %d frames (library not loaded?); sends: %v", len(frames), sends)
	}
	for i, f := range frames {
		t.Logf("frame %d: %d bytes, log at send %d, file at receive %d (block aligned: %v)", i, f.len, nic[i].pos, f.size, blockAligned(f.size))
		if f.size < nic[i].pos {
			t.Errorf("frame %d arrived while the file held %d bytes, but %d bytes of log preceded its send", i, f.size, nic[i].pos)
		}
	}
}

// TestLiveLockstep records a VM and replays it live in a second QEMU fed
// through a FIFO; the consoles must agree and replay must keep up.
func TestLiveLockstep(t *testing.T) {
	if testing.Short() {
		t.Skip("takes about 30 s")
	}
	requireQEMU(t)
	dir := shortDir(t)
	lib := buildFlushLib(t, dir)

	rec := baseConfig(t, dir, "rec", ModeRecord)
	rec.FlushLib = lib
	rec.NIC = &NIC{MAC: "52:54:00:12:34:57", SocketPath: filepath.Join(dir, "ra.sock"), LocalPath: filepath.Join(dir, "rq.sock")}
	agent, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: rec.NIC.SocketPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close() // frames pile up unread; the socket buffer drops the rest

	feed, err := NewFeed(filepath.Join(dir, "feed.fifo"), rec.RRFile, WithFeedLogger(testLogger(t)),
		WithFeedPoll(time.Millisecond, func() (int64, error) {
			st, err := os.Stat(rec.RRFile)
			if err != nil {
				return 0, err
			}
			return st.Size(), nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()

	rep := baseConfig(t, dir, "rep", ModeReplay)
	rep.RRFile = feed.Path()
	rep.NIC = &NIC{MAC: rec.NIC.MAC, SocketPath: filepath.Join(dir, "pa.sock"), LocalPath: filepath.Join(dir, "pq.sock")}

	start := time.Now()
	mr := startMachine(t, rec)
	mp := startMachine(t, rep)

	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	// sample returns how far replay is behind record in nanoseconds of
	// executed instructions (raw icount << shift; warps while idle not
	// included), and replay's icount.
	sample := func() (lagNS float64, replayIcount uint64) {
		ri, err := mr.QueryReplay(ctx)
		if err != nil {
			t.Fatalf("recorder query-replay: %v", err)
		}
		pi, err := mp.QueryReplay(ctx)
		if err != nil {
			t.Fatalf("replayer query-replay: %v", err)
		}
		if pi.Mode != "play" || ri.Mode != "record" {
			t.Fatalf("modes: recorder %q, replayer %q", ri.Mode, pi.Mode)
		}
		lagNS = float64(int64(ri.Icount)-int64(pi.Icount)) * float64(int64(1)<<rec.IcountShift)
		t.Logf("t=%5.1fs record icount %d, replay icount %d, lag %.3f s of instructions<<shift, log %d fed %d",
			time.Since(start).Seconds(), ri.Icount, pi.Icount, lagNS/1e9, fileSize(rec.RRFile), feed.FedOffset())
		if lagNS < 0 {
			t.Errorf("replay ahead of record: lag %.3f s", lagNS/1e9)
		}
		return lagNS, pi.Icount
	}

	// Phase 1: about 20 s, replay must make progress all along.
	var prev uint64
	advanced, samples := 0, 0
	for time.Since(start) < 20*time.Second {
		time.Sleep(2 * time.Second)
		_, icount := sample()
		samples++
		if icount > prev {
			advanced++
		}
		prev = icount
	}
	if advanced < samples-1 {
		t.Errorf("replay icount advanced in only %d of %d samples", advanced, samples)
	}
	// Phase 2: replay of boot is several times slower than record; wait
	// (bounded) until it has caught up with the idle guest.
	const closeNS = 1e9
	caughtUp := time.Duration(0)
	for time.Since(start) < 150*time.Second {
		lag, _ := sample()
		if lag < closeNS {
			caughtUp = time.Since(start)
			break
		}
		time.Sleep(2 * time.Second)
	}
	if caughtUp == 0 {
		t.Errorf("replay still more than %.0f s (instructions<<shift) behind after %s", closeNS/1e9, time.Since(start).Round(time.Second))
	} else {
		t.Logf("replay within %.0f s of record after %s", closeNS/1e9, caughtUp.Round(100*time.Millisecond))
		// Steady state. Replay consumes the main-loop checkpoints the
		// recorder logged (QMP traffic wakes the recorder's main loop) only
		// as its own main loop wakes up; querying the replay every 50 ms,
		// as a backup agent polling lag would, keeps it moving.
		var lags []float64
		for range 100 {
			time.Sleep(50 * time.Millisecond)
			ri, err1 := mr.QueryReplay(ctx)
			pi, err2 := mp.QueryReplay(ctx)
			if err1 != nil || err2 != nil {
				t.Fatalf("query-replay: %v %v", err1, err2)
			}
			lags = append(lags, float64(int64(ri.Icount)-int64(pi.Icount))*float64(int64(1)<<rec.IcountShift)/1e6)
		}
		slices.Sort(lags)
		t.Logf("steady state, 100 samples at 50 ms: lag (instructions<<shift) p50 %.1f ms, p90 %.1f ms, max %.1f ms",
			lags[50], lags[90], lags[99])
		sample()
	}

	rc, err := os.ReadFile(rec.ConsoleLog)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := os.ReadFile(rep.ConsoleLog)
	if err != nil {
		t.Fatal(err)
	}
	n := min(len(rc), len(pc))
	t.Logf("consoles: record %d bytes, replay %d bytes", len(rc), len(pc))
	if n < 100 {
		t.Errorf("console too short to compare: record %d, replay %d bytes", len(rc), len(pc))
	}
	if !bytes.Equal(rc[:n], pc[:n]) {
		i := 0
		for i < n && rc[i] == pc[i] {
			i++
		}
		t.Errorf("consoles differ at byte %d: record %q, replay %q", i, rc[i:min(i+40, n)], pc[i:min(i+40, n)])
	}

	// A clean recorder stop ends the log with SHUTDOWN+END; the replay
	// then consumes it and exits 0.
	if err := mr.Stop(ctx, 5*time.Second); err != nil {
		t.Errorf("stop recorder: %v", err)
	}
	// Nudge the replay's main loop (see the steady-state note) while it
	// consumes the rest of the log.
	stopAt := time.Now()
	nudge := time.NewTicker(50 * time.Millisecond)
	defer nudge.Stop()
	var werr error
wait:
	for {
		select {
		case <-mp.Exited():
			werr = mp.ExitErr()
			break wait
		case <-nudge.C:
			if time.Since(stopAt) > 30*time.Second {
				werr = errors.New("replay still running 30 s after the recorder stopped")
				break wait
			}
			_, _ = mp.QueryReplay(ctx)
		}
	}
	if werr != nil {
		t.Logf("replay did not finish cleanly: %v", werr)
	} else {
		t.Logf("replay ended cleanly %s after the recorder's END; fed %d of %d bytes", time.Since(stopAt).Round(10*time.Millisecond), feed.FedOffset(), fileSize(rec.RRFile))
	}
}
