package agent

import (
	"bufio"
	"os"
	"strings"
	"testing"
	"time"
)

// systemd must let the agent finish its shutdown (the handovers, then the stops)
// before it SIGKILLs the unit, and must send the SIGTERM to the agent alone: a QEMU
// that got it too would die under its own handover.
func TestServiceStopTimeoutCoversShutdown(t *testing.T) {
	f, err := os.Open("../packaging/ftvmd-agent.service")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), "="); ok && !strings.HasPrefix(k, "#") {
			keys[k] = v
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	stop, err := time.ParseDuration(keys["TimeoutStopSec"])
	if err != nil {
		t.Fatalf("TimeoutStopSec %q: %v", keys["TimeoutStopSec"], err)
	}
	if stop <= shutdownTimeout {
		t.Errorf("TimeoutStopSec=%s does not cover the agent's shutdown (%s)", stop, shutdownTimeout)
	}
	if keys["KillMode"] != "mixed" {
		t.Errorf("KillMode=%s, want mixed (SIGTERM to the agent only)", keys["KillMode"])
	}
	t.Logf("shutdown within %s (handover %s, stop %s); TimeoutStopSec=%s", shutdownTimeout, handoverTimeout, stopTimeout, stop)
}
