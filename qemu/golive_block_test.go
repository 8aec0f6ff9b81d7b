package qemu

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/replay"
)

// TestGoLiveBlockInFlight cuts a real disk guest's log between a block request's
// issue and its completion (just before an ASYNC_BLOCK event, as when the primary
// dies while a write is in flight). Without completions after the cut the replay
// holds the request forever and savevm is refused; with GoLiveConfig.PendingBlocks
// the replay completes it, parks, and the VM goes live.
func TestGoLiveBlockInFlight(t *testing.T) {
	if testing.Short() {
		t.Skip("records and replays a guest with a disk (a minute)")
	}
	requireQEMU(t, "gcc")
	if k, _ := guestFiles(t); k == "" {
		t.Skip("needs the lab guest in build/guest (test/guest/build.sh)")
	}
	dir := shortDir(t)
	lib := buildFlushLib(t, dir)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// Record the guest's boot with a disk: the kernel's partition scan and ftguest
	// read it, so the log holds block completions.
	img0 := filepath.Join(dir, "disk0.qcow2")
	if b, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img0, "64M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, b)
	}
	copyFile := func(dst string) string {
		b, err := os.ReadFile(img0)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return dst
	}
	rec := baseConfig(t, dir, "rec", ModeRecord)
	rec.Disks = []Disk{{Path: copyFile(filepath.Join(dir, "rec.qcow2"))}}
	rec.FlushLib = lib
	mr := startMachine(t, rec)
	for {
		if ctx.Err() != nil {
			t.Fatal("recorded guest never got ready")
		}
		if b, _ := os.ReadFile(rec.ConsoleLog); bytes.Contains(b, []byte("ftguest ready")) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := mr.Stop(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// Cut just before the last ASYNC_BLOCK that follows an INSTRUCTION event: the
	// request it completes was issued before the cut.
	f, err := os.Open(rec.RRFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d := replay.NewDecoder(bufio.NewReader(io.NewSectionReader(f, LogHeaderSize, 1<<40)), LogHeaderSize)
	var (
		prev, cutEv replay.Event
		icount      uint64
		cutIcount   uint64
		completed   = map[uint64]int64{}
	)
	for {
		ev, err := d.Next()
		if err != nil {
			break
		}
		if ev.Kind == replay.KindAsyncBlock {
			if prev.Kind == replay.KindInstruction {
				cutEv, cutIcount = ev, icount
			}
			completed[ev.ID] = ev.Offset
		}
		icount += uint64(ev.Instructions)
		prev = ev
	}
	if cutEv.Kind != replay.KindAsyncBlock {
		t.Fatal("no ASYNC_BLOCK after an INSTRUCTION event in the recorded log")
	}
	cut := cutEv.Offset
	pending := func(int64) []uint64 {
		var next uint64
		for id, off := range completed {
			if off < cut && id+1 > next {
				next = id + 1
			}
		}
		var ids []uint64
		for id := uint64(0); id < next; id++ {
			if off, ok := completed[id]; !ok || off >= cut {
				ids = append(ids, id)
			}
		}
		for i := uint64(0); i < 8; i++ {
			ids = append(ids, next+i)
		}
		return ids
	}
	t.Logf("cut at %d (icount %d) before ASYNC_BLOCK id %d; offering %v", cut, cutIcount, cutEv.ID, pending(cut))

	log, err := os.ReadFile(rec.RRFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, withPending := range []bool{false, true} {
		name := map[bool]string{false: "without", true: "with"}[withPending]
		t.Run(name, func(t *testing.T) {
			sub := filepath.Join(dir, name)
			if err := os.Mkdir(sub, 0o755); err != nil {
				t.Fatal(err)
			}
			backupLog := filepath.Join(sub, "backup.rr")
			if err := os.WriteFile(backupLog, log[:cut], 0o600); err != nil {
				t.Fatal(err)
			}
			feed, err := NewFeed(filepath.Join(sub, "feed.fifo"), backupLog, WithFeedLogger(testLogger(t)))
			if err != nil {
				t.Fatal(err)
			}
			defer feed.Close()
			feed.Notify(cut)
			disk := copyFile(filepath.Join(sub, "disk.qcow2"))
			rep := baseConfig(t, sub, "rep", ModeReplay)
			rep.RRFile = feed.Path()
			rep.SnapshotDrive = filepath.Join(sub, "snap.qcow2")
			rep.Disks = []Disk{{Path: disk}}
			mp := startMachine(t, rep)
			defer func() { _ = mp.Kill() }()
			live := baseConfig(t, sub, "live", ModeRecord)
			live.Disks = rep.Disks
			live.FlushLib = lib
			cfg := GoLiveConfig{Replay: mp, Feed: feed, LogPath: backupLog, AckedOffset: cut,
				Record: live, Tag: "golive", Logger: testLogger(t), SaveTimeout: 3 * time.Second}
			if withPending {
				cfg.PendingBlocks = pending
			}
			m, r, err := GoLive(ctx, cfg)
			if !withPending {
				if !errors.Is(err, ErrSnapshotBusy) {
					t.Fatalf("without completions: GoLive err %v, want ErrSnapshotBusy (the test cut no request in flight?)", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("with completions: GoLive: %v", err)
			}
			defer func() { _ = m.Kill(); <-m.Exited() }()
			if r.TargetIcount != cutIcount {
				t.Errorf("parked at icount %d, want %d", r.TargetIcount, cutIcount)
			}
			if st, err := m.Status(ctx); err != nil || st != "running" {
				t.Errorf("live status %q, %v", st, err)
			}
		})
	}
}
