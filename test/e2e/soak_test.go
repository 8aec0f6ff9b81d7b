package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/bench"
)

// TestSoakShort is `ftvmd bench soak` cut to CI's size: a busy protected guest
// under a bulk client->guest stream and a request loop for soakFor (3 minutes, as issue 15 asks of CI), sampled every
// 5 s. The agents keep a tiny retention (the backup keeps the whole log only
// until it passes 16 MiB, a few seconds into the stream), and the VM's logs may
// take 32 MiB on each host (the backup's retention, 16 MiB, fits; paced to the lag bound a busy
// guest took about 1 MiB/s: 109 MiB in 90 s on a quiet lab, so a larger limit
// would not be passed twice over). Every target of the benchmark must be met: logs on
// disk flat over the second half and under the limit, the agents' and QEMUs'
// RSS flat, lag p99 within the bound, no request lost or wrong, the stream's
// every put checked. Takes about 4.5 minutes (lab up, boot, soakFor, stop).
func TestSoakShort(t *testing.T) {
	if testing.Short() {
		t.Skip("soak")
	}
	const soakFor = 3 * time.Minute
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	t0 := time.Now()
	s := drillLab(ctx, t, append(agentArgs(), "--log-retention=16MiB")...)
	res, err := bench.Soak(ctx, s, bench.NewEnv("TestSoakShort"), bench.SoakOpts{
		VM:         "soakshort",
		Duration:   soakFor,
		Interval:   5 * time.Second,
		MaxLogDisk: "32MiB",
		Retention:  "16MiB",
	})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("summary: %s", b)
	t.Logf("load average %s at the start of the traffic, %s at its end", res.LoadBefore, res.LoadAfter)
	for _, tg := range res.Targets {
		t.Logf("target %s: met %v: %s", tg.Name, tg.Met, tg.Detail)
	}
	// The limit must have been what the test set, and the stream must have
	// written far more log than it: otherwise "under the limit" shows nothing.
	if res.LogDiskLimit != 32<<20 {
		t.Errorf("the VM's log disk limit is %d, want 32 MiB", res.LogDiskLimit)
	}
	if res.FilesA < 2*res.LogDiskLimit {
		t.Errorf("the primary's log files reached only %d MiB: too little traffic to judge a 32 MiB limit (load on the machine?)", res.FilesA>>20)
	}
	if !res.Pass {
		t.Errorf("targets not met:\n%s", strings.Join(res.Failed(), "\n"))
	}
	t.Logf("test took %s", time.Since(t0).Round(time.Second))
}
