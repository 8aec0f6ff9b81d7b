package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// threadStat reads a counter of /proc/self/task/TID/status.
func threadStat(t *testing.T, tid int, key string) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", tid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, key+":"); ok {
			n, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in the thread's status", key)
	return 0
}

// The neighbour load runs pinned to its CPU and idles its share of every period.
func TestNeighbourLoad(t *testing.T) {
	for _, d := range []float64{0, -1, 1.5} {
		if _, err := newNeighbour(0, d); err == nil {
			t.Fatalf("duty %v accepted", d)
		}
	}
	for _, c := range []struct {
		duty       float64
		busy, idle time.Duration
	}{{0.5, 5 * time.Millisecond, 5 * time.Millisecond}, {1, neighbourPeriod, 0}, {0.25, 2500 * time.Microsecond, 7500 * time.Microsecond}} {
		if b, i := dutyCycle(c.duty); b != c.busy || i != c.idle {
			t.Errorf("duty %v: busy %s idle %s, want %s and %s", c.duty, b, i, c.busy, c.idle)
		}
	}
	n, err := newNeighbour(0, 0.5)
	if err != nil {
		t.Fatal(err)
	}
	v0 := threadStat(t, n.tid, "voluntary_ctxt_switches")
	time.Sleep(200 * time.Millisecond)
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/status", n.tid))
	if err != nil {
		t.Fatal(err)
	}
	if threadStat(t, n.tid, "voluntary_ctxt_switches") == v0 {
		t.Error("the neighbour thread never slept in 200 ms at duty 0.5")
	}
	n.stop()
	if !strings.Contains(string(b), "Cpus_allowed_list:\t0\n") {
		t.Errorf("the neighbour thread is not pinned to CPU 0:\n%s", b)
	}
}
