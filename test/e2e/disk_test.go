package e2e

import (
	"context"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
	"github.com/ftvmd/ftvmd/lab"
)

// TestDiskVerify: protect a guest with a disk, write records, and check with
// `ftvmd verify` that both hosts' copies are byte-identical at a quiesced point.
func TestDiskVerify(t *testing.T) {
	l := needLab(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	const vm = "dv"
	img, err := lab.CreateImage(lab.HostA, vm, "64M")
	if err != nil {
		t.Fatal(err)
	}
	protectGuest(ctx, t, l, vm, "--disk", img)
	waitCaughtUp(ctx, t, vm, 100*time.Millisecond, 2*time.Minute)
	c, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for n := 0; n < 50; n++ {
		if resp, err := c.Do(fmt.Sprintf("rec %d r%d", n, n), 30*time.Second); err != nil || resp != fmt.Sprintf("rec ok %d", n) {
			t.Fatalf("rec %d: %q %v", n, resp, err)
		}
	}
	out, err := l.Run(ctx, "a", "verify", vm)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(strings.TrimSpace(out))
	if !strings.Contains(out, "identical") {
		t.Fatalf("verify: %s", out)
	}
	// The guest runs on after verify.
	if resp, err := c.Do("reccount", 30*time.Second); err != nil || resp != "reccount 50" {
		t.Fatalf("reccount after verify: %q %v", resp, err)
	}
}

// TestDiskFailover: under a client writing durable records, kill every process of
// host A; every record the client got an acknowledgement for must read back from the
// new primary's disk copy. Repeated at random moments.
func TestDiskFailover(t *testing.T) {
	if os.Getenv("FTVMD_E2E") != "1" {
		t.Skip("end-to-end test: set FTVMD_E2E=1 (test/run-tests.sh does)")
	}
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewSource(seed))
	for i := 0; i < 2; i++ {
		t.Run(fmt.Sprintf("kill-primary-%d", i), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
			defer cancel()
			s := drillLab(ctx, t, agentArgs()...) // a fresh lab per drill
			img, err := lab.CreateImage(lab.HostA, "df", "64M")
			if err != nil {
				t.Fatal(err)
			}
			rep, err := bench.RunDrillOpts(ctx, s, bench.NewEnv("e2e"), bench.DrillOpts{VM: "df", Kind: bench.KillPrimary, Disk: img}, rng)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%+v", rep)
			if rep.RecordsAcked == 0 {
				t.Fatal("no record was acknowledged before the fault")
			}
			if rep.RecordsMissing != 0 || rep.RequestsLost != 0 || rep.Inconsistent != 0 {
				t.Fatalf("%d acknowledged records missing, %d requests lost, %d inconsistent", rep.RecordsMissing, rep.RequestsLost, rep.Inconsistent)
			}
			if rep.Owner != "b" || !rep.ConnSurvived {
				t.Fatalf("owner %s, connection survived %v", rep.Owner, rep.ConnSurvived)
			}
			// The live disk left the backup's run directory (scratch: the next
			// protection with B as the backup empties it) for a durable,
			// epoch-named place.
			st, err := lab.Status(ctx, lab.HostB, "df")
			if err != nil {
				t.Fatal(err)
			}
			want := filepath.Join(lab.HostB.Dir, "disks", fmt.Sprintf("df.epoch-%020d.qcow2", st.Epoch))
			if st.Disk != want {
				t.Fatalf("live disk %q, want %q", st.Disk, want)
			}
			if _, err := os.Stat(want); err != nil {
				t.Fatal(err)
			}
		})
	}
}
