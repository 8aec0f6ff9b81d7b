// Command mkdeb builds ftvmd's Debian package from a set-up source tree:
//
//	go run ./packaging/mkdeb [--out build] [--no-qemu]
//
// The package holds /usr/bin/ftvmd, the log flush library in /usr/lib/ftvmd,
// ftvmd's QEMU build (/opt/ftvmd/qemu/<key> and the `current` link, as
// qemu/engine/build.sh installs them), the agent's systemd unit, the agent's
// config file /etc/ftvmd/agent.toml (a conffile: every setting commented out at
// its default, written by the ftvmd it packages) and the docs. Its Depends are
// computed, not listed by hand: dpkg-shlibdeps on every ELF file, and the Debian
// packages owning the firmware files the packaged QEMU opens when it starts a
// machine as ftvmd does (traced with strace). It uses dpkg-deb, not a Go
// packaging library (docs/dependencies.md).
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

func main() {
	var o options
	flag.StringVar(&o.out, "out", "build", "directory the .deb is written to")
	flag.StringVar(&o.version, "version", "", "package version (default: from the git commit, 0.1~git<date>.<hash>)")
	flag.StringVar(&o.qemuRoot, "qemu-root", "/opt/ftvmd/qemu", "where qemu/engine/build.sh installed ftvmd's QEMU (its current link is packaged)")
	flag.BoolVar(&o.noQEMU, "no-qemu", false, "leave ftvmd's QEMU out (the agent then needs --qemu or the distribution's QEMU)")
	flag.StringVar(&o.kernel, "probe-kernel", "build/guest/vmlinuz", "a guest kernel for the firmware probe (direct kernel boot loads its own option ROM); \"\" skips it")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	deb, err := build(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkdeb:", err)
		os.Exit(1)
	}
	fmt.Println(deb)
}

type options struct {
	out, version, qemuRoot, kernel string
	noQEMU                         bool
}

// Paths inside the package.
const (
	binPath     = "usr/bin/ftvmd"
	flushDir    = "usr/lib/ftvmd"
	unitPath    = "lib/systemd/system/ftvmd-agent.service"
	confPath    = "etc/ftvmd/agent.toml"
	docDir      = "usr/share/doc/ftvmd"
	packageName = "ftvmd"
)

