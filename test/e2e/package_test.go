package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

const (
	pkgQEMURoot = "/opt/ftvmd/qemu"
	pkgUnit     = "/lib/systemd/system/ftvmd-agent.service"
	pkgConf     = "/etc/ftvmd/agent.toml"
	pkgBin      = "/usr/bin/ftvmd"
	// pkgState is the agent's state directory in this test: outside /tmp, which
	// the unit makes private (PrivateTmp), and not /var/lib/ftvmd, which may be
	// a real agent's.
	pkgState = "/var/lib/ftvmd-pkgtest"
)

// TestPackage builds the Debian package (go run ./packaging/mkdeb), installs it on
// this host with apt-get, checks its files and dpkg's record, starts the agent
// from the unit's ExecStart line with the packaged config file (edited as an
// operator would), sees READY=1 on a notify socket and reads `ftvmd status --json`;
// then runs the installed unit under systemd (as PID 1 of its own namespaces) with
// its hardening, runs a VM on the packaged QEMU there (QEMU boots the guest, the tap
// joins the bridge, the cgroups are written), stops it, and purges the package.
// The QEMU tree the package shares with test/setup.sh's build is put back as it was.
func TestPackage(t *testing.T) {
	if os.Getenv("FTVMD_E2E") != "1" {
		t.Skip("end-to-end test: set FTVMD_E2E=1 (test/run-tests.sh does)")
	}
	if os.Getuid() != 0 {
		t.Skip("installs a package: run as root")
	}
	repo, err := lab.FindRepo()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	begin := time.Now()
	step := func(format string, args ...any) {
		t.Logf("[%5.1fs] %s", time.Since(begin).Seconds(), fmt.Sprintf(format, args...))
	}
	if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "ftvmd").Output(); err == nil && strings.Contains(string(out), "installed") {
		t.Fatalf("the ftvmd package is already installed on this host (%s): this test would remove it", out)
	}
	work := t.TempDir()

	// The QEMU tree test/setup.sh built is the one the package ships, at the same
	// paths: purging the package deletes it, so keep a copy to put back.
	key, err := os.Readlink(filepath.Join(pkgQEMURoot, "current"))
	if err != nil {
		t.Fatalf("ftvmd's QEMU is not built (test/setup.sh): %v", err)
	}
	key = filepath.Base(key)
	qemuBin := filepath.Join(pkgQEMURoot, key, "bin/qemu-system-x86_64")
	qemuSum := fileSum(t, qemuBin)
	saved := filepath.Join(work, "qemu-saved")
	mustRun(t, "cp", "-a", filepath.Join(pkgQEMURoot, key), saved)
	_, statErr := os.Stat("/var/lib/ftvmd")
	hadStateDir := statErr == nil
	_ = os.RemoveAll(pkgState)
	t.Cleanup(func() {
		if out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", "ftvmd").Output(); err == nil && strings.Contains(string(out), "installed") {
			if out, err := exec.Command("dpkg", "--purge", "ftvmd").CombinedOutput(); err != nil {
				t.Errorf("purge after a failure: %v: %s", err, out)
			}
		}
		restoreQEMU(t, saved, key)
		if !hadStateDir {
			_ = os.Remove("/var/lib/ftvmd") // made by the unit's StateDirectory=, empty
		}
		_ = os.RemoveAll(pkgState)
	})

	// Build.
	build := exec.CommandContext(ctx, "go", "run", "./packaging/mkdeb", "--out", work)
	build.Dir = repo
	out, err := build.Output()
	if err != nil {
		t.Fatalf("mkdeb: %v: %s", err, stderrOf(err))
	}
	deb := strings.TrimSpace(string(out))
	info, err := os.Stat(deb)
	if err != nil {
		t.Fatal(err)
	}
	step("built %s: %.1f MiB", filepath.Base(deb), float64(info.Size())/(1<<20))

	// Install, as an operator would.
	inst := exec.CommandContext(ctx, "apt-get", "install", "-y", "--no-install-recommends", "./"+filepath.Base(deb))
	inst.Dir = work
	inst.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := inst.CombinedOutput(); err != nil {
		t.Fatalf("apt-get install: %v\n%s", err, out)
	}
	step("installed with apt-get")
	st := mustRun(t, "dpkg", "-s", "ftvmd")
	for _, want := range []string{"Status: install ok installed", "Conffiles:\n " + pkgConf + " "} {
		if !strings.Contains(st, want) {
			t.Errorf("dpkg -s ftvmd lacks %q:\n%s", want, st)
		}
	}
	listed := mustRun(t, "dpkg", "-L", "ftvmd")
	for _, f := range []string{pkgBin, "/usr/lib/ftvmd/libftflush.so", pkgUnit, pkgConf, qemuBin,
		filepath.Join(pkgQEMURoot, key, "ENGINE"), filepath.Join(pkgQEMURoot, "current"), "/usr/share/doc/ftvmd/operator-guide.md"} {
		if !strings.Contains(listed, f+"\n") {
			t.Errorf("dpkg -L ftvmd does not list %s", f)
		}
		if _, err := os.Lstat(f); err != nil {
			t.Errorf("installed file: %v", err)
		}
	}
	if got := fileSum(t, qemuBin); got != qemuSum {
		t.Errorf("the packaged QEMU differs from the build test/setup.sh made")
	}
	if l, _ := os.Readlink(filepath.Join(pkgQEMURoot, "current")); l != key {
		t.Errorf("installed current link -> %q, want %q", l, key)
	}
	checkDepends(t, st, qemuBin)
	if out, err := exec.Command("systemd-analyze", "verify", pkgUnit).CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", pkgUnit, err, out)
	}

	// Configure: keys, and the settings this host needs, added to the conffile.
	mustRun(t, pkgBin, "keys", "init", "--ca", filepath.Join(work, "ca"))
	mustRun(t, pkgBin, "keys", "issue", "pkgtest", "--ca", filepath.Join(work, "ca"), "--out", filepath.Join(pkgState, "keys"))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	peer := ln.Addr().String()
	ln.Close()
	f, err := os.OpenFile(pkgConf, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(f, "\n# added by TestPackage\nhost = %q\nstate-dir = %q\nlisten = %q\ncpus = \"0\"\nlog-level = \"debug\"\n", "pkgtest", pkgState, peer)
	f.Close()
	if out := mustRun(t, pkgBin, "agent", "config", "--check", pkgConf); !strings.Contains(out, "ok (5 keys set") {
		t.Errorf("config --check: %s", out)
	}
	sock := filepath.Join(pkgState, "ftvmd.sock")

	// 1. The unit's command line, run by hand with a notify socket.
	argv := execStart(t, pkgUnit)
	notifyPath := filepath.Join(work, "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	agentLog := filepath.Join(work, "agent.log")
	logf, err := os.Create(agentLog)
	if err != nil {
		t.Fatal(err)
	}
	agent := exec.Command(argv[0], argv[1:]...)
	agent.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	agent.Stdout, agent.Stderr = logf, logf
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait(); logf.Close() }()
	defer func() {
		if agent.ProcessState == nil {
			_ = agent.Process.Kill()
		}
	}()
	if msg := recvNotify(t, notify, 20*time.Second); !strings.HasPrefix(msg, "READY=1\n") || !strings.Contains(msg, "STATUS=peers on "+peer) {
		t.Fatalf("first notification %q, want READY=1 and the status", msg)
	}
	step("agent started from ExecStart (%s): READY=1", strings.Join(argv, " "))
	var resp control.Response
	if err := json.Unmarshal([]byte(mustRun(t, pkgBin, "--socket", sock, "status", "--json")), &resp); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	if resp.Host != "pkgtest" || len(resp.VMs) != 0 {
		t.Errorf("status --json: host %q, %d VMs; want pkgtest and none", resp.Host, len(resp.VMs))
	}
	_ = agent.Process.Signal(syscall.SIGTERM)
	if msg := recvNotify(t, notify, 20*time.Second); !strings.HasPrefix(msg, "STOPPING=1\n") {
		t.Errorf("on SIGTERM: %q, want STOPPING=1", msg)
	}
	if err := <-exited; err != nil {
		t.Errorf("agent exit: %v", err)
	}
	logged, _ := os.ReadFile(agentLog)
	for _, want := range []string{"file=" + pkgConf, "qemu=" + qemuBin} {
		if !strings.Contains(string(logged), want) {
			t.Errorf("agent log lacks %q:\n%s", want, logged)
		}
	}
	step("ftvmd status --json answered; SIGTERM: STOPPING=1, exit 0")

	// 2. The installed unit under systemd, with its hardening, running a VM.
	sbx := filepath.Join(work, "sandbox")
	dropIn := filepath.Join(sbx, "units/ftvmd-agent.service.d")
	if err := os.MkdirAll(dropIn, 0o755); err != nil {
		t.Fatal(err)
	}
	// Only plumbing: no default dependencies (the sandbox boots nothing else) and
	// the agent's output to a file (no journald there).
	unitLog := filepath.Join(pkgState, "agent-unit.log")
	if err := os.WriteFile(filepath.Join(dropIn, "test.conf"), []byte("[Unit]\nDefaultDependencies=no\n[Service]\nStandardOutput=append:"+unitLog+"\nStandardError=inherit\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startSandbox(ctx, t, repo, sbx, "ftvmd-agent.service")
	const unit = "ftvmd-agent.service"
	s.waitState(ctx, unit, "active", 30*time.Second) // Type=notify: active only after READY=1
	if got := s.prop(ctx, unit, "StatusText"); !strings.Contains(got, "peers on "+peer) {
		t.Errorf("StatusText %q", got)
	}
	if got := s.prop(ctx, unit, "FragmentPath"); got != pkgUnit {
		t.Errorf("unit loaded from %q, want the installed %s", got, pkgUnit)
	}
	mainPID := s.prop(ctx, unit, "MainPID")
	procStatus := s.must(ctx, "cat", "/proc/"+mainPID+"/status")
	for _, want := range []string{"NoNewPrivs:\t1", "Seccomp:\t2"} {
		if !strings.Contains(procStatus, want+"\n") {
			t.Errorf("the agent under systemd lacks %q: the unit's sandbox is not applied", want)
		}
	}
	step("ftvmd-agent.service active under systemd (pid %s in the sandbox)", mainPID)

	// The guest image goes where the sandboxed unit can read it: a repository
	// under /tmp (a clean clone in mktemp -d) is hidden by the unit's PrivateTmp.
	g := filepath.Join(pkgState, "guest")
	for _, f := range []string{"vmlinuz", "initrd.img"} {
		b, err := os.ReadFile(filepath.Join(repo, "build/guest", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(g, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(g, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s.must(ctx, pkgBin, "--socket", sock, "vm", "define", "t1", "--kernel", filepath.Join(g, "vmlinuz"),
		"--initrd", filepath.Join(g, "initrd.img"), "--mac", "52:54:00:00:16:01")
	s.must(ctx, pkgBin, "--socket", sock, "run", "t1")
	resp = control.Response{}
	if err := json.Unmarshal([]byte(s.must(ctx, pkgBin, "--socket", sock, "status", "--json", "t1")), &resp); err != nil {
		t.Fatal(err)
	}
	if len(resp.VMs) != 1 || resp.VMs[0].PID == 0 || resp.VMs[0].State != "unprotected" || !strings.Contains(resp.VMs[0].Engine, key) {
		t.Fatalf("status of t1: %+v", resp.VMs)
	}
	qpid := fmt.Sprint(resp.VMs[0].PID)
	var links []struct {
		Master string `json:"master"`
	}
	if err := json.Unmarshal([]byte(s.must(ctx, "ip", "-j", "link", "show", "ft-t1")), &links); err != nil || len(links) != 1 || links[0].Master != "br0" {
		t.Errorf("tap ft-t1: %+v %v, want it on br0", links, err)
	}
	if procs := s.must(ctx, "cat", "/sys/fs/cgroup/cpu/ftvmd/pkgtest-t1/cgroup.procs"); !strings.Contains("\n"+procs, "\n"+qpid+"\n") {
		t.Errorf("QEMU (pid %s) is not in its cpu cgroup: %q", qpid, procs)
	}
	if cpus := strings.TrimSpace(s.must(ctx, "cat", "/sys/fs/cgroup/cpuset/ftvmd/pkgtest-t1/cpuset.cpus")); cpus != "0" {
		t.Errorf("cpuset of t1: %q, want 0", cpus)
	}
	console := filepath.Join(pkgState, "run/t1.primary/console.log")
	waitFile(t, console, "ftguest ready", 90*time.Second)
	step("VM t1 on the packaged QEMU booted its guest under the unit (tap on br0, cgroups written)")
	s.must(ctx, pkgBin, "--socket", sock, "stop", "t1")
	s.must(ctx, "systemctl", "stop", unit)
	s.waitState(ctx, unit, "inactive", 45*time.Second)
	if r := s.prop(ctx, unit, "Result"); r != "success" {
		t.Errorf("unit result after stop: %q", r)
	}
	s.stop()
	step("unit stopped (result success), systemd powered off")

	// Purge.
	if out, err := exec.CommandContext(ctx, "apt-get", "purge", "-y", "ftvmd").CombinedOutput(); err != nil {
		t.Fatalf("apt-get purge: %v\n%s", err, out)
	}
	for _, f := range []string{pkgBin, pkgConf, pkgUnit, "/usr/lib/ftvmd/libftflush.so"} {
		if _, err := os.Lstat(f); err == nil {
			t.Errorf("%s left after purge", f)
		}
	}
	if out, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "ftvmd").Output(); strings.Contains(string(out), "installed") {
		t.Errorf("dpkg still has ftvmd: %s", out)
	}
	restoreQEMU(t, saved, key)
	if got := fileSum(t, qemuBin); got != qemuSum {
		t.Errorf("ftvmd's QEMU was not put back as it was")
	}
	step("purged; ftvmd's QEMU put back at %s", filepath.Join(pkgQEMURoot, key))
}

// restoreQEMU puts the saved build and the current link back if the purge took them.
func restoreQEMU(t *testing.T, saved, key string) {
	dst := filepath.Join(pkgQEMURoot, key)
	if _, err := os.Stat(filepath.Join(dst, "bin/qemu-system-x86_64")); err != nil {
		if err := os.MkdirAll(dst, 0o755); err != nil {
			t.Errorf("restore %s: %v", dst, err)
			return
		}
		if out, err := exec.Command("cp", "-a", saved+"/.", dst+"/").CombinedOutput(); err != nil {
			t.Errorf("restore %s: %v: %s", dst, err, out)
		}
	}
	cur := filepath.Join(pkgQEMURoot, "current")
	if l, err := os.Readlink(cur); err != nil || l != key {
		_ = os.Remove(cur + ".tmp")
		if err := os.Symlink(key, cur+".tmp"); err != nil {
			t.Errorf("restore the current link: %v", err)
		} else if err := os.Rename(cur+".tmp", cur); err != nil {
			t.Errorf("restore the current link: %v", err)
		}
	}
}

// checkDepends: every library the packaged QEMU links (its ELF NEEDED entries,
// found where ldd resolves them, owned by a Debian package per dpkg -S) is in the
// package's Depends, as is the BIOS's package: a check independent of mkdeb's
// dpkg-shlibdeps and strace.
func checkDepends(t *testing.T, dpkgStatus, qemuBin string) {
	t.Helper()
	var depends string
	for _, l := range strings.Split(dpkgStatus, "\n") {
		if v, ok := strings.CutPrefix(l, "Depends: "); ok {
			depends = v
		}
	}
	names := map[string]bool{}
	for _, d := range strings.Split(depends, ",") {
		if f := strings.Fields(d); len(f) > 0 {
			names[f[0]] = true
		}
	}
	ef, err := elf.Open(qemuBin)
	if err != nil {
		t.Fatal(err)
	}
	needed, err := ef.ImportedLibraries()
	ef.Close()
	if err != nil || len(needed) == 0 {
		t.Fatalf("NEEDED of %s: %v %v", qemuBin, needed, err)
	}
	where := map[string]string{}
	for _, l := range strings.Split(mustRun(t, "ldd", qemuBin), "\n") {
		if name, rest, ok := strings.Cut(strings.TrimSpace(l), " => "); ok {
			where[name] = strings.Fields(rest)[0]
		}
	}
	for _, lib := range needed {
		path := where[lib]
		if path == "" {
			t.Errorf("ldd does not resolve %s", lib)
			continue
		}
		var owner []byte
		for _, p := range []string{path, "/usr" + path, strings.TrimPrefix(path, "/usr")} {
			if owner, err = exec.Command("dpkg-query", "-S", p).Output(); err == nil {
				break
			}
		}
		if err != nil {
			t.Errorf("%s (%s) belongs to no Debian package", lib, path)
			continue
		}
		pkg := strings.SplitN(string(owner), ":", 2)[0]
		if !names[pkg] {
			t.Errorf("QEMU links %s from package %s, which Depends lacks: %s", lib, pkg, depends)
		}
	}
	if !names["seabios"] { // the BIOS: without it QEMU does not start
		t.Errorf("Depends lacks the firmware package seabios: %s", depends)
	}
}

// execStart is the unit's ExecStart command line, split into words.
func execStart(t *testing.T, unit string) []string {
	t.Helper()
	b, err := os.ReadFile(unit)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
			if strings.ContainsAny(v, "\"'\\$%") {
				t.Fatalf("ExecStart %q: quoting and specifiers are not parsed here", v)
			}
			return strings.Fields(strings.TrimLeft(v, "@-:+!"))
		}
	}
	t.Fatalf("%s has no ExecStart", unit)
	return nil
}

func recvNotify(t *testing.T, c *net.UnixConn, within time.Duration) string {
	t.Helper()
	buf := make([]byte, 4096)
	_ = c.SetReadDeadline(time.Now().Add(within))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no notification within %s: %v", within, err)
	}
	return string(buf[:n])
}

func waitFile(t *testing.T, path, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		b, _ := os.ReadFile(path)
		if bytes.Contains(b, []byte(want)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: no %q within %s; it ends:\n%s", path, want, within, tail(b, 800))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

func mustRun(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func stderrOf(err error) string {
	if ee, ok := err.(*exec.ExitError); ok {
		return string(ee.Stderr)
	}
	return ""
}

func fileSum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
