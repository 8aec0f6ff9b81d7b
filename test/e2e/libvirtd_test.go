package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// libvirtdCache keeps libvirt's QEMU capability cache between runs: probing
// qemu-system-x86_64 takes libvirtd up to a minute on a busy two-core machine.
const libvirtdCache = "/var/cache/ftvmd-e2e-libvirt"

// libvirtd is a libvirt daemon of a test's own (Debian's libvirt-daemon-system),
// in a mount and a network namespace of its own: its configuration, state and
// sockets are bind-mounted from a temporary directory over libvirt's paths, so it
// sees no domain or network of the host's and defines none there, and in its
// empty network namespace nothing it might start can touch the host's interfaces.
// It runs as root with QEMU's user set to root: the capability probe (as root) and
// libvirt's check of /dev/kvm (as the QEMU user) then agree, where with Debian's
// default user a root-only /dev/kvm makes every lookup probe QEMU again.
type libvirtd struct {
	t       *testing.T
	dir     string
	uri     string
	cmd     *exec.Cmd
	done    chan error
	defined []string
}

// startLibvirtd starts a libvirtd and stops it (undefining what the test defined,
// removing its directory) when the test ends.
func startLibvirtd(ctx context.Context, t *testing.T) *libvirtd {
	t.Helper()
	if os.Getenv("FTVMD_E2E") != "1" {
		t.Skip("end-to-end test: set FTVMD_E2E=1 (test/run-tests.sh does)")
	}
	for _, bin := range []string{"libvirtd", "virsh", "unshare"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s not installed (test/setup.sh installs libvirt-daemon-system and libvirt-clients): %v", bin, err)
		}
	}
	dir, err := os.MkdirTemp("/var/tmp", "ftvmd-libvirtd-")
	if err != nil {
		t.Fatal(err)
	}
	d := &libvirtd{t: t, dir: dir, done: make(chan error, 1)}
	t.Cleanup(d.stop)
	binds := [][2]string{
		{"etc", "/etc/libvirt/qemu"}, // defined domains and networks
		{"qemu.conf", "/etc/libvirt/qemu.conf"},
		{"lib", "/var/lib/libvirt"},
		{"log", "/var/log/libvirt"},
		{libvirtdCache, "/var/cache/libvirt"},
		{"run", "/run"}, // sockets, pid files
	}
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, b := range binds {
		src := b[0]
		if !filepath.IsAbs(src) {
			src = filepath.Join(dir, src)
		}
		if src != filepath.Join(dir, "qemu.conf") {
			if err := os.MkdirAll(src, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := os.Stat(b[1]); err != nil {
			t.Fatalf("libvirt's %s is missing (is libvirt-daemon-system installed?): %v", b[1], err)
		}
		fmt.Fprintf(&script, "mount --bind %s %s\n", src, b[1])
	}
	if err := os.WriteFile(filepath.Join(dir, "qemu.conf"), []byte("user = \"root\"\ngroup = \"root\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "run", "libvirt"), 0o755); err != nil {
		t.Fatal(err)
	}
	// A sysfs of the new network namespace: libvirt's node device driver then sees
	// only its loopback, not the host's interfaces.
	script.WriteString("mount -t sysfs sysfs /sys\nip link set lo up\n")
	fmt.Fprintf(&script, "exec libvirtd --pid-file %s\n", filepath.Join(dir, "libvirtd.pid"))
	logf, err := os.Create(filepath.Join(dir, "libvirtd.log"))
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command("unshare", "--mount", "--net", "--propagation", "private", "--", "sh", "-c", script.String())
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait(); logf.Close() }()
	sock := filepath.Join(dir, "run", "libvirt", "libvirt-sock")
	d.uri = "qemu:///system?socket=" + sock
	// Up when virsh gets an answer: the socket appears before the drivers are ready.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(sock); err == nil {
			if _, err := d.virsh(ctx, "version"); err == nil {
				t.Logf("libvirtd up (pid %d, %s)", d.cmd.Process.Pid, dir)
				return d
			}
		}
		select {
		case err := <-d.done:
			d.done <- err
			t.Fatalf("libvirtd exited: %v\n%s", err, d.log())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("libvirtd did not answer within 2 minutes\n%s", d.log())
		}
	}
}

func (d *libvirtd) log() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "libvirtd.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// virsh runs virsh against this daemon.
func (d *libvirtd) virsh(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "virsh", append([]string{"-c", d.uri}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("virsh %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// define defines a domain from its XML (virsh define); stop undefines it.
func (d *libvirtd) define(ctx context.Context, name, xml string) {
	d.t.Helper()
	p := filepath.Join(d.dir, name+".xml")
	if err := os.WriteFile(p, []byte(xml), 0o644); err != nil {
		d.t.Fatal(err)
	}
	if _, err := d.virsh(ctx, "define", p); err != nil {
		d.t.Fatal(err)
	}
	d.defined = append(d.defined, name)
}

func (d *libvirtd) stop() {
	if d.cmd != nil && d.cmd.Process != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		for _, name := range d.defined {
			if _, err := d.virsh(ctx, "undefine", "--nvram", name); err != nil {
				d.t.Errorf("undefine %s: %v", name, err)
			}
		}
		cancel()
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(15 * time.Second):
			_ = d.cmd.Process.Kill()
			<-d.done
		}
		if d.t.Failed() {
			d.t.Logf("libvirtd log tail:\n%s", d.log())
		}
	}
	if err := os.RemoveAll(d.dir); err != nil {
		d.t.Errorf("remove %s: %v", d.dir, err)
	}
}
