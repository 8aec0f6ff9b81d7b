package logging

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// Console marks reach a backup that reads them, latest first; one that does not
// refuses them as a protocol violation (a primary sends them only to a backup that
// said it reads them).
func TestConsoleMarks(t *testing.T) {
	link := NewMemLink()
	snd := NewSender(link.A(), NewMemLog(12), SenderConfig{StartOffset: 12, Logger: testLogger(t)})
	var mu sync.Mutex
	var got []ConsoleMark
	rcv := NewReceiver(link.B(), NewMemLog(12), ReceiverConfig{StartOffset: 12, Logger: testLogger(t),
		OnConsole: func(m ConsoleMark) { mu.Lock(); got = append(got, m); mu.Unlock() }})
	ctx, cancel := context.WithCancel(context.Background())
	sdone := runAsync(func() error { return snd.Run(ctx) })
	rdone := runAsync(func() error { return rcv.Run(ctx) })
	snd.Console(ConsoleMark{Bytes: 100, CRC: 0xdeadbeef})
	waitFor(t, 5*time.Second, "first mark", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 1 })
	snd.Console(ConsoleMark{Bytes: 50, CRC: 1}) // older: not sent
	snd.Console(ConsoleMark{Bytes: 250, CRC: 0x01020304})
	waitFor(t, 5*time.Second, "second mark", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 2 })
	mu.Lock()
	if got[0] != (ConsoleMark{100, 0xdeadbeef}) || got[1] != (ConsoleMark{250, 0x01020304}) {
		t.Fatalf("marks %+v", got)
	}
	mu.Unlock()
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
	snd.Console(ConsoleMark{Bytes: 10, CRC: 1})
	if err := waitErr(t, rdone, 5*time.Second, "receiver"); !errors.Is(err, ErrProtocol) {
		t.Fatalf("receiver without OnConsole: %v, want %v", err, ErrProtocol)
	}
	waitErr(t, sdone, 5*time.Second, "sender")
}
