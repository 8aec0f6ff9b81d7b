package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/replay"
)

// These tests run ftvmd's QEMU build with the go-live-in-place patch
// (Engine.InPlaceGoLive): FTVMD_TEST_ENGINE names its qemu-system-x86_64,
// otherwise the installed build (EngineDir). Without such a build they skip, or
// fail under FTVMD_REQUIRE_QEMU=1 when this tree's engine patches include the
// patch (the build its setup installs must have it).

func inPlaceEngine(t *testing.T) Engine {
	t.Helper()
	requireQEMU(t)
	e, err := DetectEngine(context.Background(), os.Getenv("FTVMD_TEST_ENGINE"))
	if err == nil && !e.InPlaceGoLive {
		err = fmt.Errorf("%s (%s) cannot go live in place (patches %v)", e.Binary, e.Name, e.Patches)
	}
	if err != nil {
		patches, _ := filepath.Glob(filepath.Join("engine", "patches", "*"+inPlaceGoLivePatch+"*"))
		if os.Getenv("FTVMD_REQUIRE_QEMU") == "1" && len(patches) > 0 {
			t.Fatalf("no QEMU that goes live in place and FTVMD_REQUIRE_QEMU=1: %v (build it: bash qemu/engine/build.sh)", err)
		}
		t.Skipf("no QEMU that goes live in place: %v", err)
	}
	t.Logf("engine under test: %s (%s)", e.Name, e.Binary)
	return e
}

// inPlaceRun is a recorded lab guest replayed live through a Feed, its
// recorder SIGKILLed: what a backup holds when its primary dies.
type inPlaceRun struct {
	dir       string
	rep       Config
	mp        *Machine // the replay, caught up
	feed      *Feed
	nic       *guestNIC // the replay's NIC sockets
	backupLog string
	acked     int64  // the backup copy's end, an event boundary
	repCon    []byte // the replay's console when the recorder died
}

