package throttle

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Cgroup is one QEMU's cgroup: a cpuset (its own cores, as separate hosts would have)
// and a CPU quota. It supports cgroup v2 (cpu.max, stock Debian 12) and v1
// (cpu.cfs_quota_us and the cpuset hierarchy).
type Cgroup struct {
	v2      bool
	cpuDir  string // v1: cpu controller dir; v2: the unified dir
	cpusDir string // v1: cpuset dir; v2: same as cpuDir
	period  int    // microseconds
}

// ErrNoCgroup means neither cgroup layout is usable on this host.
var ErrNoCgroup = errors.New("no usable cgroup hierarchy (need cgroup v2 with cpu+cpuset, or v1 cpu and cpuset)")

// NewCgroup creates (or reuses) the cgroup ftvmd/<name> under root (normally
// /sys/fs/cgroup) and pins it to cpus ("" = leave the cpuset alone).
func NewCgroup(root, name, cpus string) (*Cgroup, error) {
	// A 10 ms CFS period: a quota of q lets QEMU run q*10 ms of every 10 ms. With the
	// kernel's default 100 ms the guest would freeze for tens of milliseconds at a
	// time, which shows as lag spikes on the backup and as delay on every request that
	// lands in a frozen stretch.
	const period = 10000
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		return newV2(root, name, cpus, period)
	}
	cpuRoot, setRoot := filepath.Join(root, "cpu"), filepath.Join(root, "cpuset")
	if _, err := os.Stat(filepath.Join(cpuRoot, "cpu.cfs_quota_us")); err != nil {
		return nil, fmt.Errorf("cgroup v1 at %s: %w: %w", root, ErrNoCgroup, err)
	}
	g := &Cgroup{cpuDir: filepath.Join(cpuRoot, "ftvmd", name), cpusDir: filepath.Join(setRoot, "ftvmd", name), period: period}
	if err := os.MkdirAll(g.cpuDir, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	if err := writeFile(filepath.Join(g.cpuDir, "cpu.cfs_period_us"), strconv.Itoa(period)); err != nil {
		return nil, err
	}
	if cpus != "" {
		// A v1 cpuset child starts empty: copy mems from the root and set cpus at each level.
		mems, err := os.ReadFile(filepath.Join(setRoot, "cpuset.mems"))
		if err != nil {
			return nil, fmt.Errorf("cgroup v1 cpuset: %w: %w", ErrNoCgroup, err)
		}
		allCPUs, err := os.ReadFile(filepath.Join(setRoot, "cpuset.cpus"))
		if err != nil {
			return nil, fmt.Errorf("cgroup v1 cpuset: %w", err)
		}
		parent := filepath.Join(setRoot, "ftvmd")
		for _, d := range []struct{ dir, cpus string }{{parent, strings.TrimSpace(string(allCPUs))}, {g.cpusDir, cpus}} {
			if err := os.MkdirAll(d.dir, 0o755); err != nil {
				return nil, fmt.Errorf("create cpuset cgroup: %w", err)
			}
			if err := writeFile(filepath.Join(d.dir, "cpuset.mems"), strings.TrimSpace(string(mems))); err != nil {
				return nil, err
			}
			if err := writeFile(filepath.Join(d.dir, "cpuset.cpus"), d.cpus); err != nil {
				return nil, err
			}
		}
	} else {
		g.cpusDir = ""
	}
	// A cgroup left by an earlier run keeps its quota: start unthrottled.
	return g, g.SetQuota(1)
}

func newV2(root, name, cpus string, period int) (*Cgroup, error) {
	parent := filepath.Join(root, "ftvmd")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	// Delegate cpu and cpuset to our subtree; the root must have them enabled too.
	for _, d := range []string{root, parent} {
		if err := writeFile(filepath.Join(d, "cgroup.subtree_control"), "+cpu +cpuset"); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoCgroup, err)
		}
	}
	dir := filepath.Join(parent, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup: %w", err)
	}
	g := &Cgroup{v2: true, cpuDir: dir, cpusDir: dir, period: period}
	if cpus != "" {
		if err := writeFile(filepath.Join(dir, "cpuset.cpus"), cpus); err != nil {
			return nil, err
		}
	} else {
		g.cpusDir = ""
	}
	return g, g.SetQuota(1)
}

// Dirs lists the cgroup's directories: one on v2, the cpu and (when pinned)
// the cpuset directory on v1.
func (g *Cgroup) Dirs() []string {
	if g.cpusDir == "" || g.cpusDir == g.cpuDir {
		return []string{g.cpuDir}
	}
	return []string{g.cpuDir, g.cpusDir}
}

