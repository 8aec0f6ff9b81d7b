package agent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// liveDiskName is where a backup that went live under epoch keeps the VM's disk:
// <state>/disks/<vm>.epoch-<epoch, 20 digits>.qcow2. The run directory of a backup
// is scratch (the next protection of the VM with this host as its backup empties
// it); this is not, and the epoch in the name says which copy of the VM's history
// it holds.
func liveDiskName(stateDir, vm string, epoch uint64) string {
	return filepath.Join(stateDir, "disks", fmt.Sprintf("%s.epoch-%020d.qcow2", vm, epoch))
}

// moveLiveDisk moves the backup's copy of the disk, src, to dst (liveDiskName) when
// the backup goes live, before the live QEMU opens it (the replaying QEMU keeps
// writing through its open descriptor: a rename moves the file, not its data). The
// rename and both directories are synced before it returns. It refuses to replace a
// file: a disk already at dst is another go-live's.
func moveLiveDisk(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return fmt.Errorf("live disk: %w", err)
	}
	if _, err := os.Lstat(dst); err == nil {
		return fmt.Errorf("live disk: %s exists already", dst)
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("live disk: %w", err)
	}
	if err := os.Rename(src, dst); err != nil {
		return fmt.Errorf("live disk: move %s to %s: %w", src, dst, err)
	}
	for _, d := range []string{filepath.Dir(dst), filepath.Dir(src)} {
		if err := syncDir(d); err != nil {
			return fmt.Errorf("live disk: %w", err)
		}
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
