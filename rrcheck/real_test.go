package rrcheck

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/qemu"
)

// need skips the test when a tool or file is missing, unless
// FTVMD_REQUIRE_QEMU=1, which turns the skip into a failure (as in qemu/).
func need(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	if os.Getenv("FTVMD_REQUIRE_QEMU") == "1" {
		t.Fatalf("%s: %v (FTVMD_REQUIRE_QEMU=1)", what, err)
	}
	t.Skipf("%s: %v", what, err)
}

func abs(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(rel)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// flushLib is the repo's built flush library, or one compiled from its source.
func flushLib(t *testing.T, dir string) string {
	t.Helper()
	if p := abs(t, "../build/libftflush.so"); fileExists(p) {
		return p
	}
	_, err := exec.LookPath("gcc")
	need(t, "gcc (to build the flush library)", err)
	out := filepath.Join(dir, "libftflush.so")
	if b, err := exec.Command("gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", out, "../qemu/flush/ftflush.c", "-ldl", "-lpthread").CombinedOutput(); err != nil {
		t.Fatalf("build flush library: %v\n%s", err, b)
	}
	return out
}

func fileExists(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular()
}

// shortDir is a temp dir with a short path: unix socket paths are limited to
// 108 bytes and t.TempDir's can be longer.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "ftrc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// record boots the lab guest in record mode the way the agent's primary does
// (dgram NIC, console file, flush library, a qcow2 disk behind blkreplay with a
// pre-record copy), stops it cleanly once its console counter reached 3 and
// leaves a run directory with record.json.
func record(t *testing.T, dir string) { recordPausing(t, dir, 0) }

// recordPausing records the lab guest's boot into dir, as record does; with pause
// > 0 the guest is paused (QMP stop) for that long once it has printed counter 1,
// then resumed, as the agent does at a VM's log disk limit.
func recordPausing(t *testing.T, dir string, pause time.Duration) {
	t.Helper()
	kernel, initrd := abs(t, "../build/guest/vmlinuz"), abs(t, "../build/guest/initrd.img")
	if !fileExists(kernel) || !fileExists(initrd) {
		need(t, "lab guest", fmt.Errorf("%s or %s missing (run test/setup.sh)", kernel, initrd))
	}
	eng, err := qemu.DetectEngine(context.Background(), "")
	need(t, "qemu", err)
	_, err = exec.LookPath("qemu-img")
	need(t, "qemu-img", err)
	img := filepath.Join(dir, "disk.qcow2")
	if b, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", img, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, b)
	}
	cfg := qemu.Config{
		Name: "rrc", Binary: eng.Binary, MemoryMB: 256,
		Kernel: kernel, Initrd: initrd, Append: "console=ttyS0 quiet panic=-1 ft.ip=10.9.9.9/24",
		Mode: qemu.ModeRecord, RRFile: filepath.Join(dir, "log.rr"), IcountShift: 4,
		NIC:        &qemu.NIC{MAC: "52:54:00:12:34:56", SocketPath: filepath.Join(dir, "net-agent.sock"), LocalPath: filepath.Join(dir, "net-qemu.sock")},
		QMPSocket:  filepath.Join(dir, "qmp.sock"),
		ConsoleLog: filepath.Join(dir, "console.log"),
		FlushLib:   flushLib(t, dir),
		Dir:        dir,
		Disks:      []qemu.Disk{{Path: img}},
	}
	// Frames the guest sends pile up unread here, as nobody answers them.
	sink, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: cfg.NIC.SocketPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	copyTo := filepath.Join(dir, "disk0.prerecord.qcow2")
	if b, err := os.ReadFile(img); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(copyTo, b, 0o600); err != nil {
		t.Fatal(err)
	}
	man, err := NewManifest(cfg, eng.Name, []string{"disk0.prerecord.qcow2"})
	if err != nil {
		t.Fatal(err)
	}
	if err := man.Write(dir); err != nil {
		t.Fatal(err)
	}
	m, err := qemu.New(cfg, qemu.WithLogger(slog.New(slog.NewTextHandler(testWriter{t}, nil))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := m.Start(ctx); err != nil {
		t.Fatalf("start recording: %v (see %s)", err, filepath.Join(dir, "rrc.log"))
	}
	t0 := time.Now()
	paused := pause == 0
	for {
		b, _ := os.ReadFile(cfg.ConsoleLog)
		if bytes.Contains(b, []byte("ftguest counter 3 ")) {
			break
		}
		if !paused && bytes.Contains(b, []byte("ftguest counter 1 ")) {
			if err := m.Pause(ctx); err != nil {
				t.Fatal(err)
			}
			time.Sleep(pause)
			if err := m.Cont(ctx); err != nil {
				t.Fatal(err)
			}
			paused = true
			t.Logf("paused the recording guest for %s", pause)
		}
		select {
		case <-ctx.Done():
			_ = m.Kill()
			t.Fatalf("the guest did not reach counter 3: console ends %q", tailOf(b, 300))
		case <-m.Exited():
			t.Fatalf("the recording QEMU exited: %v", m.ExitErr())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err := m.Stop(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("recorded %.1f s of boot", time.Since(t0).Seconds())
}

func tailOf(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// TestRealCheck records the lab guest's boot and checks it: deterministic. The
// same recording with one console byte changed must be reported as diverged at
// that byte.
func TestRealCheck(t *testing.T) {
	if testing.Short() {
		t.Skip("records and replays a guest boot (about a minute)")
	}
	dir := shortDir(t)
	record(t, dir)
	rec, err := FromDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	pre, err := os.ReadFile(rec.DiskCopies[0])
	if err != nil {
		t.Fatal(err)
	}
	cpus := ""
	if runtime.NumCPU() > 1 {
		cpus = "1"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	progress := 0
	res, err := Check(ctx, Config{Recording: rec, CPUs: cpus, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil)),
		Progress: func(Progress) { progress++ }})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("check:\n%s", res)
	if res.Verdict != Deterministic || res.End != EndLogEnd {
		t.Fatalf("verdict %s (%s), want deterministic at the end of the log: %q", res.Verdict, res.End, res.Reasons)
	}
	// Paused at the logged shutdown, the replay stops between the shutdown's icount
	// and the log's last instruction (Outcome.ShutdownIcount).
	if lo := res.ShutdownIcount; res.RecordedIcount == 0 || lo == 0 || res.ReplayedIcount < lo || res.ReplayedIcount > res.RecordedIcount {
		t.Fatalf("icount recorded %d (shutdown at %d) replayed %d", res.RecordedIcount, lo, res.ReplayedIcount)
	}
	if !res.Console.Identical || res.Console.RecordBytes == 0 {
		t.Fatalf("console %+v", res.Console)
	}
	if res.LogCounts["CHAR_WRITE"] == 0 || res.EmittedFrames != 0 {
		t.Fatalf("log counts %v, emitted %d", res.LogCounts, res.EmittedFrames)
	}
	if progress == 0 && res.ReplaySeconds > 2 {
		t.Errorf("no progress report in a %.1f s replay", res.ReplaySeconds)
	}
	if res.WorkDir != "" {
		t.Errorf("a deterministic check kept its temporary files in %s", res.WorkDir)
	}
	if post, err := os.ReadFile(rec.DiskCopies[0]); err != nil || !bytes.Equal(pre, post) {
		t.Errorf("the replay changed the pre-record copy (%v)", err)
	}

	// A log cut short, or one whose header QEMU never finished, is refused with
	// the reason before any QEMU starts.
	full := mustRead(t, rec.Log)
	for _, bad := range []struct {
		name string
		log  []byte
		want string
	}{
		{"cut", full[:len(full)/2], "truncated"},
		{"unfinished", append(make([]byte, 4), full[4:]...), "still recording it or was killed"},
	} {
		p := filepath.Join(dir, bad.name+".rr")
		if err := os.WriteFile(p, bad.log, 0o600); err != nil {
			t.Fatal(err)
		}
		r := rec
		r.Log = p
		if _, err := Check(ctx, Config{Recording: r}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s log: %v, want an error saying %q", bad.name, err, bad.want)
		} else {
			t.Logf("%s log: %v", bad.name, err)
		}
	}

	// One console byte changed: the check must say where.
	con := mustRead(t, rec.Console)
	at := bytes.Index(con, []byte("ftguest counter 2 "))
	if at < 0 {
		t.Fatalf("no counter 2 on the console")
	}
	at += len("ftguest counter ")
	con[at] = '9'
	bad := filepath.Join(dir, "console.tampered")
	if err := os.WriteFile(bad, con, 0o600); err != nil {
		t.Fatal(err)
	}
	rec.Console = bad
	// Given relative to the working directory (`ftvmd rr check .`), the log
	// is still found by the QEMU that runs in the work directory.
	t.Chdir(dir)
	rec.Log = filepath.Base(rec.Log)
	work := filepath.Join(dir, "work")
	res, err = Check(ctx, Config{Recording: rec, CPUs: cpus, WorkDir: work, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("check with a tampered console:\n%s", res)
	if res.Verdict != Diverged || res.Console.FirstDiff != at || !strings.Contains(res.Console.RecordExcerpt, "counter 9") ||
		!strings.Contains(res.Console.ReplayExcerpt, "counter 2") || res.WorkDir != work {
		t.Fatalf("tampered console: %+v", res)
	}
	if !fileExists(filepath.Join(work, ReplayConsole)) {
		t.Fatal("the replay console was not left in the work dir")
	}
}

// TestRealCheckPausedRecording: a recording whose guest was paused and resumed (the
// primary does so at its log disk limit) replays deterministically.
func TestRealCheckPausedRecording(t *testing.T) {
	if testing.Short() {
		t.Skip("records and replays a guest boot (about a minute)")
	}
	dir := shortDir(t)
	recordPausing(t, dir, 2*time.Second)
	rec, err := FromDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	cpus := ""
	if runtime.NumCPU() > 1 {
		cpus = "1"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := Check(ctx, Config{Recording: rec, CPUs: cpus, Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("check:\n%s", res)
	if res.Verdict != Deterministic || res.End != EndLogEnd || !res.Console.Identical {
		t.Fatalf("verdict %s (%s): %q", res.Verdict, res.End, res.Reasons)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPinProcess pins a real process and reads its affinity back from /proc.
func TestPinProcess(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skipf("no sleep: %v", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	set, err := ParseCPUList("0")
	if err != nil {
		t.Fatal(err)
	}
	if err := pinProcess(cmd.Process.Pid, set); err != nil {
		t.Fatal(err)
	}
	st := string(mustRead(t, fmt.Sprintf("/proc/%d/status", cmd.Process.Pid)))
	if !strings.Contains(st, "Cpus_allowed_list:\t0\n") {
		i := strings.Index(st, "Cpus_allowed_list")
		t.Fatalf("affinity not set: %q", st[i:min(len(st), i+40)])
	}
	if err := pinProcess(1<<30, set); err == nil {
		t.Fatal("pinning a process that does not exist succeeded")
	}
}
