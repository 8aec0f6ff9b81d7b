package agent

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A backup that went live keeps the VM's disk out of its run directory, under a name
// with the epoch: the next protection of the VM with this host as its backup empties
// that directory, and must not take the live VM's acknowledged writes with it.
func TestLiveDiskSurvivesTheNextBackup(t *testing.T) {
	a := testAgent(t, "hostb", "")
	b := &backup{a: a, dir: a.vmDir("vm1", "backup")}
	if err := b.prepareDir(context.Background()); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(b.dir, "disk.qcow2")
	data := bytes.Repeat([]byte("acknowledged write "), 1000)
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	// The replaying QEMU holds the file open across the move and writes on.
	held, err := os.OpenFile(src, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	dst := liveDiskName(a.cfg.StateDir, "vm1", 7)
	if !strings.HasSuffix(dst, filepath.Join("disks", "vm1.epoch-00000000000000000007.qcow2")) || strings.HasPrefix(dst, b.dir) {
		t.Fatalf("live disk name %s", dst)
	}
	if err := moveLiveDisk(src, dst); err != nil {
		t.Fatal(err)
	}
	if _, err := held.Write([]byte("after the move")); err != nil {
		t.Fatal(err)
	}
	data = append(data, "after the move"...)

	// The next protection with this host as the backup.
	next := &backup{a: a, dir: a.vmDir("vm1", "backup")}
	if err := next.prepareDir(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatalf("the live disk is gone after the next backup started: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("the live disk holds %d bytes, want %d", len(got), len(data))
	}

	// A disk already at the epoch's name is never replaced.
	if err := os.WriteFile(src, []byte("other"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := moveLiveDisk(src, dst); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Fatalf("move onto an existing live disk: %v", err)
	}
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, data) {
		t.Fatal("the existing live disk was replaced")
	}
}
