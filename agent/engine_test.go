package agent

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ftvmd/ftvmd/qemu"
	"github.com/ftvmd/ftvmd/vmspec"
)

func TestCheckEngine(t *testing.T) {
	const own = "ftvmd-qemu 7.2+dfsg+ftvmd.3eb2a33405751a7f"
	for _, tc := range []struct {
		mine, primary string
		ok            bool
	}{
		{own, own, true},
		{own, "", true}, // a primary from before engines were named
		{own, "distribution QEMU 7.2.22", false},
		{"distribution QEMU 7.2.22", own, false},
		{own, "ftvmd-qemu 7.2+dfsg+ftvmd.0000000000000000", false},
	} {
		err := checkEngine(tc.mine, tc.primary)
		if tc.ok != (err == nil) {
			t.Errorf("checkEngine(%q, %q) = %v, want ok=%v", tc.mine, tc.primary, err, tc.ok)
		}
		if err != nil && !errors.Is(err, errEngineMismatch) {
			t.Errorf("error %v is not errEngineMismatch", err)
		}
	}
}

// A backup whose QEMU build differs from the primary's refuses the channel and says
// which builds differ, before it starts anything.
func TestBackupRefusesOtherEngine(t *testing.T) {
	ca := newTestCA(t)
	bk := testAgent(t, "hostb", ca.issue("hostb"))
	bk.engine = qemu.Engine{Name: "ftvmd-qemu 7.2+dfsg+ftvmd.bbbb", Patched: true}
	addr := servePeersTLS(t, bk)
	dir := t.TempDir()
	kernel, initrd := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initrd.img")
	for _, f := range []string{kernel, initrd} {
		if err := os.WriteFile(f, []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	spec := vmspec.Spec{Name: "vm1", Kernel: kernel, Initrd: initrd, MAC: "52:54:00:12:34:56"}
	spec.Normalize()
	r, err := helloAs(t, addr, ca.issue("hosta"), peerHello{Op: "backup", From: "hosta", Spec: spec, Engine: "distribution QEMU 7.2.22"})
	if err != nil {
		t.Fatal(err)
	}
	if r.OK || !strings.Contains(r.Error, errEngineMismatch.Error()) || !strings.Contains(r.Error, "distribution QEMU 7.2.22") {
		t.Fatalf("backup answered %+v, want an engine mismatch naming both builds", r)
	}
	bk.mu.Lock()
	n := len(bk.vms)
	bk.mu.Unlock()
	if n != 0 {
		t.Fatalf("backup registered %d VMs after refusing", n)
	}
}

// A host without a usable QEMU refuses to back up a VM, saying why.
func TestBackupWithoutQEMURefuses(t *testing.T) {
	a := &Agent{engine: qemu.Engine{Name: "none"}, engineErr: qemu.ErrQEMUNotFound}
	err := a.usableEngine("ftvmd-qemu 7.2+dfsg+ftvmd.aaaa")
	if !errors.Is(err, qemu.ErrQEMUNotFound) || !strings.Contains(err.Error(), "cannot replay") {
		t.Fatalf("usableEngine = %v, want a refusal wrapping ErrQEMUNotFound", err)
	}
}
