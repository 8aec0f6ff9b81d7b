package agent

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/ftvmd/ftvmd/netbuf"
	"github.com/ftvmd/ftvmd/outputrule"
)

func TestParseDataPath(t *testing.T) {
	for in, want := range map[string]DataPath{"": DataPathRelay, "relay": DataPathRelay, "tap": DataPathTap} {
		got, err := ParseDataPath(in)
		if err != nil || got != want {
			t.Errorf("ParseDataPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"TAP", "plug", " tap"} {
		if _, err := ParseDataPath(bad); err == nil {
			t.Errorf("ParseDataPath(%q) accepted", bad)
		}
	}
	cfg := DefaultConfig("a", t.TempDir())
	cfg.DataPath = "bogus"
	if err := cfg.Validate(); err == nil {
		t.Fatal("Validate accepted data path bogus")
	}
}

func TestNICForDataPath(t *testing.T) {
	tap := nicFor(DataPathTap, "52:54:00:00:00:01", "/d", "ft-vm")
	if tap.TapName != "ft-vm" || tap.SocketPath != "" || tap.LocalPath != "" {
		t.Fatalf("tap NIC %+v", tap)
	}
	relay := nicFor(DataPathRelay, "52:54:00:00:00:01", "/d", "ft-vm")
	if relay.TapName != "" || relay.SocketPath != "/d/net-agent.sock" || relay.LocalPath != "/d/net-qemu.sock" {
		t.Fatalf("relay NIC %+v", relay)
	}
	if n := backupTapName("a-very-long-vm-name"); len(n) > 15 || n[:3] != "fb-" || n == tapName("a-very-long-vm-name") {
		t.Fatalf("backup tap name %q", n)
	}
}

func TestUnheldPath(t *testing.T) {
	u := unheldPath{why: "bind queue 7: operation not permitted"}
	u.SetMode(outputrule.Protected)
	if m := u.Stats().Rule.Mode; m != outputrule.Unprotected {
		t.Fatalf("mode %v", m)
	}
	if err := u.Protect(); !errors.Is(err, netbuf.ErrNotHeld) || !strings.Contains(err.Error(), "bind queue 7") {
		t.Fatalf("Protect: %v, want ErrNotHeld saying why", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := u.Run(ctx); err != nil {
		t.Fatal(err)
	}
}
