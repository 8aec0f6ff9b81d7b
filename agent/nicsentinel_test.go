package agent

import (
	"context"
	"encoding/binary"
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

// fakeDump writes what QEMU's filter-dump writes to the capture FIFO: a pcap header,
// then one record per transmitted frame.
type fakeDump struct {
	t *testing.T
	f *os.File
}

func newFakeDump(t *testing.T, path string) *fakeDump {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	h := binary.LittleEndian.AppendUint32(nil, 0xa1b2c3d4)
	h = binary.LittleEndian.AppendUint16(h, 2)
	h = binary.LittleEndian.AppendUint16(h, 4)
	h = binary.LittleEndian.AppendUint64(h, 0)
	h = binary.LittleEndian.AppendUint32(h, 69632)
	h = binary.LittleEndian.AppendUint32(h, 1)
	if _, err := f.Write(h); err != nil {
		t.Fatal(err)
	}
	return &fakeDump{t: t, f: f}
}

func (d *fakeDump) frame(p []byte) {
	if _, err := d.f.Write(nicRecord(p)); err != nil {
		d.t.Fatal(err)
	}
}

// nicRecord is one pcap record holding frame p.
func nicRecord(p []byte) []byte {
	r := binary.LittleEndian.AppendUint64(nil, 0) // timestamp
	r = binary.LittleEndian.AppendUint32(r, uint32(len(p)))
	r = binary.LittleEndian.AppendUint32(r, uint32(len(p)))
	return append(r, p...)
}

func nicFrame(i int) []byte {
	return []byte(strings.Repeat("frame ", 10) + string(rune('a'+i%26)) + strings.Repeat("x", i))
}

func testNICBackup(t *testing.T) (*backup, *fakeDump, *logCopy) {
	t.Helper()
	a := testAgent(t, "hostb", "")
	logs := captureLog(t, a)
	dir := t.TempDir()
	m, err := qemu.New(qemu.Config{Name: "vm1", ConsoleLog: filepath.Join(dir, "console.log")}, qemu.WithLogger(a.log))
	if err != nil {
		t.Fatal(err)
	}
	b := &backup{a: a, spec: vmspec.Spec{Name: "vm1"}, log: a.log, dir: dir, finished: make(chan struct{}), m: m,
		positions: newReplayPositions()}
	if err := b.newLife(); err != nil {
		t.Fatal(err)
	}
	if err := b.life.start(0, "hosta", false); err != nil {
		t.Fatal(err)
	}
	if err := b.openNICCapture(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.cleanups.run(b.log) })
	return b, newFakeDump(t, b.nicCap.Path()), logs
}

