package qemu

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/logspace"
	"github.com/ftvmd/ftvmd/replay"
)

// synthLog builds a log: 12 header bytes, INSTRUCTION 100 @12, WARP_ACCOUNT
// @17, INSTRUCTION 50 @18, CLOCK_HOST @23, then 3 bytes of an unfinished
// INSTRUCTION @32.
func synthLog() []byte {
	b := make([]byte, LogHeaderSize)
	ins := func(n uint32) { b = append(b, 0); b = binary.BigEndian.AppendUint32(b, n) }
	ins(100)
	b = append(b, byte(replay.KindCheckpointClockWarpAccount))
	ins(50)
	b = append(b, byte(replay.KindClockHost))
	b = binary.BigEndian.AppendUint64(b, 12345)
	ins(7)
	return b[:len(b)-2]
}

func TestFindCut(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log")
	if err := os.WriteFile(path, synthLog(), 0o644); err != nil {
		t.Fatal(err)
	}
	start := replay.Mark{Offset: LogHeaderSize, Icount: 1000}
	for _, tc := range []struct {
		name       string
		from       replay.Mark
		acked, fed int64
		cut        int64
		icount     uint64
		err        error
	}{
		{"at the last event", start, 32, 12, 32, 1150, nil},
		{"acked mid-event", start, 30, 12, 23, 1150, nil},
		{"acked mid-instruction", start, 22, 12, 18, 1100, nil},
		{"acked at a checkpoint", start, 18, 18, 18, 1100, nil},
		{"acked at the header", start, 12, 12, 12, 1000, nil},
		{"acked past the log", start, 99, 12, 32, 1150, nil},
		{"fed past acked", start, 22, 20, 23, 1150, nil},
		{"fed into the unfinished event", start, 35, 34, 0, 0, ErrNoCut},
		{"resume mark", replay.Mark{Offset: 17, Icount: 100}, 32, 17, 32, 150, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cut, ic, err := findCut(path, tc.from, tc.acked, tc.fed)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if err == nil && (cut != tc.cut || ic != tc.icount) {
				t.Fatalf("cut %d icount %d, want %d %d", cut, ic, tc.cut, tc.icount)
			}
		})
	}
}

