package qemu

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMachineLifecycle(t *testing.T) {
	requireQEMU(t)
	dir := shortDir(t)
	cfg := baseConfig(t, dir, "life", ModeRecord)
	cfg.FlushLib = buildFlushLib(t, dir)
	cfg.StartPaused = true
	cfg.SnapshotDrive = filepath.Join(dir, "snap.qcow2")
	cfg.NIC = &NIC{MAC: "52:54:00:00:00:09", SocketPath: filepath.Join(dir, "a.sock"), LocalPath: filepath.Join(dir, "q.sock")}
	placed := 0
	m := startMachine(t, cfg, WithCgroup(func(pid int) error { placed = pid; return nil }))
	if placed != m.PID() || placed == 0 {
		t.Fatalf("cgroup hook got pid %d, machine pid %d", placed, m.PID())
	}
	if regularFile(cfg.SnapshotDrive) != nil {
		t.Fatal("snapshot drive was not created")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := m.Start(ctx); !errors.Is(err, ErrAlreadyStarted) {
		t.Fatalf("second Start: %v", err)
	}
	// -S leaves QEMU 7.2 in "prelaunch" until the first cont.
	if st, err := m.Status(ctx); err != nil || st != "prelaunch" {
		t.Fatalf("status = %q, %v; want prelaunch", st, err)
	}
	if err := m.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := m.Status(ctx); err != nil || st != "running" {
		t.Fatalf("status = %q, %v; want running", st, err)
	}
	ri, err := m.QueryReplay(ctx)
	if err != nil || ri.Mode != "record" || ri.Filename != cfg.RRFile {
		t.Fatalf("query-replay = %+v, %v", ri, err)
	}
	out, err := m.HMP(ctx, "info replay")
	if err != nil || !strings.Contains(out, "Recording") {
		t.Fatalf("info replay = %q, %v", out, err)
	}
	if err := m.AnnounceSelf(ctx); err != nil {
		t.Fatalf("announce-self: %v", err)
	}
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := m.Wait(ctx); err != nil {
		t.Fatalf("exit: %v", err)
	}
	hdr := make([]byte, 4)
	f, err := os.Open(cfg.RRFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.ReadFull(f, hdr); err != nil || !bytes.Equal(hdr, logVersion[:]) {
		t.Fatalf("log header %x after Stop, want %x (QMP quit finishes the log)", hdr, logVersion)
	}
	if _, err := m.Status(ctx); !errors.Is(err, ErrExited) {
		t.Fatalf("status after exit: %v, want ErrExited", err)
	}
	if _, err := os.Stat(cfg.QMPSocket); !os.IsNotExist(err) {
		t.Fatalf("qmp socket left behind: %v", err)
	}
}

func TestStartFailureCleansUp(t *testing.T) {
	requireQEMU(t)
	dir := shortDir(t)
	cfg := baseConfig(t, dir, "fail", ModeNone)
	cfg.RRFile = ""
	m, err := New(cfg, WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	m.Handlers = m.Handlers.AppendAfter(ConnectQMPHandlerName, Handler{Name: "fail", Fn: func(context.Context, *Machine) error { return boom }})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.Start(ctx); !errors.Is(err, boom) || !strings.Contains(err.Error(), "qemu start fail") {
		t.Fatalf("Start = %v", err)
	}
	select {
	case <-m.Exited():
	case <-time.After(5 * time.Second):
		t.Fatal("process still running after failed Start")
	}
	if _, err := os.Stat(cfg.QMPSocket); !os.IsNotExist(err) {
		t.Fatalf("qmp socket left behind: %v", err)
	}
}

func TestFeed(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "rr.bin")
	body := bytes.Repeat([]byte("0123456789abcdef"), 50000) // 800 KB > pipe buffer
	full := append(make([]byte, LogHeaderSize), body...)
	if err := os.WriteFile(src, full[:LogHeaderSize+100], 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := NewFeed(filepath.Join(dir, "feed"), src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Notify never blocks, even with no reader and more data than the pipe holds.
	done := make(chan struct{})
	go func() {
		f.Notify(LogHeaderSize + 100)
		f.Notify(5) // going backwards is ignored
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Notify blocked")
	}
	r, err := os.Open(f.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := os.WriteFile(src, full, 0o644); err != nil {
		t.Fatal(err)
	}
	f.Notify(int64(len(full)))
	// Fed but not read yet: the pipe holds bytes (a full pipe buffer at most).
	deadline := time.Now().Add(time.Second)
	for n, _ := f.Unread(); n == 0 && time.Now().Before(deadline); n, _ = f.Unread() {
		time.Sleep(time.Millisecond)
	}
	if n, ok := f.Unread(); !ok || n == 0 {
		t.Fatalf("Unread with an idle reader = %d, %v; want bytes waiting", n, ok)
	}
	got := make([]byte, 4+len(body))
	if _, err := io.ReadFull(r, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:4], logVersion[:]) || !bytes.Equal(got[4:], body) {
		t.Fatal("fed bytes differ from version + body")
	}
	deadline = time.Now().Add(time.Second)
	for f.FedOffset() != int64(len(full)) && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if f.FedOffset() != int64(len(full)) {
		t.Fatalf("FedOffset = %d, want %d", f.FedOffset(), len(full))
	}
	// Everything fed was read: nothing waits in the pipe.
	if n, ok := f.Unread(); !ok || n != 0 {
		t.Fatalf("Unread after reading everything = %d, %v; want 0, true", n, ok)
	}
	// The reader must not see EOF before Close.
	_ = r.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	if _, err := r.Read(make([]byte, 1)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read before Close = %v, want a timeout", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	_ = r.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := r.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read after Close = %v, want EOF", err)
	}
}

func TestFeedCloseWithoutReader(t *testing.T) {
	dir := t.TempDir()
	f, err := NewFeed(filepath.Join(dir, "feed"), filepath.Join(dir, "none"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(f.Path()); !os.IsNotExist(err) {
		t.Fatalf("fifo left behind: %v", err)
	}
}