func startInPlaceRun(ctx context.Context, t *testing.T, eng Engine, dir string, replayDelay time.Duration) *inPlaceRun {
	t.Helper()
	r := &inPlaceRun{dir: dir}
	rec := baseConfig(t, dir, "rec", ModeRecord)
	rec.Binary, rec.LogStream = eng.Binary, true
	recDir, backDir := filepath.Join(dir, "p"), filepath.Join(dir, "b")
	for _, d := range []string{recDir, backDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	rec.NIC, _ = newGuestNIC(t, recDir) // frames pile up unread

	r.backupLog = filepath.Join(dir, "backup.rr")
	feed, err := NewFeed(filepath.Join(dir, "feed.fifo"), r.backupLog, WithFeedLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { feed.Close() })
	r.feed = feed
	r.rep = baseConfig(t, dir, "rep", ModeReplay)
	r.rep.Binary = eng.Binary
	r.rep.RRFile = feed.Path()
	r.rep.SnapshotDrive = filepath.Join(dir, "snap.qcow2") // for the snapshots of the new log
	r.rep.NIC, r.nic = newGuestNIC(t, backDir)

	copier := startTestCopier(t, rec.RRFile, r.backupLog, feed, LogHeaderSize, 0)

	start := time.Now()
	mr := startMachine(t, rec)
	// A backup whose replay started late: its QEMU's own real-time clock is
	// behind the recording's by as much.
	time.Sleep(replayDelay)
	r.mp = startMachine(t, r.rep)
	var recCon []byte
	for {
		if ctx.Err() != nil {
			t.Fatalf("guest not up and replayed in time: record console %d bytes, replay %d", len(recCon), len(r.repCon))
		}
		time.Sleep(50 * time.Millisecond)
		_, _ = r.mp.QueryReplay(ctx)
		recCon, _ = os.ReadFile(rec.ConsoleLog)
		r.repCon, _ = os.ReadFile(r.rep.ConsoleLog)
		i := bytes.Index(recCon, []byte("ftguest ready"))
		if i >= 0 && len(counters(recCon[i:])) >= 3 && bytes.Equal(r.repCon, recCon) {
			break
		}
	}
	t.Logf("guest up and replayed after %s", time.Since(start).Round(100*time.Millisecond))
	if n := len(r.nic.frames); n != 0 {
		t.Fatalf("the replay sent %d frames", n)
	}
	if err := mr.Kill(); err != nil {
		t.Fatal(err)
	}
	<-mr.Exited()
	if r.acked, err = copier.Finish(); err != nil {
		t.Fatalf("backup copier: %v", err)
	}
	return r
}

// inPlaceTest is where every go-live-in-place test starts: the engine, the lab
// guest and startInPlaceRun, with the replay replayDelay late, under a
// 6-minute deadline. It skips in -short mode and without the engine or guest.
func inPlaceTest(t *testing.T, replayDelay time.Duration) (context.Context, Engine, *inPlaceRun) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots the guest and replays it twice (a minute or two)")
	}
	eng := inPlaceEngine(t)
	if k, _ := guestFiles(t); k == "" {
		t.Skip("needs the lab guest in build/guest (test/guest/build.sh)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	t.Cleanup(cancel)
	return ctx, eng, startInPlaceRun(ctx, t, eng, shortDir(t), replayDelay)
}

// TestGoLiveInPlace: GoLive with InPlace makes the replaying QEMU itself the
// live VM. The same process must carry on with no reboot (the guest's counter
// continues on the same console), answer on the network through the replay's
// NIC sockets, and record a new log that replays from a snapshot saved while
// it records.
func TestGoLiveInPlace(t *testing.T) {
	ctx, eng, r := inPlaceTest(t, 0)
	dir, mp, pid := r.dir, r.mp, r.mp.PID()

	liveLog := filepath.Join(dir, "live.rr")
	m, rep, err := GoLive(ctx, GoLiveConfig{
		Replay: mp, Feed: r.feed, LogPath: r.backupLog, AckedOffset: r.acked,
		Record: Config{RRFile: liveLog}, InPlace: true, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("GoLive in place: %v", err)
	}
	t.Logf("in place: cut %d icount %d: cut-scan %s park %s (switch %s, %d asks) announce %s total %s",
		rep.CutOffset, rep.TargetIcount, rep.Cut, rep.Park, rep.Switch, rep.SwitchTries, rep.Announce, rep.Total)
	if m != mp || m.PID() != pid || !rep.InPlace {
		t.Fatalf("GoLive returned machine pid %d (in place %v), want the replay, pid %d", m.PID(), rep.InPlace, pid)
	}
	if rep.CutOffset != r.acked {
		t.Errorf("cut at %d, want the acked offset %d", rep.CutOffset, r.acked)
	}
	if c := m.Config(); c.Mode != ModeRecord || c.RRFile != liveLog {
		t.Errorf("config after going live: mode %q rrfile %q", c.Mode, c.RRFile)
	}
	ri, err := m.QueryReplay(ctx)
	if err != nil || ri.Mode != "record" || ri.Filename != liveLog || ri.Icount < rep.TargetIcount {
		t.Fatalf("query-replay %+v, %v; want record mode into %s at icount >= %d", ri, err, liveLog, rep.TargetIcount)
	}
	r.checkLive(ctx, t)
	// A snapshot while recording: the replay of the new log from it starts
	// in the middle of the log.
	r.checkNewLogReplays(ctx, t, m, liveLog, eng, nil)
}

// TestGoLiveInPlaceSnapshotAtSwitch: the new log replays from a snapshot saved at
// the very moment the replay went live, its first event included. The VM is
// stopped at the end of the replayed log, switched while stopped (the run state
// stays), saved, and continued.
func TestGoLiveInPlaceSnapshotAtSwitch(t *testing.T) {
	ctx, eng, r := inPlaceTest(t, 0)
	dir, m := r.dir, r.mp

	cut, target, err := findCut(r.backupLog, replay.Mark{Offset: LogHeaderSize}, r.acked, r.feed.FedOffset())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.feed.Finish(ctx, cut, endOfLog); err != nil {
		t.Fatal(err)
	}
	liveLog := filepath.Join(dir, "live.rr")
	// Stop the replay once it stands at the end of the log; go live while
	// stopped. A stopped replay still at work is let run a little longer.
	for tries := 0; ; tries++ {
		if ctx.Err() != nil {
			t.Fatalf("never stopped at the end of the log: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
		if err = m.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		if err = m.GoLiveInPlace(ctx, liveLog, target); err == nil {
			break
		}
		if !errors.Is(err, ErrNotAtLogEnd) {
			t.Fatalf("go live while stopped: %v", err)
		}
		if err := m.Cont(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := m.Status(ctx); err != nil || st != "paused" {
		t.Fatalf("run state after going live while stopped: %q, %v; want paused", st, err)
	}
	if ri, err := m.QueryReplay(ctx); err != nil || ri.Mode != "record" || ri.Icount != target {
		t.Fatalf("query-replay %+v, %v; want record mode at icount %d", ri, err, target)
	}
	if err := r.feed.Close(); err != nil {
		t.Logf("close feed: %v", err)
	}
	r.checkNewLogReplays(ctx, t, m, liveLog, eng, func() { r.checkLive(ctx, t) })
}

// TestGoLiveInPlaceLateReplay: a replay that started well after its recording
// goes live and the guest carries on at once. Its QEMU's own real-time clock
// (QEMU_CLOCK_VIRTUAL_RT outside replay) is behind the values the replay read
// from the log by as much; the idle guest waits on an icount warp timer armed in
// the recording's time, which fired that much later (measured: 20.5 s after
// going live with the replay started 15 s late) until the switch carried the
// clock on from the log.
func TestGoLiveInPlaceLateReplay(t *testing.T) {
	const late = 10 * time.Second
	ctx, _, r := inPlaceTest(t, late)
	dir := r.dir
	_, rep, err := GoLive(ctx, GoLiveConfig{
		Replay: r.mp, Feed: r.feed, LogPath: r.backupLog, AckedOffset: r.acked,
		Record: Config{RRFile: filepath.Join(dir, "live.rr")}, InPlace: true, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("GoLive in place: %v", err)
	}
	t.Logf("in place: park %s (switch %s) total %s", rep.Park, rep.Switch, rep.Total)
	// The guest prints a counter line every second of its time.
	if first := r.checkLive(ctx, t); first > late/2 {
		t.Fatalf("the guest printed its next counter line %s after going live; the replay started %s after the recording", first, late)
	}
}

// checkLive checks that the guest carries on from the replay: on the same
// console, no reboot, the counter continuing, and that it answers ARP
// through the replay's NIC. It returns how long after it was called the
// first new counter line came.
func (r *inPlaceRun) checkLive(ctx context.Context, t *testing.T) time.Duration {
	t.Helper()
	lastBefore := lastCounter(t, r.repCon)
	var con []byte
	t0 := time.Now()
	var first time.Duration
	for deadline := t0.Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		con, _ = os.ReadFile(r.rep.ConsoleLog)
		c := counters(con)
		if first == 0 && c[len(c)-1].n > lastBefore.n {
			first = time.Since(t0)
		}
		if c[len(c)-1].n >= lastBefore.n+3 {
			break
		}
	}
	t.Logf("live: the first new counter line %s after going live, the third %s after", first.Round(time.Millisecond), time.Since(t0).Round(time.Millisecond))
	checkCounterCarriesOn(t, con, lastBefore)
	replies := 0
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.After(30 * time.Second); replies < 20; {
		select {
		case <-tick.C:
			r.nic.ask()
		case _, ok := <-r.nic.frames:
			if !ok {
				t.Fatal("NIC socket closed")
			}
			replies++
		case <-deadline:
			t.Fatalf("the live VM sent %d frames in 30 s", replies)
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	return first
}

// checkNewLogReplays saves a snapshot of the live VM m (stopping it; a
// snapshot refused while events are in flight is retried after letting it run
// a little), continues it (running live first when it was stopped), lets it run
// with network input, stops QEMU, which ends the log, and replays liveLog from
// the snapshot: the replay must print what the live VM printed after the
// snapshot and reach the log's end.
func (r *inPlaceRun) checkNewLogReplays(ctx context.Context, t *testing.T, m *Machine, liveLog string, eng Engine, live func()) {
	t.Helper()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	for tries := 0; ; tries++ {
		out, err := m.HMP(ctx, "savevm relive")
		if err != nil {
			t.Fatal(err)
		}
		if out = strings.TrimSpace(out); out == "" {
			t.Logf("snapshot saved while recording after %d tries", tries+1)
			break
		} else if !strings.Contains(out, savevmBusy) || tries > 100 {
			t.Fatalf("savevm while recording: %s", out)
		}
		if err := m.Cont(ctx); err != nil {
			t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond)
		if err := m.Pause(ctx); err != nil {
			t.Fatal(err)
		}
	}
	atSnap, _ := os.ReadFile(r.rep.ConsoleLog)
	if err := m.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if live != nil {
		live()
	}
	tick := time.NewTicker(20 * time.Millisecond)
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); <-tick.C {
		r.nic.ask()
	}
	tick.Stop()
	if err := m.Stop(ctx, 5*time.Second); err != nil {
		t.Fatalf("stop live: %v", err)
	}
	liveCon, _ := os.ReadFile(r.rep.ConsoleLog)
	after := liveCon[len(atSnap):]
	if len(counters(after)) < 3 {
		t.Fatalf("the live VM printed %d counter lines after the snapshot: %q", len(counters(after)), after)
	}

	again := baseConfig(t, r.dir, "again", ModeReplay)
	again.Binary = eng.Binary
	again.RRFile, again.RRSnapshot, again.SnapshotDrive = liveLog, "relive", r.rep.SnapshotDrive
	again.NIC = &NIC{MAC: r.rep.NIC.MAC, SocketPath: filepath.Join(r.dir, "again-a.sock"), LocalPath: filepath.Join(r.dir, "again-q.sock")}
	ra := startMachine(t, again)
	// The live VM ran a few seconds after the snapshot; its replay takes about as long.
	select {
	case <-ra.Exited():
	case <-time.After(2 * time.Minute):
		got, _ := os.ReadFile(again.ConsoleLog)
		ri, err := ra.QueryReplay(ctx)
		t.Fatalf("the replay of the new log did not reach its end in 2 minutes: at %+v (%v), console %q, want %q", ri, err, got, after)
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	if err := ra.ExitErr(); err != nil {
		t.Errorf("the replay of the new log exited with %v (see %s)", err, filepath.Join(r.dir, "again.log"))
	}
	got, _ := os.ReadFile(again.ConsoleLog)
	if !bytes.Equal(got, after) {
		t.Fatalf("the new log replayed from the snapshot printed %q, the live VM printed %q", got, after)
	}
	t.Logf("the new log replayed from the snapshot: %d console bytes identical (%d counter lines)", len(got), len(counters(got)))
}

func lastCounter(t *testing.T, con []byte) counterLine {
	t.Helper()
	c := counters(con)
	if len(c) == 0 {
		t.Fatal("no counter on the console")
	}
	return c[len(c)-1]
}

// checkCounterCarriesOn fails unless the counter lines of con continue from
// last: each one more than the one before, the uptime never going back, no
// boot message after it.
func checkCounterCarriesOn(t *testing.T, con []byte, last counterLine) {
	t.Helper()
	all := counters(con)
	i := len(all) - 1
	for i >= 0 && all[i] != last {
		i--
	}
	if i < 0 {
		t.Fatalf("counter %+v is not on the console any more", last)
	}
	after := all[i+1:]
	if len(after) < 3 {
		t.Fatalf("%d counter lines after going live", len(after))
	}
	prev := last
	for _, c := range after {
		if c.n != prev.n+1 || c.uptime < prev.uptime {
			t.Errorf("counter %+v follows %+v", c, prev)
		}
		prev = c
	}
	tail := con[bytes.Index(con, []byte(fmt.Sprintf("ftguest counter %d uptime", last.n))):]
	for _, bad := range []string{"Linux version", "ftguest ready", "ftguest init"} {
		if bytes.Contains(tail, []byte(bad)) {
			t.Errorf("console contains %q after going live: the guest rebooted", bad)
		}
	}
}