// TestFindCutFreedPrefix: a backup frees the log its replay was fed (bounded logs)
// and goes live from the newest cut point, whose icount it knows: the cut is found
// from that mark without reading the freed prefix, where zeros would parse as
// events of no instructions and the scan from the header would miscount.
func TestFindCutFreedPrefix(t *testing.T) {
	b := make([]byte, LogHeaderSize)
	var icount uint64
	var cut int64
	var cutIcount uint64
	for i := uint32(1); len(b) < 5*4096; i++ {
		b = append(b, 0)
		b = binary.BigEndian.AppendUint32(b, i)
		icount += uint64(i)
		if cut == 0 && len(b) > 3*4096 {
			cut, cutIcount = int64(len(b)), icount
		}
	}
	path := filepath.Join(t.TempDir(), "log.rr")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	fr, err := logspace.NewFreer(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	if _, err := fr.FreeTo(cut - 1000); err != nil {
		t.Skipf("cannot punch holes here: %v", err)
	}
	if fr.Freed() < 2*4096 {
		t.Fatalf("freed only %d", fr.Freed())
	}
	got, ic, err := findCut(path, replay.Mark{Offset: cut, Icount: cutIcount}, cut, cut-500)
	if err != nil || got != cut || ic != cutIcount {
		t.Fatalf("findCut from the cut point = %d, %d, %v; want %d, %d", got, ic, err, cut, cutIcount)
	}
	// From the header, the freed prefix reads as zeros: the count comes out wrong
	// (or the scan fails), which is why go-live must start from a known mark.
	if got, ic, err := findCut(path, replay.Mark{Offset: LogHeaderSize}, cut, LogHeaderSize); err == nil && got == cut && ic == cutIcount {
		t.Fatalf("a scan over the freed prefix found the right cut: the test does not free what it thinks")
	}
}

// TestFeedHaltFinish drives Halt, Queued and Finish against a FIFO reader
// the test owns.
func TestFeedHaltFinish(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	body := make([]byte, 100)
	for i := range body {
		body[i] = byte(i)
	}
	if err := os.WriteFile(src, append(make([]byte, LogHeaderSize), body...), 0o644); err != nil {
		t.Fatal(err)
	}
	feed, err := NewFeed(filepath.Join(dir, "fifo"), src, WithFeedLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	fd, err := unix.Open(feed.Path(), unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	r := os.NewFile(uintptr(fd), "fifo-reader")
	defer r.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// readN reads exactly n bytes, or fails; a reader of an unopened FIFO
	// sees EOF, so EOF before the first byte means "not yet".
	readN := func(n int) []byte {
		t.Helper()
		out := make([]byte, 0, n)
		buf := make([]byte, n)
		deadline := time.Now().Add(5 * time.Second)
		for len(out) < n && time.Now().Before(deadline) {
			_ = r.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
			k, err := r.Read(buf[:n-len(out)])
			out = append(out, buf[:k]...)
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
		}
		if len(out) < n {
			t.Fatalf("read %d of %d bytes", len(out), n)
		}
		return out
	}
	// quiet checks that nothing arrives for a while and that the FIFO is
	// still open (a deadline, not EOF).
	quiet := func() {
		t.Helper()
		_ = r.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		k, err := r.Read(make([]byte, 16))
		if k != 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read %d bytes, err %v; want nothing and the FIFO open", k, err)
		}
	}

	feed.Notify(LogHeaderSize + 40)
	if got := readN(44); !bytes.Equal(got[:4], logVersion[:]) || !bytes.Equal(got[4:], body[:40]) {
		t.Fatalf("first bytes %x", got)
	}
	fed, err := feed.Halt(ctx)
	if err != nil || fed != LogHeaderSize+40 {
		t.Fatalf("Halt = %d, %v", fed, err)
	}
	feed.Notify(LogHeaderSize + 100)
	quiet()
	if q, err := feed.Queued(ctx); err != nil || q != 0 {
		t.Fatalf("Queued = %d, %v", q, err)
	}
	var past *FedPastCutError
	if err := feed.Finish(ctx, LogHeaderSize+30, []byte{38}); !errors.As(err, &past) || past.Fed != LogHeaderSize+40 {
		t.Fatalf("Finish before fed = %v", err)
	}
	quiet()
	if err := feed.Finish(ctx, LogHeaderSize+70, []byte{38}); err != nil {
		t.Fatal(err)
	}
	if q, err := feed.Queued(ctx); err != nil || q != 31 {
		t.Fatalf("Queued = %d, %v; want 31", q, err)
	}
	if got := readN(31); !bytes.Equal(got[:30], body[40:70]) || got[30] != 38 {
		t.Fatalf("final bytes %x", got)
	}
	quiet()
	if err := feed.Finish(ctx, LogHeaderSize+80, nil); !errors.Is(err, ErrFeedFinished) {
		t.Fatalf("second Finish = %v", err)
	}
	if err := feed.Close(); err != nil {
		t.Fatal(err)
	}
	_ = r.SetReadDeadline(time.Now().Add(time.Second))
	if k, err := r.Read(make([]byte, 1)); k != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("after Close: %d bytes, %v; want EOF", k, err)
	}
}

// backupCopier plays the backup agent: it tails the recorder's log,
// appends complete events only to its own file and notifies the Feed.
type backupCopier struct {
	src, dst string
	feed     *Feed
	stop     chan struct{}
	done     chan error

	finish sync.Once // Finish's result, for every call
	size   int64
	err    error
}

// startTestCopier starts a backupCopier from offset start, where the
// instruction count is icount, and finishes it when the test ends unless the
// test did.
func startTestCopier(t *testing.T, src, dst string, feed *Feed, start int64, icount uint64) *backupCopier {
	t.Helper()
	c, err := startBackupCopierAt(src, dst, feed, start, icount)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = c.Finish() })
	return c
}

func startBackupCopier(src, dst string, feed *Feed) (*backupCopier, error) {
	return startBackupCopierAt(src, dst, feed, LogHeaderSize, 0)
}

