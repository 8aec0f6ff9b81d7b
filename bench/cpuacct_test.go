package bench

import (
	"math"
	"os"
	"testing"
	"time"
)

func TestCPUUse(t *testing.T) {
	t0 := time.Unix(100, 0)
	a := cpuSnap{at: t0, busy: 1000, cores: 2, procs: [4]uint64{10, 20, 30, 40}, pSys: 5}
	b := cpuSnap{at: t0.Add(2 * time.Second), busy: 1300, cores: 2, procs: [4]uint64{190, 20, 70, 50}, pSys: 45}
	u := use(a, b)
	want := CPUUse{Busy: 1.5, Cores: 2, PrimaryQEMU: 0.9, PrimaryQEMUSys: 0.2, BackupQEMU: 0, AgentA: 0.2, AgentB: 0.05}
	for _, c := range []struct {
		name      string
		got, want float64
	}{{"busy", u.Busy, want.Busy}, {"primary", u.PrimaryQEMU, want.PrimaryQEMU}, {"primary sys", u.PrimaryQEMUSys, want.PrimaryQEMUSys}, {"backup", u.BackupQEMU, want.BackupQEMU},
		{"agent a", u.AgentA, want.AgentA}, {"agent b", u.AgentB, want.AgentB}} {
		if math.Abs(c.got-c.want) > 1e-9 {
			t.Errorf("%s: %v, want %v", c.name, c.got, c.want)
		}
	}
	if u.Cores != 2 {
		t.Errorf("cores %d", u.Cores)
	}
	if z := use(b, b); z != (CPUUse{}) {
		t.Errorf("zero interval: %+v", z)
	}
}

// TestSnapOfSelf reads the real /proc for this test process: its own CPU time only
// grows, and the machine has at least one core.
func TestSnapOfSelf(t *testing.T) {
	p := &cpuProbe{pids: [4]int{os.Getpid()}}
	a, err := p.snap()
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	b, err := p.snap()
	if err != nil {
		t.Fatal(err)
	}
	if a.cores < 1 || b.procs[0] < a.procs[0] || b.busy < a.busy || b.pSys < a.pSys || b.pSys > b.procs[0] {
		t.Fatalf("snapshots %+v then %+v", a, b)
	}
	if _, _, err := procJiffies(1 << 30); err == nil {
		t.Fatal("no error for a pid that does not exist")
	}
}

func TestPerGbit(t *testing.T) {
	// 125 MB/s is 1 Gbit/s: 119.209 MiB/s.
	if got := perGbit(0.5, 1e9/8/(1<<20)); got < 0.4999 || got > 0.5001 {
		t.Fatalf("0.5 cores at 1 Gbit/s: %v cores per Gbit/s", got)
	}
	if got := perGbit(0.3, 0); got != 0 {
		t.Fatalf("no traffic: %v, want 0", got)
	}
}

func TestMInsnPerMB(t *testing.T) {
	a, b := bulkSnap{icount: 1_000_000_000}, bulkSnap{icount: 2_200_000_000}
	if got := mInsnPerMB(a, b, 100); math.Abs(got-12) > 1e-9 {
		t.Fatalf("1.2 G instructions over 100 MiB: %v M per MiB, want 12", got)
	}
	// A failed status read (a zero snapshot) or a count that went back gives no figure.
	for _, c := range [][2]bulkSnap{{{}, b}, {a, {}}, {b, a}} {
		if got := mInsnPerMB(c[0], c[1], 100); got != 0 {
			t.Fatalf("%+v to %+v: %v, want 0", c[0], c[1], got)
		}
	}
}
