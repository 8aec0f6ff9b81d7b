package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/lab"
)

// What `ftvmd chaos` adds to the lab so that storage and disks can fail:
//
//   - Each host reaches the shared storage through its own view, a bindfs (FUSE)
//     mount of the lab's shared directory: SIGSTOP of a view's bindfs makes every
//     access of that host hang, as a hard NFS mount does when its server is cut off;
//     SIGCONT heals it. O_EXCL creates and fsync pass through to the one directory.
//   - Each host's run directory (the primary's rr log, the backup's log and disk
//     copy), its partial directory (a disk copy being received) and its disks
//     directory (where a backup's disk goes when it goes live) are on a small ext4
//     file system on a sparse loop image, which a fault fills.
//
// Both live under chaosMountRoot, outside the lab's root: the lab script's
// `rm -rf` of a host directory never reaches into them, and the host directory
// points at its run file system by a symlink. A run that died leaves them
// mounted: the next run removes them first (cleanChaosMounts).
const (
	chaosMountRoot = "/run/ftvmd-chaos"
	chaosImageDir  = "/var/tmp/ftvmd-chaos"
	// runFSSize is each host's run file system: a round's rr log under bulk load
	// (hundreds of MB), the previous round's, and the backup's disk copy fit.
	runFSSize = 4 << 30
)

// chaosMounts are one run's storage views and run file systems.
type chaosMounts struct {
	mu    sync.Mutex
	views map[string]*exec.Cmd // host name -> its bindfs (run in the foreground)
	waits map[string]chan error
	root  string
}

func (m *chaosMounts) viewDir(host string) string {
	return filepath.Join(m.root, "shared-"+host)
}

func (m *chaosMounts) runDir(host string) string {
	return filepath.Join(m.root, "run-"+host)
}

// setupChaosMounts cleans what a dead run left, then mounts a storage view of shared
// and a run file system for every host and points the host's run directory at it.
// Agents must start after it (they get --shared-dir of their view).
func setupChaosMounts(ctx context.Context, shared string, hosts []lab.Host, logf func(string, ...any)) (_ *chaosMounts, err error) {
	cleanChaosMounts(logf)
	m := &chaosMounts{views: map[string]*exec.Cmd{}, waits: map[string]chan error{}, root: chaosMountRoot}
	defer func() {
		if err != nil {
			m.close(logf)
		}
	}()
	if err := os.MkdirAll(chaosImageDir, 0o700); err != nil {
		return nil, err
	}
	for _, h := range hosts {
		view := m.viewDir(h.Name)
		if err := os.MkdirAll(view, 0o700); err != nil {
			return nil, err
		}
		// Timeouts 0: each host sees the other's claims at once (no attribute or
		// name cache in the kernel), as the agents expect of shared storage.
		cmd := exec.Command("bindfs", "-f", "--no-allow-other", "-o", "attr_timeout=0,entry_timeout=0,negative_timeout=0", shared, view)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("bindfs (apt-get install bindfs; test/setup.sh does): %w", err)
		}
		wait := make(chan error, 1)
		go func() { wait <- cmd.Wait() }() // owned by m: close waits for it
		m.mu.Lock()
		m.views[h.Name], m.waits[h.Name] = cmd, wait
		m.mu.Unlock()
		if err := waitMounted(ctx, view, 10*time.Second); err != nil {
			return nil, fmt.Errorf("storage view of host %s: %w", h.Name, err)
		}

		img := filepath.Join(chaosImageDir, "run-"+h.Name+".img")
		_ = os.Remove(img)
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			return nil, err
		}
		if err := os.Truncate(img, runFSSize); err != nil {
			return nil, err
		}
		if out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-m", "0", img).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("mkfs.ext4 %s: %v: %s", img, err, out)
		}
		run := m.runDir(h.Name)
		if err := os.MkdirAll(run, 0o700); err != nil {
			return nil, err
		}
		if out, err := exec.CommandContext(ctx, "mount", "-o", "loop", img, run).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("mount %s on %s: %v: %s", img, run, err, out)
		}
		// The host's disks and partial directories go on the same file system: the
		// agent moves a disk between them and the run directory by rename, which
		// cannot cross file systems (a received disk copy from partial/ into the
		// backup's run directory; a backup's disk into disks/ when it goes live).
		for _, d := range []string{"run", "disks", "partial"} {
			target := run
			if d != "run" {
				target = filepath.Join(run, d)
				if err := os.MkdirAll(target, 0o700); err != nil {
					return nil, err
				}
			}
			link := filepath.Join(h.Dir, d)
			if err := os.RemoveAll(link); err != nil {
				return nil, err
			}
			if err := os.Symlink(target, link); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

// waitMounted waits until path is a mount point.
func waitMounted(ctx context.Context, path string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if mounted(path) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not mounted after %s", path, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// mounted says whether path is a mount point in this mount namespace.
func mounted(path string) bool {
	for _, mp := range mountPoints() {
		if mp == path {
			return true
		}
	}
	return false
}

// mountPoints lists this namespace's mount points (field 5 of mountinfo).
func mountPoints() []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mps []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) > 4 {
			mps = append(mps, strings.ReplaceAll(fs[4], `\040`, " "))
		}
	}
	return mps
}

