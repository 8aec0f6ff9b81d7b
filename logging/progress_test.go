package logging

import (
	"os"
	"path/filepath"
	"sync/atomic"
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

// noteSink is a Sink that, like the backup's, learns the replay's progress while it
// appends and records it with NoteReplayed.
type noteSink struct {
	*MemLog
	rcv  atomic.Pointer[Receiver]
	note uint64
}

func (s *noteSink) Append(off int64, p []byte) error {
	if r := s.rcv.Load(); r != nil {
		r.NoteReplayed(s.note)
	}
	return s.MemLog.Append(off, p)
}

// TestNoteReplayedRidesTheFrameAck: a count recorded with NoteReplayed during
// Append goes out in that frame's ack (the heartbeat is an hour here, and
// NoteReplayed sends nothing of its own).
func TestNoteReplayedRidesTheFrameAck(t *testing.T) {
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
	sink := &noteSink{MemLog: NewMemLog(start), note: 4242}
	p := runMemPair(t, f, SenderConfig{StartOffset: start, HeartbeatInterval: time.Hour,
		PeerTimeout: 4 * time.Hour, Logger: testLogger(t).With("side", "primary")},
		sink, ReceiverConfig{StartOffset: start,
			HeartbeatInterval: time.Hour, PeerTimeout: 4 * time.Hour, Logger: testLogger(t).With("side", "backup")})
	sink.rcv.Store(p.rcv)
	p.snd.Publish(start+100, 300)
	timeout := time.After(20 * time.Second)
	for {
		var a Ack
		select {
		case a = <-p.snd.Acks():
		case err := <-p.sdone:
			t.Fatalf("sender stopped: %v", err)
		case err := <-p.rdone:
			t.Fatalf("receiver stopped: %v", err)
		case <-timeout:
			t.Fatal("the frame's ack never came")
		}
		if a.Offset == start+100 {
			if a.ReplayedIcount != sink.note {
				t.Fatalf("the frame's ack carries replayed %d, want %d", a.ReplayedIcount, sink.note)
			}
			break
		}
	}
	p.stop(t)
}