func waitStatus(t *testing.T, b *backup, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: status %+v", what, b.status())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The backup's NIC sentinel, wired: it reads its replay's capture FIFO and the
// primary's digests; matching frames are counted as checked, and a frame that
// differs makes the backup step down, saying which frame and where.
// Under each frame checksum the agents negotiate: the backup computes its replay's
// with the one the primary's digests carry.
func TestBackupNICSentinelStepsDownOnDivergence(t *testing.T) {
	for _, name := range []string{sentinel.HashCRC64, sentinel.HashCRC32Pair} {
		t.Run("hash="+map[string]string{sentinel.HashCRC64: "crc64"}[name]+name, func(t *testing.T) { testNICSentinelStepsDown(t, name) })
	}
}

func testNICSentinelStepsDown(t *testing.T, hashName string) {
	b, dump, logs := testNICBackup(t)
	hash, ok := sentinel.HashFunc(hashName)
	if !ok {
		t.Fatalf("checksum %q unknown", hashName)
	}
	b.nicHash = hash
	b.positions.add(7000, 2_000_000)
	b.replayed = 2_000_000
	prim := make(chan logging.NICDigests, 16)
	recvDone := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); b.checkNIC(ctx, prim, recvDone) }()

	digest := func(first int, at int64, frames ...[]byte) logging.NICDigests {
		m := logging.NICDigests{First: uint64(first), At: at}
		for _, f := range frames {
			m.Frames = append(m.Frames, logging.NICFrame{Len: uint32(len(f)), Hash: hash(f)})
		}
		return m
	}
	// The primary's digests first for some, the replay's frames first for others.
	prim <- digest(0, 100, nicFrame(0), nicFrame(1), nicFrame(2))
	for i := range 6 {
		dump.frame(nicFrame(i))
	}
	prim <- digest(3, 200, nicFrame(3), nicFrame(4), nicFrame(5))
	waitStatus(t, b, "six matching frames", func() bool { st := b.status(); return st.NICChecked == 6 && st.NICFrames == 6 })
	if st := b.status(); st.State != "replaying" || st.Divergence != "" || st.NICSkipped != 0 {
		t.Fatalf("matching frames: %+v", st)
	}

	// Frame 6 differs in one byte.
	bad := nicFrame(6)
	bad[3] ^= 0x10
	prim <- digest(6, 4242, nicFrame(6))
	dump.frame(bad)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the NIC sentinel did not fire")
	}
	st := b.status()
	for _, w := range []string{"replay diverged", "NIC frame #6", "log held 4242", "icount 2000000", "log offset 7000"} {
		if !strings.Contains(st.Divergence, w) {
			t.Fatalf("divergence %q lacks %q", st.Divergence, w)
		}
	}
	if st.State != "failed" || !strings.Contains(st.Detail, "stepped down") {
		t.Fatalf("after a divergence: state %q detail %q", st.State, st.Detail)
	}
	waitLog(t, logs, "WARN", "replay diverged", "frame=6")
}

// Once the log channel has ended, the replay may go live and transmit frames of a
// new execution under numbers the dead primary used: the checker stops comparing.
func TestBackupNICSentinelStopsWithTheChannel(t *testing.T) {
	b, dump, _ := testNICBackup(t)
	prim := make(chan logging.NICDigests, 16)
	recvDone := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); b.checkNIC(ctx, prim, recvDone) }()
	prim <- logging.NICDigests{First: 0, At: 1, Frames: []logging.NICFrame{{Len: 60, Hash: 1}}}
	time.Sleep(20 * time.Millisecond)
	close(recvDone)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the NIC checker ran on after the channel ended")
	}
	// Differs from the digest: never compared. The checker may have closed the
	// capture's read end by now, so the write may fail with EPIPE; either way
	// nothing may be compared.
	_, _ = dump.f.Write(nicRecord(nicFrame(0)))
	time.Sleep(20 * time.Millisecond)
	if st := b.status(); st.Divergence != "" || st.State != "replaying" {
		t.Fatalf("after the channel ended: %+v", st)
	}
}

// A full queue of the primary's digests drops them on the receiver's goroutine,
// never blocks it, and counts them.
func TestBackupNICQueueDrops(t *testing.T) {
	b, _, _ := testNICBackup(t)
	q := make(chan logging.NICDigests, 1)
	on := b.onNIC(q)
	on(logging.NICDigests{})
	on(logging.NICDigests{})
	on(logging.NICDigests{})
	if st := b.status(); st.NICDropped != 2 {
		t.Fatalf("dropped %d, want 2", st.NICDropped)
	}
}

// The frame checksum a backup answers a primary's hello with: the one offered if it
// knows it, else CRC-64, which is also what a primary that offers none (an older
// one) computes. The primary side takes the reply's (primary.go) and gives up NIC
// digests for a name it does not know.
func TestNICHashFor(t *testing.T) {
	for _, c := range []struct{ offered, want string }{
		{"", sentinel.HashCRC64},
		{sentinel.HashCRC32Pair, sentinel.HashCRC32Pair},
		{"blake3", sentinel.HashCRC64},
	} {
		if got := nicHashFor(peerHello{NICHash: c.offered}); got != c.want {
			t.Errorf("offered %q: answered %q, want %q", c.offered, got, c.want)
		}
	}
}