// Add moves a process (all its threads) into the cgroup.
func (g *Cgroup) Add(pid int) error {
	for _, d := range g.Dirs() {
		if err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return err
		}
	}
	return nil
}

// SetQuota limits the cgroup to fraction of one CPU; fraction >= 1 removes the limit.
func (g *Cgroup) SetQuota(fraction float64) error {
	if g.v2 {
		v := "max"
		if fraction < 1 {
			v = strconv.Itoa(quotaUS(fraction, g.period))
		}
		return writeFile(filepath.Join(g.cpuDir, "cpu.max"), fmt.Sprintf("%s %d", v, g.period))
	}
	v := "-1"
	if fraction < 1 {
		v = strconv.Itoa(quotaUS(fraction, g.period))
	}
	return writeFile(filepath.Join(g.cpuDir, "cpu.cfs_quota_us"), v)
}

// Remove deletes the cgroup directories (they must be empty of processes). A
// process that was just killed may still hold its cgroup for a moment (a stop
// that gave up waiting for QEMU after its SIGKILL): Remove waits up to
// removeBusyWait for it to go, so the cgroup is not left behind.
func (g *Cgroup) Remove() error {
	var errs []error
	for _, d := range g.Dirs() {
		if err := removeWhenFree(d, removeBusyWait); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeBusyWait bounds how long Remove waits for a cgroup's last process to go.
var removeBusyWait = 2 * time.Second

// rmdir removes one cgroup directory. cgroupfs removes a directory that lists
// only control files; a test stands in for it in a temporary directory.
var rmdir = os.Remove

// removeWhenFree removes dir, retrying while the kernel says it is busy (EBUSY:
// a process is still in it) for up to wait. A dir already gone is no error.
func removeWhenFree(dir string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	for {
		err := rmdir(dir)
		switch {
		case err == nil || errors.Is(err, os.ErrNotExist):
			return nil
		case !errors.Is(err, syscall.EBUSY) || !time.Now().Before(deadline):
			return fmt.Errorf("remove cgroup: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// RemoveStale removes the cgroups ftvmd/<prefix>* under root that hold no
// process, in every hierarchy NewCgroup uses, and returns the directories it
// removed. An agent names its VMs' cgroups "<host>-<vm>" (and "-backup"); one
// that is killed (SIGKILL, the power loss of a host that is a namespace) never
// removes them, and each VM it ever ran would leave two directories behind.
// Called with "<host>-" before the agent runs any VM, it removes those. A
// cgroup with a process in it (a QEMU that outlived its agent) or with child
// cgroups (not one of ours) stays; so does everything when root has no ftvmd
// tree. The error joins what could not be read or removed.
func RemoveStale(root, prefix string) ([]string, error) {
	if prefix == "" {
		return nil, errors.New("remove stale cgroups: empty prefix would match every VM's cgroup")
	}
	parents := []string{filepath.Join(root, "cpu", "ftvmd"), filepath.Join(root, "cpuset", "ftvmd")}
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		parents = []string{filepath.Join(root, "ftvmd")}
	}
	var removed []string
	var errs []error
	for _, parent := range parents {
		entries, err := os.ReadDir(parent)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("remove stale cgroups: %w", err))
			continue
		}
		for _, e := range entries {
			if !e.IsDir() || !strings.HasPrefix(e.Name(), prefix) {
				continue
			}
			dir := filepath.Join(parent, e.Name())
			free, err := unused(dir)
			if err != nil {
				errs = append(errs, fmt.Errorf("remove stale cgroups: %w", err))
				continue
			}
			if !free {
				continue
			}
			// No wait: a process that joins now is a VM being started, and
			// its cgroup is not stale.
			if err := removeWhenFree(dir, 0); err != nil {
				if !errors.Is(err, syscall.EBUSY) {
					errs = append(errs, err)
				}
				continue
			}
			removed = append(removed, dir)
		}
	}
	return removed, errors.Join(errs...)
}

// unused says whether the cgroup dir has no process and no child cgroup.
func unused(dir string) (bool, error) {
	procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return false, err
	}
	if strings.TrimSpace(string(procs)) != "" {
		return false, nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err
	}
	for _, e := range entries {
		if e.IsDir() {
			return false, nil
		}
	}
	return true, nil
}

func quotaUS(fraction float64, period int) int {
	q := int(fraction * float64(period))
	if q < 1000 { // the kernel's minimum quota is 1 ms
		q = 1000
	}
	return q
}

func writeFile(path, v string) error {
	if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
		return fmt.Errorf("cgroup write %s=%q: %w", path, v, err)
	}
	return nil
}