// hangStorage stops the storage views of hosts (SIGSTOP of their bindfs): every
// access of those hosts to shared storage waits. Healing resumes them.
func (m *chaosMounts) hangStorage(hosts ...string) (func(context.Context) error, error) {
	var pids []int
	m.mu.Lock()
	for _, h := range hosts {
		if cmd := m.views[h]; cmd != nil {
			pids = append(pids, cmd.Process.Pid)
		}
	}
	m.mu.Unlock()
	if len(pids) != len(hosts) {
		return nil, fmt.Errorf("no storage view for some of %v", hosts)
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGSTOP); err != nil {
			return nil, fmt.Errorf("SIGSTOP bindfs %d: %w", pid, err)
		}
	}
	return func(context.Context) error {
		var errs []error
		for _, pid := range pids {
			if err := unix.Kill(pid, unix.SIGCONT); err != nil {
				errs = append(errs, fmt.Errorf("SIGCONT bindfs %d: %w", pid, err))
			}
		}
		return errors.Join(errs...)
	}, nil
}

// resume lets every storage view answer again.
func (m *chaosMounts) resume() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, cmd := range m.views {
		_ = cmd.Process.Signal(unix.SIGCONT)
	}
}

// close resumes and unmounts the views and detaches the run file systems (lazily:
// an agent or QEMU still running may hold files there until the lab goes down).
func (m *chaosMounts) close(logf func(string, ...any)) {
	m.mu.Lock()
	views, waits := m.views, m.waits
	m.views, m.waits = map[string]*exec.Cmd{}, map[string]chan error{}
	m.mu.Unlock()
	for h, cmd := range views {
		_ = cmd.Process.Signal(unix.SIGCONT)
		if out, err := exec.Command("fusermount", "-u", "-z", m.viewDir(h)).CombinedOutput(); err != nil {
			logf("unmount storage view %s: %v: %s", h, err, strings.TrimSpace(string(out)))
		}
		select {
		case <-waits[h]:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-waits[h]
		}
	}
	cleanChaosMounts(logf)
}

// cleanChaosMounts removes whatever a run left under chaosMountRoot: bindfs
// processes are resumed (a stopped one would hang the unmount) and killed, every
// mount below is detached, the images removed.
func cleanChaosMounts(logf func(string, ...any)) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) == 0 || filepath.Base(args[0]) != "bindfs" || !strings.Contains(string(b), chaosMountRoot+"/") {
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(filepath.Dir(p)), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		_ = unix.Kill(pid, unix.SIGCONT)
		_ = unix.Kill(pid, unix.SIGKILL)
		logf("removed a bindfs left by an earlier chaos run (pid %d)", pid)
	}
	for _, mp := range mountPoints() {
		if strings.HasPrefix(mp, chaosMountRoot+"/") {
			if out, err := exec.Command("umount", "-l", mp).CombinedOutput(); err != nil {
				logf("umount %s: %v: %s", mp, err, strings.TrimSpace(string(out)))
			}
		}
	}
	imgs, _ := filepath.Glob(filepath.Join(chaosImageDir, "run-*.img"))
	for _, img := range imgs {
		_ = os.Remove(img)
	}
}

// waitNoProcs waits until namespace ns has no processes left (after a kill).
func waitNoProcs(ns string, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		out, err := exec.Command("ip", "netns", "pids", ns).Output()
		if err == nil && strings.TrimSpace(string(out)) == "" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
