package logging

import (
	"sync/atomic"
	"testing"
	"time"
)

// A Synced reaches a backup that reads it, with its epoch, once; a backup that
// does not read them refuses it as a protocol violation.
func TestSynced(t *testing.T) {
	var got, calls atomic.Uint64
	p := runEmptyPair(t, 4096, ReceiverConfig{OnSynced: func(e uint64) { got.Store(e); calls.Add(1) }})
	p.snd.Synced(7)
	waitFor(t, 5*time.Second, "synced", func() bool { return calls.Load() == 1 })
	time.Sleep(100 * time.Millisecond) // heartbeats go on; no second Synced
	if got.Load() != 7 || calls.Load() != 1 {
		t.Fatalf("synced epoch %d in %d calls, want 7 once", got.Load(), calls.Load())
	}
	p.stop(t)

	checkRefusedWithoutHandler(t, "OnSynced", func(s *Sender) { s.Synced(1) })
}