// build stages the package's files in a temporary tree and runs dpkg-deb on it.
// It returns the .deb's path.
func build(ctx context.Context, o options) (string, error) {
	repo, err := repoRoot()
	if err != nil {
		return "", err
	}
	stage, err := os.MkdirTemp("", "ftvmd-deb-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(stage)
	root := filepath.Join(stage, "root")
	for _, d := range []string{"DEBIAN", "usr/bin", flushDir, "lib/systemd/system", "etc/ftvmd", docDir} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", err
		}
	}
	if o.version == "" {
		if o.version, err = gitVersion(ctx, repo); err != nil {
			return "", err
		}
	}

	bin := filepath.Join(root, binPath)
	if err := run(ctx, repo, "go", "build", "-trimpath", "-o", bin, "./cmd/ftvmd"); err != nil {
		return "", fmt.Errorf("build ftvmd: %w", err)
	}
	if err := run(ctx, repo, "bash", "qemu/flush/build.sh", filepath.Join(root, flushDir)); err != nil {
		return "", fmt.Errorf("build the flush library: %w", err)
	}
	if err := copyFile(filepath.Join(repo, "packaging/ftvmd-agent.service"), filepath.Join(root, unitPath), 0o644); err != nil {
		return "", err
	}
	conf, err := output(ctx, repo, bin, "agent", "config")
	if err != nil {
		return "", fmt.Errorf("write the default config: %w", err)
	}
	if err := os.WriteFile(filepath.Join(root, confPath), conf, 0o644); err != nil {
		return "", err
	}
	if err := copyDocs(repo, filepath.Join(root, docDir)); err != nil {
		return "", err
	}

	var qemuBin string
	if !o.noQEMU {
		if qemuBin, err = stageQEMU(o.qemuRoot, root); err != nil {
			return "", err
		}
	}

	depends, err := shlibDepends(ctx, root)
	if err != nil {
		return "", err
	}
	if qemuBin != "" {
		kernel := o.kernel
		if kernel != "" && !filepath.IsAbs(kernel) {
			kernel = filepath.Join(repo, kernel)
		}
		fw, err := firmwareDepends(ctx, qemuBin, kernel)
		if err != nil {
			return "", err
		}
		depends = append(depends, fw...)
	}
	// Run as programs, not linked: qemu-img makes the snapshot drive and rr check's
	// overlays.
	depends = append(depends, "qemu-utils")
	if qemuBin == "" {
		// Without ftvmd's build the agent runs VMs on the distribution's QEMU.
		depends = append(depends, "qemu-system-x86")
	}

	size, err := installedSizeKiB(root)
	if err != nil {
		return "", err
	}
	arch, err := output(ctx, repo, "dpkg", "--print-architecture")
	if err != nil {
		return "", err
	}
	control := controlFile(o.version, strings.TrimSpace(string(arch)), size, depends, qemuBin != "")
	if err := os.WriteFile(filepath.Join(root, "DEBIAN/control"), []byte(control), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(root, "DEBIAN/conffiles"), []byte("/"+confPath+"\n"), 0o644); err != nil {
		return "", err
	}
	for name, script := range maintainerScripts {
		if err := os.WriteFile(filepath.Join(root, "DEBIAN", name), []byte(script), 0o755); err != nil {
			return "", err
		}
	}

	out := o.out
	if !filepath.IsAbs(out) {
		out = filepath.Join(repo, out)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", err
	}
	deb := filepath.Join(out, fmt.Sprintf("%s_%s_%s.deb", packageName, o.version, strings.TrimSpace(string(arch))))
	if err := run(ctx, repo, "dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, deb); err != nil {
		return "", fmt.Errorf("dpkg-deb: %w", err)
	}
	return deb, nil
}

// repoRoot is the directory of the go.mod above the working directory.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			if _, err := os.Stat(filepath.Join(dir, "cmd/ftvmd")); err == nil {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("run mkdeb inside the ftvmd source tree")
		}
		dir = parent
	}
}

// gitVersion is 0.1~git<commit date>.<short hash>: it grows with every commit,
// so apt sees a newer build as an upgrade.
func gitVersion(ctx context.Context, repo string) (string, error) {
	out, err := output(ctx, repo, "git", "log", "-1", "--format=%cd.%h", "--date=format:%Y%m%d%H%M%S")
	if err != nil {
		return "", fmt.Errorf("package version from git (or give --version): %w", err)
	}
	return "0.1~git" + strings.TrimSpace(string(out)), nil
}

// stageQEMU copies the build the current link names into the package, with the
// link, and returns the staged binary's path.
func stageQEMU(qemuRoot, root string) (string, error) {
	key, err := os.Readlink(filepath.Join(qemuRoot, "current"))
	if err != nil {
		return "", fmt.Errorf("ftvmd's QEMU (run qemu/engine/build.sh, or --no-qemu): %w", err)
	}
	key = filepath.Base(key)
	src := filepath.Join(qemuRoot, key)
	if _, err := os.Stat(filepath.Join(src, "ENGINE")); err != nil {
		return "", fmt.Errorf("ftvmd's QEMU build %s is incomplete: %w", src, err)
	}
	dst := filepath.Join(root, strings.TrimPrefix(qemuRoot, "/"))
	if err := copyTree(src, filepath.Join(dst, key)); err != nil {
		return "", err
	}
	if err := os.Symlink(key, filepath.Join(dst, "current")); err != nil {
		return "", err
	}
	return filepath.Join(dst, key, "bin/qemu-system-x86_64"), nil
}

