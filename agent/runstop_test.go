package agent

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Run returns when it is stopped while both servers have already returned: its
// wait for them must count what its first select took. A ctx cancelled before
// Run reaches that select (a signal during start-up; a test's deferred cancel on
// a slow, contended machine) leaves both ctx.Done and a server's nil in errc
// ready, and select picks either. Taking errc there and then reading it twice
// more hung Run for good (a full `go test -race ./agent` that hung until its
// timeout, in TestAgentRemovesStaleCgroupsAtStart's deferred wait for Run). The
// READY hook gives the servers time to return before the select; each round
// took errc with even odds, so 20 rounds hung with near certainty.
func TestAgentRunStopsWithServersDone(t *testing.T) {
	ca := newTestCA(t)
	for i := range 20 {
		host := fmt.Sprintf("runstop%d", i)
		a := testAgent(t, host, ca.issue(host))
		a.cfg.Notify = func(lines ...string) {
			if len(lines) > 0 && strings.HasPrefix(lines[0], "READY=1") {
				time.Sleep(20 * time.Millisecond) // the servers see the cancelled ctx and return
			}
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("round %d: Run: %v", i, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Run did not return 10 s after its ctx was cancelled", i)
		}
	}
}
