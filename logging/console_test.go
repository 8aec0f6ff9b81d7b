package logging

import (
	"sync"
	"testing"
	"time"
)

// Console marks reach a backup that reads them, latest first; one that does not
// refuses them as a protocol violation (a primary sends them only to a backup that
// said it reads them).
func TestConsoleMarks(t *testing.T) {
	var mu sync.Mutex
	var got []ConsoleMark
	p := runEmptyPair(t, 12, ReceiverConfig{OnConsole: func(m ConsoleMark) { mu.Lock(); got = append(got, m); mu.Unlock() }})
	snd := p.snd
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
	p.stop(t)

	checkRefusedWithoutHandler(t, "OnConsole", func(s *Sender) { s.Console(ConsoleMark{Bytes: 10, CRC: 1}) })
}
