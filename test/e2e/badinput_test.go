package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/lab"
)

// TestBadInput: a wrong VM spec, a missing QEMU, a backup host that does not answer and
// a corrupt log each give one clear error line and leave nothing running.
func TestBadInput(t *testing.T) {
	l := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// Host A's agent gets a QEMU binary that does not exist; host B's is real.
	if err := l.StartAgent(ctx, lab.HostA, "--qemu", "/nonexistent/qemu-system-x86_64"); err != nil {
		t.Fatal(err)
	}
	if err := l.StartAgent(ctx, lab.HostB); err != nil {
		t.Fatal(err)
	}
	oneLine := func(name, out string, err error, want string) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: succeeded, want an error", name)
		}
		msg := strings.TrimSpace(out)
		if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, want) {
			t.Fatalf("%s: want one error line containing %q, got %q", name, want, msg)
		}
		t.Logf("%s: %s", name, msg)
	}

	// A wrong spec: refused before anything is stored.
	out, err := l.Run(ctx, "a", "vm", "define", "bad", "--kernel", "/nonexistent/vmlinuz", "--initrd", l.Initrd, "--mac", "zz:zz")
	oneLine("bad spec", out, err, "invalid vm spec")
	if _, err := os.Stat(filepath.Join(lab.HostA.Dir, "vms", "bad.json")); !os.IsNotExist(err) {
		t.Fatal("an invalid spec was stored")
	}
	out, err = l.Run(ctx, "a", "protect", "nosuchvm", "--backup", lab.HostB.Peer())
	oneLine("unknown vm", out, err, "not found")

	// A missing QEMU on host A.
	if err := l.DefineGuest(ctx, lab.HostA, "g1", ""); err != nil {
		t.Fatal(err)
	}
	out, err = l.Run(ctx, "a", "run", "g1")
	oneLine("missing qemu", out, err, "qemu")
	assertNothingRunning(t, "g1")

	// A backup host that does not answer (nothing listens at .99).
	out, err = l.Run(ctx, "a", "protect", "g1", "--backup", "10.77.0.99:7800")
	oneLine("unreachable backup", out, err, "does not answer")
	assertNothingRunning(t, "g1")

	// Host B as primary with a missing QEMU on its backup (host A): refused by the backup.
	if err := l.DefineGuest(ctx, lab.HostB, "g2", ""); err != nil {
		t.Fatal(err)
	}
	out, err = l.Run(ctx, "b", "protect", "g2", "--backup", lab.HostA.Peer())
	oneLine("backup without qemu", out, err, "qemu")
	assertNothingRunning(t, "g2")

	// Logs that may take more than the disk has free: refused before anything starts,
	// on the primary's host and on the backup's.
	if err := l.DefineGuest(ctx, lab.HostB, "g3", "", "--max-log-disk", "100TiB"); err != nil {
		t.Fatal(err)
	}
	out, err = l.Run(ctx, "b", "run", "g3")
	oneLine("log disk limit over free space", out, err, "has only")
	assertNothingRunning(t, "g3")

	// A corrupt log.
	bad := filepath.Join(t.TempDir(), "bad.rr")
	if err := os.WriteFile(bad, append([]byte{0, 0xe0, 0x20, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0}, 0x00, 0, 0, 0, 5, 0xfe, 1, 2), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = l.Run(ctx, "", "log", "inspect", bad)
	oneLine("corrupt log", out, err, "offset")
}

// assertNothingRunning checks no QEMU for vm runs and no tap is left on the lab hosts.
func assertNothingRunning(t *testing.T, vm string) {
	t.Helper()
	time.Sleep(300 * time.Millisecond)
	if out, err := exec.Command("pgrep", "-f", "qemu-system-x86_64 -name "+vm+" ").CombinedOutput(); err == nil {
		t.Fatalf("a QEMU for %s is still running: %s", vm, out)
	}
	for _, ns := range []string{lab.NSA, lab.NSB} {
		out, _ := exec.Command("ip", "-n", ns, "-o", "link", "show").CombinedOutput()
		if strings.Contains(string(out), "ft-"+vm) {
			t.Fatalf("tap ft-%s left in %s", vm, ns)
		}
	}
}
