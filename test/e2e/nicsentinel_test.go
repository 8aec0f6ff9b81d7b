package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
	"github.com/ftvmd/ftvmd/lab"
)

// TestNICSentinel: the divergence sentinel's NIC half on a real pair. Under a
// bulk transfer both ways, the frames the replay's guest transmits match the
// primary's, frame by frame, and are counted as checked; then a real divergence
// that never reaches the console: the backup's copy of the disk differs in one
// record, which the guest reads and sends to a client. The primary's guest sends the
// record, the replay's another answer: the NIC sentinel finds that frame, the backup
// steps down saying which frame and where, and the primary serves on unprotected.
func TestNICSentinel(t *testing.T) {
	l := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	const (
		vm   = "nicsent"
		slot = 60000 // 29 MiB into the disk: nothing reads it at boot
		bulk = 30 * time.Second
	)
	t0 := time.Now()
	payload := "nic-sentinel-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	img := imageWithRecord(t, lab.HostA, vm, slot, payload)
	bound := protectGuest(ctx, t, l, vm, "--disk", img)
	// Boot replays slower than it records: on a loaded host the backup may need more
	// than a minute to catch up.
	waitCaughtUp(ctx, t, vm, bound, 2*time.Minute)
	t.Logf("protected and caught up after %s", time.Since(t0).Round(time.Second))

	// Healthy, under load: every frame the primary's guest sends is compared, none
	// differs.
	tr, err := bench.DriveGetPut(ctx, bench.LabTarget(), bulk)
	if err != nil {
		t.Fatalf("bulk transfer: %v", err)
	}
	t.Logf("bulk %s: %d MB guest->client, %d MB client->guest", bulk, tr.ToClientBytes>>20, tr.ToGuestBytes>>20)
	p := mustStatus(ctx, t, lab.HostA, vm)
	if p.NICFrames == 0 {
		t.Fatalf("the primary sent no NIC digests: %+v", p)
	}
	// The replay lags: wait until it has sent as many frames as the primary had.
	var b = mustStatus(ctx, t, lab.HostB, vm)
	deadline := time.Now().Add(time.Minute)
	for b.NICFrames < p.NICFrames {
		if b.Divergence != "" || b.State != "replaying" {
			t.Fatalf("a healthy pair under load: backup %s, %s", b.State, b.Divergence)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the replay sent %d frames a minute after the primary had sent %d", b.NICFrames, p.NICFrames)
		}
		time.Sleep(250 * time.Millisecond)
		b = mustStatus(ctx, t, lab.HostB, vm)
	}
	t.Logf("NIC sentinel under load: primary %d frames digested (%d dropped); replay %d frames, %d match, %d not compared, %d digest messages dropped",
		p.NICFrames, p.NICDropped, b.NICFrames, b.NICChecked, b.NICSkipped, b.NICDropped)
	if b.Divergence != "" || b.State != "replaying" {
		t.Fatalf("false divergence under load: %s %s", b.State, b.Divergence)
	}
	if b.NICChecked < p.NICFrames*9/10 {
		t.Fatalf("only %d of the primary's %d frames compared", b.NICChecked, p.NICFrames)
	}

	// A real divergence: the backup's disk copy holds another record.
	corruptBackupDisk(t, vm, payload)
	c, err := lab.NewClient(ctx, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := fmt.Sprintf("rec %d %s", slot, payload)
	if resp, err := c.Do(fmt.Sprintf("recget %d", slot), 30*time.Second); err != nil || resp != want {
		t.Fatalf("recget from the primary: %q %v, want %q", resp, err, want)
	}
	asked := time.Now()
	b = waitBackupDiverged(ctx, t, vm)
	t.Logf("sentinel fired %s after the reply: %s", time.Since(asked).Round(time.Millisecond), b.Divergence)
	for _, w := range []string{"NIC frame #", "icount", "log offset", "checksum"} {
		if !strings.Contains(b.Divergence, w) {
			t.Errorf("the divergence report lacks %q: %s", w, b.Divergence)
		}
	}
	if detail := waitSteppedDownPrimary(ctx, t, vm, t0, "diverged"); !strings.Contains(detail, "diverged") {
		t.Errorf("primary detail %q does not say the backup's replay diverged", detail)
	}
	if resp, err := c.Do("ping", 10*time.Second); err != nil || resp != "pong" {
		t.Fatalf("the VM does not serve after its backup stepped down: %q %v", resp, err)
	}
	blog, _ := os.ReadFile(lab.AgentLog(lab.HostB))
	if !strings.Contains(string(blog), `msg="replay diverged" `) || !strings.Contains(string(blog), "primary_checksum=") {
		t.Errorf("agent B's log has no WARN for the NIC divergence")
	}
	// Both agents are this build: they agreed on the hardware CRC pair.
	if !strings.Contains(string(blog), "checksum=crc32c+crc32") {
		t.Errorf("agent B's divergence WARN does not name the CRC-32C+CRC-32 checksum the agents should have agreed on")
	}
	t.Logf("test took %s", time.Since(t0).Round(time.Second))
}

// imageWithRecord makes the VM's disk on h: a 64 MiB qcow2 holding one valid
// ftguest record (test/guest/ftguest/disk.go) in slot.
func imageWithRecord(t *testing.T, h lab.Host, vm string, slot int64, payload string) string {
	t.Helper()
	rec := make([]byte, 512)
	copy(rec, "FTRC")
	binary.LittleEndian.PutUint64(rec[4:], uint64(slot))
	binary.LittleEndian.PutUint16(rec[12:], uint16(len(payload)))
	binary.LittleEndian.PutUint32(rec[14:], crc32.ChecksumIEEE([]byte(payload)))
	copy(rec[32:], payload)
	raw := filepath.Join(t.TempDir(), "disk.raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(64 << 20)
	if err == nil {
		_, err = f.WriteAt(rec, slot*512)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	img, err := lab.CreateImage(h, vm, "64M")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, img).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	return img
}

// corruptBackupDisk changes the record's payload in the backup's copy of the disk,
// under its replaying QEMU (which reads the data cluster through the page cache).
// The record header sits 32 bytes before its payload in the same cluster.
func corruptBackupDisk(t *testing.T, vm, payload string) {
	t.Helper()
	path := filepath.Join(lab.HostB.Dir, "run", vm+".backup", "disk.qcow2")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(b, []byte(payload))
	if at < 0 || bytes.Count(b, []byte(payload)) != 1 {
		t.Fatalf("the record is %d times in the backup's disk copy", bytes.Count(b, []byte(payload)))
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Another payload of the same length, its checksum fixed up: the record stays
	// valid, so the replay's guest takes the same path as the primary's (a branch
	// that differs moves the replay off its log at once, which shows as a stall)
	// and only the bytes it sends differ.
	other := []byte(strings.ToUpper(payload))
	if _, err := f.WriteAt(other, int64(at)); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE(other)), int64(at-32+14)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	t.Logf("backup's disk copy: record payload at file offset %d changed", at)
}