// startBackupCopierAt copies the log from offset start, where the instruction
// count is icount (a snapshot's), to the same offsets of dst.
func startBackupCopierAt(src, dst string, feed *Feed, start int64, icount uint64) (*backupCopier, error) {
	out, err := os.Create(dst)
	if err != nil {
		return nil, err
	}
	if _, err := out.Write(make([]byte, LogHeaderSize)); err != nil {
		out.Close()
		return nil, err
	}
	if _, err := out.Seek(start, io.SeekStart); err != nil {
		out.Close()
		return nil, err
	}
	c := &backupCopier{src: src, dst: dst, feed: feed, stop: make(chan struct{}), done: make(chan error, 1)}
	go func() { // owned: Finish stops it and waits
		defer out.Close()
		c.done <- c.run(out, start, icount)
	}()
	return c, nil
}

func (c *backupCopier) run(out *os.File, start int64, icount uint64) error {
	cut := replay.NewCutter(start, icount)
	var (
		in       *os.File
		read     = start // source bytes given to cut
		pending  []byte  // source bytes past cut's boundary
		buf      = make([]byte, 256<<10)
		tick     = time.NewTicker(time.Millisecond)
		stopping bool
	)
	defer tick.Stop()
	defer func() {
		if in != nil {
			in.Close()
		}
	}()
	for {
		select {
		case <-c.stop:
			stopping = true // one last pass: the recorder has exited
		case <-tick.C:
		}
		if in == nil {
			// Only once QEMU has seeked past the header (design.md).
			if fileSize(c.src) <= LogHeaderSize {
				if stopping {
					return nil
				}
				continue
			}
			var err error
			if in, err = os.Open(c.src); err != nil {
				return err
			}
		}
		for {
			n, err := in.ReadAt(buf, read)
			if n > 0 {
				before := cut.Boundary()
				if _, werr := cut.Write(buf[:n]); werr != nil {
					return werr
				}
				read += int64(n)
				pending = append(pending, buf[:n]...)
				if adv := cut.Boundary() - before; adv > 0 {
					if _, err := out.Write(pending[:adv]); err != nil {
						return err
					}
					pending = append(pending[:0], pending[adv:]...)
					c.feed.Notify(cut.Boundary())
				}
			}
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			if n < len(buf) {
				break
			}
		}
		if stopping {
			return nil
		}
	}
}

// Finish does the last pass and returns the backup log's size.
func (c *backupCopier) Finish() (int64, error) {
	c.finish.Do(func() {
		close(c.stop)
		if c.err = <-c.done; c.err == nil {
			c.size = fileSize(c.dst)
		}
	})
	return c.size, c.err
}

var counterRE = regexp.MustCompile(`ftguest counter (\d+) uptime ([0-9.]+)`)

type counterLine struct {
	n      int
	uptime float64
}

func counters(b []byte) []counterLine {
	var out []counterLine
	for _, m := range counterRE.FindAllSubmatch(b, -1) {
		n, _ := strconv.Atoi(string(m[1]))
		up, _ := strconv.ParseFloat(string(m[2]), 64)
		out = append(out, counterLine{n, up})
	}
	return out
}

// TestGoLive records the lab guest, replays it live through a Feed from a
// backup copy of the log, SIGKILLs the recorder and goes live from the
// replay, three times; the guest must carry on without a reboot.
func TestGoLive(t *testing.T) {
	if testing.Short() {
		t.Skip("boots and replays the guest three times (minutes)")
	}
	requireQEMU(t, "gcc")
	dir := shortDir(t)
	lib := buildFlushLib(t, dir)
	if k, _ := guestFiles(t); k == "" {
		t.Skip("needs the lab guest in build/guest (test/guest/build.sh)")
	}
	var reports []GoLiveReport
	for round := range 3 {
		reports = append(reports, goLiveRound(t, dir, lib, round))
	}
	for i, r := range reports {
		t.Logf("round %d: cut %d icount %d: cut-scan %s park %s save %s (%d tries) stop %s start %s announce %s total %s",
			i, r.CutOffset, r.TargetIcount, r.Cut, r.Park, r.Save, r.SaveTries, r.Stop, r.Start, r.Announce, r.Total)
	}
}

