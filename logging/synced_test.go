package logging

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// A Synced reaches a backup that reads it, with its epoch, once; a backup that
// does not read them refuses it as a protocol violation.
func TestSynced(t *testing.T) {
	link := NewMemLink()
	snd := NewSender(link.A(), NewMemLog(4096), SenderConfig{StartOffset: 4096, Logger: testLogger(t)})
	var got, calls atomic.Uint64
	rcv := NewReceiver(link.B(), NewMemLog(4096), ReceiverConfig{StartOffset: 4096, Logger: testLogger(t),
		OnSynced: func(e uint64) { got.Store(e); calls.Add(1) }})
	ctx, cancel := context.WithCancel(context.Background())
	sdone := runAsync(func() error { return snd.Run(ctx) })
	rdone := runAsync(func() error { return rcv.Run(ctx) })
	snd.Synced(7)
	waitFor(t, 5*time.Second, "synced", func() bool { return calls.Load() == 1 })
	time.Sleep(100 * time.Millisecond) // heartbeats go on; no second Synced
	if got.Load() != 7 || calls.Load() != 1 {
		t.Fatalf("synced epoch %d in %d calls, want 7 once", got.Load(), calls.Load())
	}
	cancel()
	waitErr(t, sdone, 5*time.Second, "sender")
	waitErr(t, rdone, 5*time.Second, "receiver")

	link = NewMemLink()
	snd = NewSender(link.A(), NewMemLog(12), SenderConfig{StartOffset: 12, Logger: testLogger(t)})
	rcv = NewReceiver(link.B(), NewMemLog(12), ReceiverConfig{StartOffset: 12, Logger: testLogger(t)})
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	sdone = runAsync(func() error { return snd.Run(ctx) })
	rdone = runAsync(func() error { return rcv.Run(ctx) })
	snd.Synced(1)
	if err := waitErr(t, rdone, 5*time.Second, "receiver"); !errors.Is(err, ErrProtocol) {
		t.Fatalf("receiver without OnSynced: %v, want %v", err, ErrProtocol)
	}
	waitErr(t, sdone, 5*time.Second, "sender")
}
