package logging

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestReplayedReportedAtOnce: a change of the replayed icount goes out in an ack of
// its own, without waiting for new frames or the heartbeat (an hour here, so only
// the prompt report can deliver it). The primary's lag and throttle depend on it.
func TestReplayedReportedAtOnce(t *testing.T) {
	const start = 12
	path := filepath.Join(t.TempDir(), "rr.log")
	if err := os.WriteFile(path, make([]byte, start+100), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	p := runMemPair(t, f, SenderConfig{StartOffset: start, HeartbeatInterval: time.Hour,
		PeerTimeout: 4 * time.Hour, Logger: testLogger(t).With("side", "primary")},
		NewMemLog(start), ReceiverConfig{StartOffset: start,
			HeartbeatInterval: time.Hour, PeerTimeout: 4 * time.Hour, Logger: testLogger(t).With("side", "backup")})
	snd, rcv, sdone, rdone := p.snd, p.rcv, p.sdone, p.rdone
	snd.Publish(start+100, 300)

	timeout := time.After(20 * time.Second)
	want := []uint64{0, 150, 300}
	for _, w := range want[1:] {
		rcv.SetReplayed(w)
		for {
			var a Ack
			select {
			case a = <-snd.Acks():
			case err := <-sdone:
				t.Fatalf("sender stopped: %v", err)
			case err := <-rdone:
				t.Fatalf("receiver stopped: %v", err)
			case <-timeout:
				t.Fatalf("replayed icount %d never reported", w)
			}
			if a.ReplayedIcount == w {
				break
			}
		}
	}
	p.stop(t)
}
