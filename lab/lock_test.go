package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestLockLab: a second holder is refused with ErrInUse naming the first, and gets
// the lock once the first lets go. flock locks belong to an open file description,
// so two opens in one process contend exactly as two processes do.
func TestLockLab(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lab.lock")
	first, err := lockLab(path)
	if err != nil {
		t.Fatalf("first lock: %v", err)
	}
	_, err = lockLab(path)
	if !errors.Is(err, ErrInUse) {
		t.Fatalf("second lock: got %v, want ErrInUse", err)
	}
	if want := fmt.Sprintf("pid %d", os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the holder (%s)", err, want)
	}
	first.Close()
	again, err := lockLab(path)
	if err != nil {
		t.Fatalf("lock after release: %v", err)
	}
	again.Close()
}

func TestLockLabUnwritableDir(t *testing.T) {
	if _, err := lockLab(filepath.Join(t.TempDir(), "missing", "lab.lock")); err == nil || errors.Is(err, ErrInUse) {
		t.Fatalf("lock in a missing directory: got %v, want an open error", err)
	}
}
