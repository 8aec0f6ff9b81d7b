package logging

import (
	"bytes"
	"errors"
	"sync"
	"testing"
	"time"
)

// NIC digests reach a backup that reads them in order, numbered on from each
// message's First (long batches split at MaxNICFrames); one that does not read them
// refuses them as a protocol violation.
func TestNICDigests(t *testing.T) {
	var mu sync.Mutex
	var got []NICDigests
	p := runEmptyPair(t, 12, ReceiverConfig{OnNIC: func(d NICDigests) { mu.Lock(); got = append(got, d); mu.Unlock() }})
	snd := p.snd
	want := make([]NICFrame, MaxNICFrames+10)
	for i := range want {
		want[i] = NICFrame{Len: uint32(60 + i), Hash: uint64(i) * 0x9e3779b97f4a7c15}
	}
	if !snd.NIC(NICDigests{First: 7, At: 4096, Frames: want[:3]}) || !snd.NIC(NICDigests{First: 10, At: 8192, Frames: want[3:]}) {
		t.Fatal("NIC refused digests on an empty queue")
	}
	waitFor(t, 5*time.Second, "digests", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 3 })
	mu.Lock()
	var frames []NICFrame
	next := uint64(7)
	for _, d := range got {
		if d.First != next {
			t.Fatalf("message numbered from %d, want %d: %+v", d.First, next, got)
		}
		next += uint64(len(d.Frames))
		frames = append(frames, d.Frames...)
	}
	if got[0].At != 4096 || got[1].At != 8192 || len(got[1].Frames) != MaxNICFrames {
		t.Fatalf("messages %d/%d frames at %d/%d", len(got[0].Frames), len(got[1].Frames), got[0].At, got[1].At)
	}
	mu.Unlock()
	for i := range want {
		if frames[i] != want[i] {
			t.Fatalf("frame %d: %+v, want %+v", i, frames[i], want[i])
		}
	}
	if st := snd.Stats(); st.NICFrames != uint64(len(want)) || st.NICDropped != 0 {
		t.Fatalf("sender stats %+v", st)
	}
	p.stop(t)

	checkRefusedWithoutHandler(t, "OnNIC", func(s *Sender) { s.NIC(NICDigests{First: 0, Frames: want[:1]}) })
}

// A full queue drops new digests, counts them and never blocks.
func TestNICQueueBound(t *testing.T) {
	snd := NewSender(NewMemLink().A(), NewMemLog(12), SenderConfig{StartOffset: 12, Logger: testLogger(t)})
	fs := make([]NICFrame, MaxNICFrames)
	var first uint64
	for first+MaxNICFrames <= MaxNICQueued {
		if !snd.NIC(NICDigests{First: first, Frames: fs}) {
			t.Fatalf("refused at %d frames queued", first)
		}
		first += MaxNICFrames
	}
	if snd.NIC(NICDigests{First: first, Frames: fs[:5]}) {
		t.Fatal("a full queue took more")
	}
	if st := snd.Stats(); st.NICDropped != 5 {
		t.Fatalf("dropped %d, want 5", st.NICDropped)
	}
}

// What a lying primary can put in a NIC payload gets ErrProtocol, never a panic.
func TestDecodeNICRefuses(t *testing.T) {
	ok := appendNIC(nil, NICDigests{First: 1, At: 2, Frames: []NICFrame{{60, 1}, {61, 2}}})[HeaderSize:]
	if d, err := DecodeNIC(ok); err != nil || d.First != 1 || d.At != 2 || len(d.Frames) != 2 || d.Frames[1] != (NICFrame{61, 2}) {
		t.Fatalf("valid payload: %+v %v", d, err)
	}
	overflow := appendNIC(nil, NICDigests{First: 1<<63 - 1, Frames: []NICFrame{{60, 1}}})[HeaderSize:]
	tooMany := appendNIC(nil, NICDigests{Frames: make([]NICFrame, MaxNICFrames+1)})[HeaderSize:]
	for name, p := range map[string][]byte{
		"empty": nil, "header only": ok[:NICHeaderSize], "partial entry": ok[:len(ok)-1],
		"numbers overflow": overflow, "too many frames": tooMany,
	} {
		if _, err := DecodeNIC(p); !errors.Is(err, ErrProtocol) {
			t.Errorf("%s: %v, want %v", name, err, ErrProtocol)
		}
	}
	// ReadMessage refuses an oversized NIC message before reading its payload.
	big := appendHeader(nil, MsgNIC, NICHeaderSize+NICEntrySize*(MaxNICFrames+1))
	if _, err := ReadMessage(bytes.NewReader(big)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized NIC message: %v", err)
	}
}

func FuzzDecodeNIC(f *testing.F) {
	f.Add(appendNIC(nil, NICDigests{First: 1, At: 4096, Frames: []NICFrame{{60, 1}, {1514, 1 << 63}}})[HeaderSize:])
	f.Add(make([]byte, NICHeaderSize+NICEntrySize))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
	f.Fuzz(func(t *testing.T, p []byte) {
		d, err := DecodeNIC(p)
		if err != nil {
			if !errors.Is(err, ErrProtocol) {
				t.Fatalf("error %v is not ErrProtocol", err)
			}
			return
		}
		if len(d.Frames) == 0 || len(d.Frames) > MaxNICFrames || d.At < 0 || d.First+uint64(len(d.Frames)) < d.First {
			t.Fatalf("decoded impossible digests %+v", d)
		}
		if d.At < 1<<63-1 && !bytes.Equal(appendNIC(nil, d)[HeaderSize:], p) {
			t.Fatal("round trip differs")
		}
	})
}
