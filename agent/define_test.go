package agent

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/disk"
)

// `ftvmd vm define` refuses a disk whose qcow2 reads from a backing file, and says
// how to make a standalone image; the standalone image is accepted.
func TestDefineRefusesBackingFile(t *testing.T) {
	bin := needQemuImg(t)
	dir := t.TempDir()
	base, overlay := filepath.Join(dir, "base.qcow2"), filepath.Join(dir, "overlay.qcow2")
	for _, args := range [][]string{
		{"create", "-q", "-f", "qcow2", base, "4M"},
		{"create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", overlay},
	} {
		if out, err := exec.Command(bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
		}
	}
	a := testAgent(t, "hosta", "")
	spec := validSpec(t, "vm1")
	spec.Disk = overlay
	resp := a.handle(context.Background(), control.Request{Op: control.OpDefine, Spec: &spec})
	if resp.OK || !strings.Contains(resp.Error, "has a backing file") || !strings.Contains(resp.Error, "qemu-img convert -O qcow2 "+overlay) {
		t.Fatalf("define with an overlay: %+v, want a refusal with the qemu-img convert to run", resp)
	}
	t.Log(resp.Error)
	if _, err := a.specs.Load("vm1"); err == nil {
		t.Fatal("the refused spec was stored")
	}
	spec.Disk = base
	if resp := a.handle(context.Background(), control.Request{Op: control.OpDefine, Spec: &spec}); !resp.OK {
		t.Fatalf("define with a standalone image: %+v", resp)
	}
}

// protect refuses it too (a spec stored before this check, or an image changed after
// define), before it claims an epoch or contacts the backup.
func TestProtectRefusesBackingFile(t *testing.T) {
	bin := needQemuImg(t)
	dir := t.TempDir()
	ext := filepath.Join(dir, "external.qcow2")
	if out, err := exec.Command(bin, "create", "-q", "-f", "qcow2", "-o", "data_file="+filepath.Join(dir, "data.raw"), ext, "4M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v\n%s", err, out)
	}
	a := testAgent(t, "hosta", "")
	store := disk.NewMemStore()
	a.store = store
	p := testPrimary(t, a, "127.0.0.1:1") // nothing listens: a dial would fail differently
	p.spec.Disk = ext
	err := p.connectBackup(context.Background())
	if !errors.Is(err, disk.ErrNotStandalone) || !strings.Contains(err.Error(), "external data file") {
		t.Fatalf("connectBackup: %v, want %v", err, disk.ErrNotStandalone)
	}
	if c, err := store.Current(context.Background(), "vm1"); !errors.Is(err, disk.ErrNoEpoch) {
		t.Fatalf("an epoch was claimed for a refused image: %+v %v", c, err)
	}
}

// needQemuImg returns qemu-img's path, or skips (fails with FTVMD_REQUIRE_QEMU=1).
func needQemuImg(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("qemu-img")
	if err != nil {
		if os.Getenv("FTVMD_REQUIRE_QEMU") == "1" {
			t.Fatalf("qemu-img not found and FTVMD_REQUIRE_QEMU=1: %v", err)
		}
		t.Skipf("qemu-img not found: %v", err)
	}
	return p
}
