package throttle

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakeCgroupfs makes rmdir behave in a temporary directory as it does on
// cgroupfs: a directory that lists only control files goes, one with a process
// in cgroup.procs or a child cgroup is busy. busy names directories that turn
// busy after RemoveStale read them (a process joined in between).
func fakeCgroupfs(t *testing.T, busy ...string) {
	t.Helper()
	old := rmdir
	t.Cleanup(func() { rmdir = old })
	rmdir = func(dir string) error {
		if slices.Contains(busy, dir) {
			return &os.PathError{Op: "remove", Path: dir, Err: syscall.EBUSY}
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		procs, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		for _, e := range entries {
			if e.IsDir() || strings.TrimSpace(string(procs)) != "" {
				return &os.PathError{Op: "remove", Path: dir, Err: syscall.EBUSY}
			}
		}
		return os.RemoveAll(dir)
	}
}

// mkCgroup makes a cgroup-like directory holding procs in its cgroup.procs.
func mkCgroup(t *testing.T, dir, procs string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(procs), 0o644); err != nil {
		t.Fatal(err)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// An agent killed with its QEMUs leaves "<host>-<vm>" cgroups in every
// hierarchy; the next agent of that host removes the ones no process is in, and
// nothing of another host's, of a running QEMU's or of a tree not ours.
func TestRemoveStaleV1(t *testing.T) {
	root := t.TempDir()
	cpu, cpuset := filepath.Join(root, "cpu", "ftvmd"), filepath.Join(root, "cpuset", "ftvmd")
	mkCgroup(t, filepath.Join(root, "cpu"), "1\n")
	if err := os.WriteFile(filepath.Join(root, "cpu", "cpu.cfs_quota_us"), []byte("-1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{cpu, cpuset} {
		mkCgroup(t, filepath.Join(d, "a-vm1"), "")        // a killed agent's primary
		mkCgroup(t, filepath.Join(d, "a-vm2-backup"), "") // and backup
		mkCgroup(t, filepath.Join(d, "a-running"), "4242\n")
		mkCgroup(t, filepath.Join(d, "b-vm1"), "") // host b's
		mkCgroup(t, filepath.Join(d, "a-tree"), "")
		mkCgroup(t, filepath.Join(d, "a-tree", "child"), "")
		mkCgroup(t, filepath.Join(d, "a-joined"), "")
	}
	if err := os.WriteFile(filepath.Join(cpu, "a-file"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	fakeCgroupfs(t, filepath.Join(cpu, "a-joined"), filepath.Join(cpuset, "a-joined"))

	removed, err := RemoveStale(root, "a-")
	if err != nil {
		t.Fatalf("RemoveStale: %v", err)
	}
	var want []string
	for _, d := range []string{cpu, cpuset} {
		want = append(want, filepath.Join(d, "a-vm1"), filepath.Join(d, "a-vm2-backup"))
		for _, kept := range []string{"a-running", "b-vm1", "a-tree", "a-joined"} {
			if !exists(filepath.Join(d, kept)) {
				t.Errorf("%s was removed", filepath.Join(d, kept))
			}
		}
	}
	slices.Sort(removed)
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	for _, d := range want {
		if exists(d) {
			t.Errorf("%s is still there", d)
		}
	}
	if !exists(filepath.Join(cpu, "a-file")) {
		t.Errorf("a file named like a cgroup was removed")
	}

	// Nothing left to remove: a second sweep removes nothing and says no error.
	if removed, err := RemoveStale(root, "a-"); err != nil || len(removed) != 0 {
		t.Errorf("second sweep: removed %q, err %v", removed, err)
	}
}

// On cgroup v2 the one ftvmd tree sits under the root, and the v1 hierarchies'
// names mean nothing.
func TestRemoveStaleV2(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "cgroup.controllers"), []byte("cpuset cpu\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mkCgroup(t, filepath.Join(root, "ftvmd", "a-vm1"), "")
	mkCgroup(t, filepath.Join(root, "ftvmd", "a-vm2"), "99\n")
	mkCgroup(t, filepath.Join(root, "cpu", "ftvmd", "a-vm3"), "") // not a v2 cgroup of ours
	fakeCgroupfs(t)
	removed, err := RemoveStale(root, "a-")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{filepath.Join(root, "ftvmd", "a-vm1")}; !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	if !exists(filepath.Join(root, "ftvmd", "a-vm2")) || !exists(filepath.Join(root, "cpu", "ftvmd", "a-vm3")) {
		t.Errorf("a busy cgroup or one outside the v2 tree was removed")
	}
}

func TestRemoveStaleRefusesEverything(t *testing.T) {
	root := t.TempDir()
	mkCgroup(t, filepath.Join(root, "cpu", "ftvmd", "a-vm1"), "")
	fakeCgroupfs(t)
	if _, err := RemoveStale(root, ""); err == nil {
		t.Fatal("an empty prefix was accepted")
	}
	if !exists(filepath.Join(root, "cpu", "ftvmd", "a-vm1")) {
		t.Error("an empty prefix removed a cgroup")
	}
	// A host with no ftvmd tree (cgroups never used) has nothing stale.
	if removed, err := RemoveStale(t.TempDir(), "a-"); err != nil || removed != nil {
		t.Errorf("no tree: removed %q, err %v", removed, err)
	}
	// A cgroup whose cgroup.procs cannot be read is reported, not removed.
	if err := os.MkdirAll(filepath.Join(root, "cpu", "ftvmd", "a-odd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := RemoveStale(root, "a-"); err == nil || !strings.Contains(err.Error(), "a-odd") {
		t.Errorf("unreadable cgroup.procs: err %v", err)
	}
}

// Remove waits for a process that is leaving (killed, not yet gone) instead of
// leaving its cgroup behind, and gives up after removeBusyWait.
func TestRemoveWaitsForTheLastProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a-vm1")
	mkCgroup(t, dir, "4242\n")
	fakeCgroupfs(t)
	old := removeBusyWait
	t.Cleanup(func() { removeBusyWait = old })
	removeBusyWait = 10 * time.Second

	g := &Cgroup{cpuDir: dir}
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		time.Sleep(100 * time.Millisecond) // the process is still exiting for a while
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), nil, 0o644); err != nil {
			t.Error(err)
		}
	}()
	if err := g.Remove(); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	<-gone
	if exists(dir) {
		t.Fatal("the cgroup is still there")
	}

	mkCgroup(t, dir, "4242\n")
	removeBusyWait = 50 * time.Millisecond
	if err := g.Remove(); !errors.Is(err, syscall.EBUSY) {
		t.Fatalf("Remove of a cgroup whose process stays: %v, want EBUSY", err)
	}
	if !exists(dir) {
		t.Fatal("a busy cgroup was removed")
	}
}

// TestRemoveStaleReal sweeps the host's real hierarchy for cgroups of a prefix
// only this test uses: an idle one goes, one with a process stays.
func TestRemoveStaleReal(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	prefix := fmt.Sprintf("throttle-stale-%d-", os.Getpid())
	idle, err := NewCgroup("/sys/fs/cgroup", prefix+"idle", "0")
	if err != nil {
		if os.Getenv("FTVMD_REQUIRE_ROOT") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	t.Cleanup(func() { _ = idle.Remove() })
	busy, err := NewCgroup("/sys/fs/cgroup", prefix+"busy", "0")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if err := busy.Remove(); err != nil {
			t.Errorf("remove: %v", err)
		}
	})
	if err := busy.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	removed, err := RemoveStale("/sys/fs/cgroup", prefix)
	if err != nil {
		t.Fatal(err)
	}
	want := idle.Dirs()
	if !slices.Equal(removed, want) {
		t.Errorf("removed %q, want %q", removed, want)
	}
	for _, d := range want {
		if exists(d) {
			t.Errorf("%s is still there", d)
		}
	}
	for _, d := range busy.Dirs() {
		if !exists(d) {
			t.Errorf("%s, with a process in it, was removed", d)
		}
	}
}