// shlibDepends runs dpkg-shlibdeps on every ELF file in the tree.
func shlibDepends(ctx context.Context, root string) ([]string, error) {
	var elfs []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || strings.Contains(p, "/DEBIAN/") {
			return err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		magic := make([]byte, 4)
		if n, _ := f.Read(magic); n == 4 && string(magic) == "\x7fELF" {
			elfs = append(elfs, p)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// dpkg-shlibdeps wants a source package's debian/control to read.
	work, err := os.MkdirTemp("", "ftvmd-shlibdeps-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	if err := os.MkdirAll(filepath.Join(work, "debian"), 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(work, "debian/control"), []byte("Source: ftvmd\n\nPackage: ftvmd\nArchitecture: any\n"), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, "dpkg-shlibdeps", append([]string{"-O"}, elfs...)...)
	cmd.Dir = work
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("dpkg-shlibdeps (Debian package dpkg-dev): %w: %s", err, stderr.String())
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "shlibs:Depends="); ok {
			return splitDeps(v), nil
		}
	}
	return nil, fmt.Errorf("dpkg-shlibdeps printed no dependencies: %s", out)
}

func splitDeps(s string) []string {
	var out []string
	for _, d := range strings.Split(s, ",") {
		if d = strings.TrimSpace(d); d != "" {
			out = append(out, d)
		}
	}
	return out
}

// firmwareDepends starts the QEMU with the machine ftvmd builds (pc, TCG, a
// virtio NIC, the guest kernel when given), paused, under strace, and returns the
// Debian packages owning the files it opened from its firmware path (the links
// and what they point at), each at least at the installed version: record and
// replay must load the same firmware.
func firmwareDepends(ctx context.Context, qemuBin, kernel string) ([]string, error) {
	if _, err := exec.LookPath("strace"); err != nil {
		return nil, errors.New("strace (Debian package strace) is needed to find the firmware the QEMU loads")
	}
	fwPath, err := output(ctx, "/", qemuBin, "-L", "help")
	if err != nil {
		return nil, fmt.Errorf("%s -L help: %w", qemuBin, err)
	}
	dirs := strings.Fields(string(fwPath))
	trace, err := os.CreateTemp("", "ftvmd-qemu-strace-")
	if err != nil {
		return nil, err
	}
	trace.Close()
	defer os.Remove(trace.Name())
	args := []string{"-f", "-e", "trace=open,openat", "-o", trace.Name(), qemuBin,
		"-M", "pc", "-accel", "tcg", "-cpu", "qemu64", "-smp", "1", "-m", "64",
		"-nographic", "-nodefaults", "-no-user-config", "-serial", "none", "-monitor", "none",
		"-device", "virtio-net-pci", "-S"}
	if kernel != "" {
		args = append(args, "-kernel", kernel)
	}
	// Paused (-S), the machine has loaded its firmware within a second; the
	// timeout ends it.
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	// strace and the QEMU it traces share a process group, ended together: killing
	// strace alone leaves the paused QEMU running for ever, holding every fd it
	// inherited (in the lab, the e2e queue's lock).
	cmd := exec.CommandContext(pctx, "strace", args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	_ = cmd.Run()
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // strace may have ended first
	}
	data, err := os.ReadFile(trace.Name())
	if err != nil {
		return nil, err
	}
	files := map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		l := sc.Text()
		if strings.Contains(l, "= -1 ") {
			continue // not found there: QEMU tries each firmware directory
		}
		i := strings.Index(l, "\"")
		j := strings.LastIndex(l, "\"")
		if i < 0 || j <= i {
			continue
		}
		p := l[i+1 : j]
		for _, d := range dirs {
			if strings.HasPrefix(p, strings.TrimSuffix(d, "/")+"/") && !strings.HasPrefix(p, filepath.Dir(filepath.Dir(qemuBin))) {
				files[p] = true
				if r, err := filepath.EvalSymlinks(p); err == nil {
					files[r] = true
				}
			}
		}
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("the QEMU opened no firmware file under %v (strace log %d bytes)", dirs, len(data))
	}
	pkgs := map[string]bool{}
	for f := range files {
		out, err := output(ctx, "/", "dpkg-query", "-S", f)
		if err != nil {
			return nil, fmt.Errorf("firmware %s belongs to no Debian package: %w", f, err)
		}
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if name, _, ok := strings.Cut(l, ": "); ok {
				for _, n := range strings.Split(name, ", ") {
					pkgs[strings.TrimSpace(n)] = true
				}
			}
		}
	}
	var deps []string
	for p := range pkgs {
		v, err := output(ctx, "/", "dpkg-query", "-W", "-f=${Version}", p)
		if err != nil {
			return nil, fmt.Errorf("version of %s: %w", p, err)
		}
		deps = append(deps, fmt.Sprintf("%s (>= %s)", p, strings.TrimSpace(string(v))))
	}
	sort.Strings(deps)
	return deps, nil
}