func goLiveRound(t *testing.T, base, lib string, round int) GoLiveReport {
	dir := filepath.Join(base, "r"+strconv.Itoa(round))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	const mac = "52:54:00:12:34:60"
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// Primary host: the recorder and its agent socket.
	rec := baseConfig(t, dir, "rec", ModeRecord)
	rec.FlushLib = lib
	rec.NIC = &NIC{MAC: mac, SocketPath: filepath.Join(dir, "pa.sock"), LocalPath: filepath.Join(dir, "pq.sock")}
	// Backup host: the replay, its Feed, its log copy, its agent socket.
	backupLog := filepath.Join(dir, "backup.rr")
	feed, err := NewFeed(filepath.Join(dir, "feed.fifo"), backupLog, WithFeedLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	rep := baseConfig(t, dir, "rep", ModeReplay)
	rep.RRFile = feed.Path()
	rep.SnapshotDrive = filepath.Join(dir, "snap.qcow2")
	rep.NIC = &NIC{MAC: mac, SocketPath: filepath.Join(dir, "ba.sock"), LocalPath: filepath.Join(dir, "bq.sock")}
	for _, p := range []string{rec.NIC.SocketPath, rep.NIC.SocketPath} {
		l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: p, Net: "unixgram"})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close() // frames pile up unread
	}
	copier, err := startBackupCopier(rec.RRFile, backupLog, feed)
	if err != nil {
		t.Fatal(err)
	}
	var copierOnce sync.Once
	finishCopier := func() (size int64) {
		copierOnce.Do(func() {
			if size, err = copier.Finish(); err != nil {
				t.Errorf("backup copier: %v", err)
			}
		})
		return size
	}
	defer finishCopier()

	start := time.Now()
	mr := startMachine(t, rec)
	mp := startMachine(t, rep)

	// Wait for the guest to be up on the recorder and for the replay to
	// have replayed the same console (polling the replay also wakes its
	// main loop).
	var recCon, repCon []byte
	for {
		if ctx.Err() != nil {
			t.Fatalf("guest not up and replayed in time: record console %d bytes, replay %d", len(recCon), len(repCon))
		}
		time.Sleep(50 * time.Millisecond)
		_, _ = mp.QueryReplay(ctx)
		recCon, _ = os.ReadFile(rec.ConsoleLog)
		repCon, _ = os.ReadFile(rep.ConsoleLog)
		i := bytes.Index(recCon, []byte("ftguest ready"))
		if i >= 0 && len(counters(recCon[i:])) >= 3 && bytes.Equal(repCon, recCon) {
			break
		}
	}
	t.Logf("round %d: guest up and replayed after %s", round, time.Since(start).Round(100*time.Millisecond))

	// The primary's host dies.
	if err := mr.Kill(); err != nil {
		t.Fatal(err)
	}
	<-mr.Exited()
	acked := finishCopier()
	t.Logf("round %d: recorder SIGKILLed; log %d bytes, backup copy (complete events) %d, fed %d",
		round, fileSize(rec.RRFile), acked, feed.FedOffset())

	live := baseConfig(t, dir, "live", ModeRecord)
	live.FlushLib = lib
	live.RRSnapshot = "" // a later backup would need one: see GoLiveConfig.Record
	live.NIC = rep.NIC   // the backup host's sockets, the same MAC
	m, r, err := GoLive(ctx, GoLiveConfig{
		Replay: mp, Feed: feed, LogPath: backupLog, AckedOffset: acked,
		Record: live, Tag: "golive", Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("round %d: GoLive: %v", round, err)
	}
	t.Cleanup(func() {
		_ = m.Kill()
		<-m.Exited()
	})
	if r.CutOffset != acked {
		t.Errorf("cut at %d, want the acked offset %d (the backup copy ends on a boundary)", r.CutOffset, acked)
	}
	select {
	case <-mp.Exited():
	default:
		t.Errorf("the replaying QEMU still runs")
	}

	// The guest carries on: no reboot, the counter continues.
	repCon, _ = os.ReadFile(rep.ConsoleLog)
	before := counters(repCon)
	if len(before) == 0 {
		t.Fatal("no counter on the replay console")
	}
	lastBefore := before[len(before)-1]
	var liveCon []byte
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		liveCon, _ = os.ReadFile(live.ConsoleLog)
		if len(counters(liveCon)) >= 3 {
			break
		}
	}
	after := counters(liveCon)
	t.Logf("round %d: replay console ended at counter %d uptime %.2f; live console: %q", round, lastBefore.n, lastBefore.uptime, liveCon)
	if len(after) < 3 {
		t.Fatalf("live console shows %d counter lines after 30 s", len(after))
	}
	for _, bad := range []string{"Linux version", "ftguest ready", "ftguest init"} {
		if bytes.Contains(liveCon, []byte(bad)) {
			t.Errorf("live console contains %q: the guest rebooted", bad)
		}
	}
	if after[0].n < lastBefore.n || after[0].n > lastBefore.n+2 {
		t.Errorf("live counter starts at %d, replay ended at %d", after[0].n, lastBefore.n)
	}
	prev := lastBefore
	for _, c := range after {
		if c.n != prev.n+1 && !(c == after[0] && c.n == prev.n) {
			t.Errorf("counter %d follows %d", c.n, prev.n)
		}
		if c.uptime < prev.uptime {
			t.Errorf("uptime went back from %.2f to %.2f", prev.uptime, c.uptime)
		}
		prev = c
	}
	if st, err := m.Status(ctx); err != nil || st != "running" {
		t.Errorf("live status %q, %v", st, err)
	}
	if ri, err := m.QueryReplay(ctx); err != nil || ri.Mode != "record" || ri.Icount < r.TargetIcount {
		t.Errorf("live query-replay %+v, %v; want record mode at icount >= %d", ri, err, r.TargetIcount)
	}
	if err := m.Stop(ctx, 5*time.Second); err != nil {
		t.Errorf("stop live: %v", err)
	}
	return r
}

