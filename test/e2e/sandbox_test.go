package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// sdSandbox is systemd running as PID 1 of its own pid, mount, network, UTS and
// cgroup namespaces (test/package/systemd-sandbox.sh), so a unit runs under its
// real sandbox on a host whose PID 1 is not systemd.
type sdSandbox struct {
	t    *testing.T
	dir  string
	cmd  *exec.Cmd
	pid  int // systemd's pid as the host sees it
	done chan error

	stopOnce sync.Once
}

// startSandbox boots systemd with the units in dir/units (copied to
// /run/systemd/system) and starts the named units. It is stopped when the test ends.
func startSandbox(ctx context.Context, t *testing.T, repo, dir string, units ...string) *sdSandbox {
	t.Helper()
	logf, err := os.Create(filepath.Join(dir, "systemd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(repo, "test/package/systemd-sandbox.sh"), append([]string{dir}, units...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &sdSandbox{t: t, dir: dir, cmd: cmd, done: make(chan error, 1)}
	go func() { s.done <- cmd.Wait(); logf.Close() }()
	t.Cleanup(s.stop)
	// The script execs unshare, whose one child becomes systemd.
	deadline := time.Now().Add(20 * time.Second)
	for s.pid == 0 {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid)); err == nil {
			if f := strings.Fields(string(b)); len(f) == 1 {
				if comm, _ := os.ReadFile("/proc/" + f[0] + "/comm"); strings.TrimSpace(string(comm)) == "systemd" {
					s.pid, _ = strconv.Atoi(f[0])
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("systemd did not start in the sandbox (see %s)", logf.Name())
		}
		select {
		case err := <-s.done:
			s.done <- err
			t.Fatalf("sandbox exited: %v", err)
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	return s
}

// run runs a command inside the sandbox's namespaces.
func (s *sdSandbox) run(ctx context.Context, args ...string) (string, error) {
	a := append([]string{"-t", strconv.Itoa(s.pid), "-m", "-p", "-n", "-u", "-C", "--"}, args...)
	out, err := exec.CommandContext(ctx, "nsenter", a...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// must runs a command in the sandbox and fails the test if it fails.
func (s *sdSandbox) must(ctx context.Context, args ...string) string {
	s.t.Helper()
	out, err := s.run(ctx, args...)
	if err != nil {
		s.t.Fatal(err)
	}
	return out
}

// prop reads one property of a unit.
func (s *sdSandbox) prop(ctx context.Context, unit, name string) string {
	s.t.Helper()
	return strings.TrimSpace(s.must(ctx, "systemctl", "show", "-p", name, "--value", unit))
}

// waitState waits until the unit's ActiveState is want.
func (s *sdSandbox) waitState(ctx context.Context, unit, want string, within time.Duration) {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for {
		out, _ := s.run(ctx, "systemctl", "show", "-p", "ActiveState", "--value", unit)
		got := strings.TrimSpace(out)
		if got == want {
			return
		}
		if time.Now().After(deadline) || got == "failed" {
			st, _ := s.run(ctx, "systemctl", "status", "--no-pager", unit)
			s.t.Fatalf("%s is %q, want %q:\n%s", unit, got, want, st)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// stop powers systemd off (it stops its units first), waits for the sandbox to
// end, kills it if it does not, and removes its cgroups. Only the first call acts.
func (s *sdSandbox) stop() { s.stopOnce.Do(s.powerOff) }

func (s *sdSandbox) powerOff() {
	if s.pid != 0 {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, _ = s.run(ctx, "systemctl", "--no-block", "poweroff")
		cancel()
	}
	select {
	case <-s.done:
	case <-time.After(60 * time.Second):
		s.t.Errorf("the systemd sandbox did not power off within 60 s: killing it")
		if s.pid != 0 {
			_ = exec.Command("kill", "-9", strconv.Itoa(s.pid)).Run() // PID 1 of its namespace: the rest dies with it
		}
		<-s.done
	}
	b, err := os.ReadFile(filepath.Join(s.dir, "cgroups"))
	if err != nil {
		return
	}
	for _, cg := range strings.Fields(string(b)) {
		if err := removeCgroupTree(cg); err != nil {
			s.t.Errorf("sandbox cgroup %s: %v", cg, err)
		}
	}
}

// removeCgroupTree removes an empty cgroup and the cgroups below it, deepest
// first (cgroup directories go with rmdir, not with their files).
func removeCgroupTree(dir string) error {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			if err := removeCgroupTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	var lastErr error
	for range 50 { // a cgroup whose last process just exited is busy for a moment
		if lastErr = os.Remove(dir); lastErr == nil || errors.Is(lastErr, os.ErrNotExist) {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return lastErr
}
