package throttle

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestCgroupReal drives the host's real cgroup hierarchy (v1 or v2).
func TestCgroupReal(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root")
	}
	g, err := NewCgroup("/sys/fs/cgroup", "throttle-test", "0")
	if err != nil {
		if os.Getenv("FTVMD_REQUIRE_ROOT") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	// A fresh handle on an existing cgroup starts unthrottled.
	if err := g.SetQuota(0.3); err != nil {
		t.Fatal(err)
	}
	if g, err = NewCgroup("/sys/fs/cgroup", "throttle-test", "0"); err != nil {
		t.Fatal(err)
	}
	quotaFile0 := filepath.Join(g.cpuDir, "cpu.cfs_quota_us")
	want0 := "-1"
	if g.v2 {
		quotaFile0, want0 = filepath.Join(g.cpuDir, "cpu.max"), "max 10000"
	}
	if b, err := os.ReadFile(quotaFile0); err != nil || strings.TrimSpace(string(b)) != want0 {
		t.Fatalf("reopened cgroup quota %q (%v), want %q", b, err, want0)
	}
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if err := g.Remove(); err != nil {
			t.Errorf("remove: %v", err)
		}
	}()
	if err := g.Add(cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	if err := g.SetQuota(0.5); err != nil {
		t.Fatal(err)
	}
	quotaFile := filepath.Join(g.cpuDir, "cpu.cfs_quota_us")
	want := "5000"
	if g.v2 {
		quotaFile, want = filepath.Join(g.cpuDir, "cpu.max"), "5000 10000"
	}
	b, err := os.ReadFile(quotaFile)
	if err != nil || strings.TrimSpace(string(b)) != want {
		t.Fatalf("quota file %s = %q (%v), want %q", quotaFile, b, err, want)
	}
	procs, _ := os.ReadFile(filepath.Join(g.cpuDir, "cgroup.procs"))
	if !strings.Contains(string(procs), strconv.Itoa(cmd.Process.Pid)) {
		t.Fatalf("pid not in cgroup: %q", procs)
	}
	if err := g.SetQuota(1); err != nil {
		t.Fatal(err)
	}
	// Move the process out before Remove (a cgroup with members cannot be removed).
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}
