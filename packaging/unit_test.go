package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// verifyUnit runs `systemd-analyze verify` on unit as installed in a scratch root
// (the host's unit directory for the targets it names, an executable at
// /usr/bin/ftvmd) and returns what it printed. systemd-analyze exits 0 on unknown
// keys and unparsable values (it only warns), so any output is a failure.
func verifyUnit(t *testing.T, unit []byte) (string, error) {
	t.Helper()
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (Debian package systemd; test/setup.sh installs it)")
	}
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "usr/lib/systemd", "etc/systemd/system"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-a", "/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copy the host's units: %v: %s", err, out)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/bin/ftvmd"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/systemd/system/ftvmd-agent.service"), unit, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sa, "verify", "--root="+root, "/etc/systemd/system/ftvmd-agent.service").CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func TestUnitVerifies(t *testing.T) {
	unit, err := os.ReadFile("ftvmd-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := verifyUnit(t, unit); err != nil || out != "" {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// The check can fail: a misspelt key and a bad value are reported.
	bad := strings.Replace(strings.Replace(string(unit), "ProtectSystem=", "ProtectSystm=", 1), "RestartSec=3s", "RestartSec=3x", 1)
	out, _ := verifyUnit(t, []byte(bad))
	if !strings.Contains(out, "Unknown key 'ProtectSystm'") || !strings.Contains(out, "3x") {
		t.Fatalf("a broken unit was not reported: %q", out)
	}
}

// TestUnitShape: what the package and the docs rely on.
func TestUnitShape(t *testing.T) {
	unit, err := os.ReadFile("ftvmd-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"\nType=notify\n",
		"\nExecStart=/usr/bin/ftvmd agent --config /etc/ftvmd/agent.toml\n",
		"\nRestart=on-failure\n",
		"\nRestartSec=",
		"\nLimitNOFILE=",
		"\nWantedBy=multi-user.target\n",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("unit lacks %q", strings.TrimSpace(want))
		}
	}
}
