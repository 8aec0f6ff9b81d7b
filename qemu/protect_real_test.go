package qemu

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/replay"
)

// TestSnapshotFeedReplay: protecting a running VM. A recording VM with a disk
// saves a snapshot while it runs on (its VM state in the snapshot drive, which
// the guest never writes); the disk as of the snapshot is copied out of the
// live image (qemu-img convert -U -l) and the snapshot drive copied as a file;
// a replay loads the snapshot and is fed the log from the snapshot's position
// (read from the VM state) through a FIFO, as a backup's replay is. It must
// print what the recording printed after the snapshot, byte for byte, and reach
// the log's end.
// snapRun is a recording lab guest with a disk that saved a snapshot while it
// ran on, and the base a backup gets from it: the disk as of the snapshot and a
// copy of the snapshot drive.
type snapRun struct {
	dir          string
	rec          Config
	mr           *Machine
	g            *guestNIC
	st           SnapshotReplayState
	atSnap       int64 // the console's size at the snapshot
	pause        time.Duration
	bdisk, bsnap string
	repDir       string
}

const snapTag = "ftvmd-protect"

func startSnapRun(ctx context.Context, t *testing.T, eng Engine, dir string) *snapRun {
	t.Helper()
	recDir, repDir := filepath.Join(dir, "p"), filepath.Join(dir, "b")
	for _, d := range []string{recDir, repDir} {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(dir, "disk.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", img, "64M")
	const tag = snapTag
	rec := baseConfig(t, dir, "rec", ModeRecord)
	rec.Binary, rec.LogStream = eng.Binary, true
	rec.SnapshotDrive = filepath.Join(dir, "rec-snap.qcow2")
	rec.Disks = []Disk{{Path: img}}
	var g *guestNIC
	rec.NIC, g = newGuestNIC(t, recDir)
	mr := startMachine(t, rec)
	waitCounters(ctx, t, rec.ConsoleLog, 3)

	// The pause: stop, savevm, cont (retrying while rr's async queue is busy).
	var pause time.Duration
	var atSnap int64
	for tries := 0; ; tries++ {
		t0 := time.Now()
		if err := mr.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		atSnap = fileSize(rec.ConsoleLog)
		out, err := mr.HMP(ctx, "savevm "+tag)
		if err != nil {
			t.Fatal(err)
		}
		if err := mr.Cont(ctx); err != nil {
			t.Fatal(err)
		}
		pause = time.Since(t0)
		if out = strings.TrimSpace(out); out == "" {
			t.Logf("snapshot saved while recording after %d tries; pause %s", tries+1, pause.Round(time.Millisecond))
			break
		} else if !strings.Contains(out, savevmBusy) || tries > 100 {
			t.Fatalf("savevm while recording: %s", out)
		}
		time.Sleep(5 * time.Millisecond)
	}
	st, err := ReadSnapshotReplayState(rec.SnapshotDrive, tag)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot: log offset %d (log now %d bytes), icount %d, VM state %d bytes", st.LogOffset, fileSize(rec.RRFile), st.Icount, st.VMStateBytes)
	// The log up to the snapshot's offset ends at an event boundary whose
	// instruction count (counted from boot) is the snapshot's: a backup's cut
	// points and a primary's lag, counted from there, are then absolute.
	head, err := os.ReadFile(rec.RRFile)
	if err != nil {
		t.Fatal(err)
	}
	cut := replay.NewCutter(LogHeaderSize, 0)
	if _, err := cut.Write(head[LogHeaderSize:st.LogOffset]); err != nil {
		t.Fatal(err)
	}
	if cut.Boundary() != st.LogOffset || cut.Icount() != st.Icount {
		t.Fatalf("the log before the snapshot ends at boundary %d icount %d; the snapshot says offset %d icount %d",
			cut.Boundary(), cut.Icount(), st.LogOffset, st.Icount)
	}

	// The backup's base while the guest runs on and writes its disk.
	bdisk, bsnap := filepath.Join(repDir, "disk.qcow2"), filepath.Join(repDir, "snap.qcow2")
	run(t, "qemu-img", "convert", "-U", "-f", "qcow2", "-O", "qcow2", "-l", "snapshot.name="+tag, img, bdisk)
	run(t, "qemu-img", "snapshot", "-c", tag, bdisk)
	run(t, "cp", rec.SnapshotDrive, bsnap)

	return &snapRun{dir: dir, rec: rec, mr: mr, g: g, st: st, atSnap: atSnap, pause: pause, bdisk: bdisk, bsnap: bsnap, repDir: repDir}
}

func TestSnapshotFeedReplay(t *testing.T) {
	eng := streamEngine(t)
	if k, _ := guestFiles(t); k == "" {
		t.Skip("needs the lab guest (build/guest)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := shortDir(t)
	r := startSnapRun(ctx, t, eng, dir)
	rec, mr, g, st, atSnap, pause, bdisk, bsnap, tag := r.rec, r.mr, r.g, r.st, r.atSnap, r.pause, r.bdisk, r.bsnap, snapTag
	repDir := r.repDir
	feed, err := NewFeed(filepath.Join(dir, "feed.fifo"), rec.RRFile, WithFeedStart(st.LogOffset),
		WithFeedPoll(5*time.Millisecond, func() (int64, error) { return fileSize(rec.RRFile), nil }), WithFeedLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { feed.Close() })
	rep := baseConfig(t, dir, "rep", ModeReplay)
	rep.Binary = eng.Binary
	rep.RRFile, rep.RRSnapshot, rep.SnapshotDrive = feed.Path(), tag, bsnap
	rep.Disks = []Disk{{Path: bdisk}}
	rep.NIC, _ = newGuestNIC(t, repDir)
	mp := startMachine(t, rep)

	// The recording runs on with network input and disk writes by the guest
	// (its counter), then ends its log.
	tick := time.NewTicker(20 * time.Millisecond)
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); <-tick.C {
		g.ask()
	}
	tick.Stop()
	if err := mr.Stop(ctx, 5*time.Second); err != nil {
		t.Fatalf("stop recording: %v", err)
	}
	recCon, _ := os.ReadFile(rec.ConsoleLog)
	want := recCon[atSnap:]
	select {
	case <-mp.Exited():
	case <-time.After(2 * time.Minute):
		got, _ := os.ReadFile(rep.ConsoleLog)
		ri, err := mp.QueryReplay(ctx)
		t.Fatalf("the replay from the snapshot did not reach the log's end: at %+v (%v), fed %d of %d, console %q, want %q",
			ri, err, feed.FedOffset(), fileSize(rec.RRFile), got, want)
	}
	got, _ := os.ReadFile(rep.ConsoleLog)
	if err := mp.ExitErr(); err != nil {
		t.Errorf("the replay from the snapshot exited with %v", err)
	}
	all, _ := os.ReadFile(rec.RRFile)
	after := replay.NewCutter(st.LogOffset, st.Icount)
	if _, err := after.Write(all[st.LogOffset:]); err != nil {
		t.Fatal(err)
	}
	if !after.SawEnd() {
		t.Errorf("the log from the snapshot has no END event")
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("the replay from the snapshot printed %q, the recording printed %q after it", got, want)
	}
	if len(counters(got)) < 3 {
		t.Fatalf("only %d counter lines after the snapshot", len(counters(got)))
	}
	t.Logf("replayed from the snapshot through the FIFO: %d console bytes identical (%d counter lines); pause %s",
		len(got), len(counters(got)), pause.Round(time.Millisecond))
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// waitCounters waits for the guest's ready line and n counter lines after it.
func waitCounters(ctx context.Context, t *testing.T, console string, n int) {
	t.Helper()
	for {
		con, _ := os.ReadFile(console)
		if i := bytes.Index(con, []byte("ftguest ready")); i >= 0 && len(counters(con[i:])) >= n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("guest not up: console %q", con)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestSnapshotFeedGoLive: a backup that started from a running VM's snapshot
// takes over when its primary dies. The log is copied from the snapshot's
// offset as it grows (as the backup agent receives it) and fed to a replay that
// loaded the snapshot; the recorder is SIGKILLed and the replay goes live in
// place from the copy's end, its cut found from the snapshot's offset and count:
// the guest carries on (no reboot), and its new log replays from a snapshot
// saved while it is live.
func TestSnapshotFeedGoLive(t *testing.T) {
	if testing.Short() {
		t.Skip("boots the guest and replays it twice")
	}
	eng := inPlaceEngine(t)
	if k, _ := guestFiles(t); k == "" {
		t.Skip("needs the lab guest (build/guest)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := shortDir(t)
	r := startSnapRun(ctx, t, eng, dir)

	backupLog := filepath.Join(dir, "backup.rr")
	feed, err := NewFeed(filepath.Join(dir, "feed.fifo"), backupLog, WithFeedStart(r.st.LogOffset), WithFeedLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { feed.Close() })
	copier := startTestCopier(t, r.rec.RRFile, backupLog, feed, r.st.LogOffset, r.st.Icount)
	rep := baseConfig(t, dir, "rep", ModeReplay)
	rep.Binary = eng.Binary
	rep.RRFile, rep.RRSnapshot, rep.SnapshotDrive = feed.Path(), snapTag, r.bsnap
	rep.Disks = []Disk{{Path: r.bdisk}}
	var nic *guestNIC
	rep.NIC, nic = newGuestNIC(t, r.repDir)
	mp := startMachine(t, rep)

	// The recording runs on with network input until the replay has caught up
	// with a few counter lines, then dies.
	tick := time.NewTicker(20 * time.Millisecond)
	for deadline := time.Now().Add(90 * time.Second); ; <-tick.C {
		r.g.ask()
		recCon, _ := os.ReadFile(r.rec.ConsoleLog)
		repCon, _ := os.ReadFile(rep.ConsoleLog)
		if len(counters(repCon)) >= 3 && bytes.Equal(repCon, recCon[r.atSnap:]) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replay from the snapshot did not catch up: %d console bytes, the recording %d after the snapshot", len(repCon), len(recCon)-int(r.atSnap))
		}
		_, _ = mp.QueryReplay(ctx) // wakes an idle replay's main loop
	}
	tick.Stop()
	if err := r.mr.Kill(); err != nil {
		t.Fatal(err)
	}
	<-r.mr.Exited()
	acked, err := copier.Finish()
	if err != nil {
		t.Fatalf("backup copier: %v", err)
	}
	repCon, _ := os.ReadFile(rep.ConsoleLog)
	last := lastCounter(t, repCon)

	liveLog := filepath.Join(dir, "live.rr")
	m, gl, err := GoLive(ctx, GoLiveConfig{
		Replay: mp, Feed: feed, LogPath: backupLog, AckedOffset: acked,
		Resume: replay.Mark{Offset: r.st.LogOffset, Icount: r.st.Icount},
		Record: Config{RRFile: liveLog}, InPlace: true, Logger: testLogger(t),
	})
	if err != nil {
		t.Fatalf("GoLive in place from a snapshot-started replay: %v", err)
	}
	t.Logf("live in place: cut %d icount %d (snapshot at %d, icount %d): park %s switch %s total %s",
		gl.CutOffset, gl.TargetIcount, r.st.LogOffset, r.st.Icount, gl.Park, gl.Switch, gl.Total)
	if m != mp || !gl.InPlace {
		t.Fatalf("GoLive did not go live in place")
	}
	ri, err := m.QueryReplay(ctx)
	if err != nil || ri.Mode != "record" || ri.Icount < gl.TargetIcount {
		t.Fatalf("query-replay %+v, %v; want record mode at icount >= %d", ri, err, gl.TargetIcount)
	}
	var con []byte
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		con, _ = os.ReadFile(rep.ConsoleLog)
		if c := counters(con); c[len(c)-1].n >= last.n+3 {
			break
		}
	}
	checkCounterCarriesOn(t, con, last)
	replies := 0
	tick = time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for deadline := time.After(30 * time.Second); replies < 5; {
		select {
		case <-tick.C:
			nic.ask()
		case <-nic.frames:
			replies++
		case <-deadline:
			t.Fatalf("the live VM answered %d ARP requests in 30 s", replies)
		}
	}
	t.Logf("live from the snapshot-started replay: the counter carries on from %d, %d ARP replies", last.n, replies)
}
