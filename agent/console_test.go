package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/qemu"
	"github.com/ftvmd/ftvmd/sentinel"
	"github.com/ftvmd/ftvmd/vmspec"
)

// The backup's sentinel, wired: it reads its replay's console file as it grows and
// the primary's marks; matching consoles are counted as checked, and one byte that
// differs makes the backup step down, saying what differed and where.
func TestBackupSentinelStepsDownOnDivergence(t *testing.T) {
	a := testAgent(t, "hostb", "")
	dir := t.TempDir()
	console := filepath.Join(dir, "console.log")
	m, err := qemu.New(qemu.Config{Name: "vm1", ConsoleLog: console}, qemu.WithLogger(a.log))
	if err != nil {
		t.Fatal(err)
	}
	logs := captureLog(t, a)
	b := &backup{a: a, spec: vmspec.Spec{Name: "vm1"}, log: a.log, dir: dir, finished: make(chan struct{}), m: m,
		positions: newReplayPositions()}
	if err := b.newLife(); err != nil {
		t.Fatal(err)
	}
	if err := b.life.start(0, "hosta", false); err != nil {
		t.Fatal(err)
	}
	b.positions.add(5000, 1_000_000)
	b.replayed = 1_000_000
	marks := make(chan logging.ConsoleMark, 64)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); b.checkConsole(ctx, marks) }()

	// The primary's console, and the same on the replay.
	var crc uint32
	var n int64
	write := func(s string) {
		f, err := os.OpenFile(console, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(s); err != nil {
			t.Fatal(err)
		}
		f.Close()
		crc, n = sentinel.Update(crc, []byte(s)), n+int64(len(s))
		marks <- logging.ConsoleMark{Bytes: n, CRC: crc}
	}
	write("Linux version 6.1\n")
	write("ftguest ready\n")
	deadline := time.Now().Add(5 * time.Second)
	for b.status().ConsoleChecked != n {
		if time.Now().After(deadline) {
			t.Fatalf("checked %d of %d matching console bytes", b.status().ConsoleChecked, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if st := b.status(); st.State != "replaying" || st.Divergence != "" {
		t.Fatalf("matching consoles: %q %q", st.State, st.Divergence)
	}

	b.testDiverge()
	write("seq 1 ok\n")
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the sentinel did not fire")
	}
	st := b.status()
	if st.State != "failed" || !strings.Contains(st.Detail, "stepped down") || !strings.Contains(st.Divergence, "replay diverged") ||
		!strings.Contains(st.Divergence, "icount 1000000") || !strings.Contains(st.Divergence, "log offset 5000") {
		t.Fatalf("after a divergence: state %q detail %q divergence %q", st.State, st.Detail, st.Divergence)
	}
	waitLog(t, logs, "WARN", "replay diverged", "icount=1000000")
}