// BenchmarkFindCut scans a 5 MB log of small events (a booted guest's log
// is about that size): the cut-scan cost GoLiveConfig.Resume avoids.
func BenchmarkFindCut(b *testing.B) {
	ev := synthLog()[LogHeaderSize:32] // 20 bytes, 3 instruction events
	log := make([]byte, LogHeaderSize, 5<<20)
	for len(log)+len(ev) <= cap(log) {
		log = append(log, ev...)
	}
	path := filepath.Join(b.TempDir(), "log")
	if err := os.WriteFile(path, log, 0o644); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(log)))
	for b.Loop() {
		if cut, _, err := findCut(path, replay.Mark{Offset: LogHeaderSize}, int64(len(log)), LogHeaderSize); err != nil || cut != int64(len(log)) {
			b.Fatalf("cut %d, %v", cut, err)
		}
	}
}

// TestGoLiveConfigInPlace: going live in place needs the new log's name and
// neither a snapshot drive nor a tag; the rest is checked as for a go-live
// through a snapshot.
func TestGoLiveConfigInPlace(t *testing.T) {
	dir := shortDir(t)
	src := filepath.Join(dir, "backup.rr")
	if err := os.WriteFile(src, synthLog(), 0o644); err != nil {
		t.Fatal(err)
	}
	feed, err := NewFeed(filepath.Join(dir, "fifo"), src, WithFeedLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	replayOn := func(rrfile string) *Machine {
		m, err := New(Config{Name: "r", Mode: ModeReplay, RRFile: rrfile, IcountShift: 4})
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	ok := GoLiveConfig{Replay: replayOn(feed.Path()), Feed: feed, LogPath: src, AckedOffset: LogHeaderSize,
		Record: Config{RRFile: filepath.Join(dir, "live.rr")}, InPlace: true}
	if err := ok.validate(); err != nil {
		t.Fatalf("valid in-place config refused: %v", err)
	}
	if ok.Poll != DefaultInPlacePoll || ok.Record.LoadVM != "" {
		t.Errorf("in place: poll %s, loadvm %q; want %s and none", ok.Poll, ok.Record.LoadVM, DefaultInPlacePoll)
	}
	for _, tc := range []struct {
		name string
		edit func(*GoLiveConfig)
		want string
	}{
		{"no new log", func(c *GoLiveConfig) { c.Record.RRFile = "" }, "the new log, is required"},
		{"new log is the replayed one", func(c *GoLiveConfig) { c.Record.RRFile = src }, "must be a new file"},
		{"replay reads another file", func(c *GoLiveConfig) { c.Replay = replayOn(src) }, "not the Feed's FIFO"},
		{"not a replay", func(c *GoLiveConfig) {
			m, _ := New(Config{Name: "r", Mode: ModeRecord, RRFile: feed.Path()})
			c.Replay = m
		}, "not replay"},
		{"cut in the header", func(c *GoLiveConfig) { c.AckedOffset = 4 }, "inside the log header"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			c.Poll = 0
			tc.edit(&c)
			err := c.validate()
			if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("validate = %v, want an ErrInvalidConfig saying %q", err, tc.want)
			}
		})
	}
}