func controlFile(version, arch string, sizeKiB int64, depends []string, withQEMU bool) string {
	desc := "fault-tolerant VMs: a primary and a backup in virtual lockstep\n" +
		" ftvmd runs a VM as a primary on one host and a backup in virtual lockstep on\n" +
		" another: the primary's QEMU records every nondeterministic event, the agent\n" +
		" streams the log to the backup whose QEMU replays it live, and every frame\n" +
		" the guest sends is held until the backup has the log before it. When a host\n" +
		" dies the survivor carries on with no guest reboot.\n" +
		" .\n" +
		" This package holds the ftvmd command and agent, its systemd unit\n" +
		" (ftvmd-agent.service) and config file (/etc/ftvmd/agent.toml)"
	if withQEMU {
		desc += ",\n and ftvmd's QEMU build in /opt/ftvmd/qemu (Debian's QEMU 7.2 with ftvmd's\n record/replay patches)."
	} else {
		desc += ".\n It runs VMs on the distribution's QEMU (or one given with --qemu)."
	}
	return fmt.Sprintf(`Package: %s
Version: %s
Architecture: %s
Maintainer: ftvmd maintainers <ftvmd@localhost>
Installed-Size: %d
Depends: %s
Recommends: iproute2
Section: admin
Priority: optional
Description: %s
`, packageName, version, arch, sizeKiB, strings.Join(depends, ", "), desc)
}

// maintainerScripts tell a running systemd about the unit; the agent is not
// enabled or started: it needs its keys first (docs/operator-guide.md).
var maintainerScripts = map[string]string{
	"postinst": `#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null || true
fi
`,
	"prerm": `#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
	systemctl stop ftvmd-agent.service >/dev/null 2>&1 || true
fi
`,
	"postrm": `#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload >/dev/null || true
fi
`,
}

// copyDocs installs the README and docs/ (text and pictures).
func copyDocs(repo, dst string) error {
	if err := copyFile(filepath.Join(repo, "README.md"), filepath.Join(dst, "README.md"), 0o644); err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(repo, "docs"))
	if err != nil {
		return err
	}
	for _, e := range ents {
		ext := filepath.Ext(e.Name())
		if e.Type().IsRegular() && (ext == ".md" || ext == ".svg" || ext == ".png" || ext == ".json") {
			if err := copyFile(filepath.Join(repo, "docs", e.Name()), filepath.Join(dst, e.Name()), 0o644); err != nil {
				return err
			}
		}
	}
	return os.WriteFile(filepath.Join(dst, "copyright"), []byte(
		"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"+
			"Upstream-Name: ftvmd\n\n"+
			"Files: *\nCopyright: the ftvmd authors\nLicense: see the ftvmd source tree\n\n"+
			"Files: opt/ftvmd/qemu/*\nCopyright: the QEMU authors; ftvmd's patches: the ftvmd authors\n"+
			"License: GPL-2\n See /usr/share/common-licenses/GPL-2 and the QEMU source package (qemu in Debian).\n"), 0o644)
}

func installedSizeKiB(root string) (int64, error) {
	var total int64
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || strings.Contains(p, "/DEBIAN") || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		total += (info.Size() + 1023) / 1024
		return nil
	})
	return total, err
}

func copyFile(src, dst string, mode fs.FileMode) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	return os.WriteFile(dst, data, mode)
}

// copyTree copies a directory of regular files and links, keeping modes.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, target)
		case d.Type().IsRegular():
			return copyFile(p, target, info.Mode().Perm())
		}
		return fmt.Errorf("%s: not a file, directory or link", p)
	})
}

func run(ctx context.Context, dir, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

func output(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}
