package replay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// HeaderSize is the length of the file header; the first event starts here.
const HeaderSize = 12

// Version is REPLAY_VERSION as QEMU 7.2 writes it at offset 0, big-endian.
const Version uint32 = 0x00e0200c

// MaxArray is the largest array payload (CHAR_READ, NET, CHAR_READ_ALL,
// RANDOM) accepted. QEMU's arrays are network frames, chardev reads and
// random seeds; anything near this size means the stream is out of step.
const MaxArray = 16 << 20

// maxHeader is the longest fixed part of any event: an ASYNC_INPUT key
// event by number is code + u32 kind + u32 key kind + i64 + u8 = 18.
const maxHeader = 18

// MaxEventSize bounds one event: the fixed part of a NET event (the
// longest fixed part in front of an array) plus the largest array.
const MaxEventSize = 10 + MaxArray

// ErrRecording is returned by CheckHeader for an all-zero version: QEMU
// writes the version only at exit, so this is a log still being recorded
// (or one whose recorder was killed).
var ErrRecording = errors.New("replay: log header has no version yet (still recording or recorder killed)")

// ErrTruncated means the input ended inside an event. It wraps
// io.ErrUnexpectedEOF so callers may test for either.
var ErrTruncated = fmt.Errorf("replay: log truncated inside an event: %w", io.ErrUnexpectedEOF)

// CorruptError reports bytes that QEMU 7.2 cannot have written.
type CorruptError struct {
	Offset int64 // absolute offset of the offending event's code byte
	Reason string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("replay: corrupt log at offset %d: %s", e.Offset, e.Reason)
}

func corrupt(off int64, format string, args ...any) *CorruptError {
	return &CorruptError{Offset: off, Reason: fmt.Sprintf(format, args...)}
}

// CheckHeader validates the 12-byte file header. It returns nil for a
// finished log, ErrRecording for a log whose version is still zero, and a
// descriptive error otherwise. Like QEMU it looks only at the version
// dword; the 8 reserved bytes are never written.
func CheckHeader(b []byte) error {
	if len(b) < HeaderSize {
		return fmt.Errorf("replay: header is %d bytes, need %d", len(b), HeaderSize)
	}
	switch v := binary.BigEndian.Uint32(b); v {
	case Version:
		return nil
	case 0:
		return ErrRecording
	default:
		return fmt.Errorf("replay: log version %#08x, want %#08x (QEMU 7.2)", v, Version)
	}
}

// Event is one decoded log event. Fields that do not apply to Kind are zero.
type Event struct {
	Kind   Kind
	Offset int64 // absolute offset of the code byte
	Size   int   // bytes including the code byte

	// Instructions is the icount delta of a KindInstruction event.
	Instructions uint32
	// Clock is the nanosecond value of KindClockHost/KindClockVirtualRT.
	Clock int64
	// ID is the u64 of ASYNC_BH/BH_ONESHOT (icount when queued),
	// ASYNC_BLOCK (blkreplay request id) and AUDIO_OUT (samples played).
	ID uint64
	// Index is the chardev index of ASYNC_CHAR_READ or the filter index
	// of ASYNC_NET.
	Index uint8
	// Flags is the packet flags word of ASYNC_NET.
	Flags uint32
	// Result is the signed u32 of CHAR_WRITE (backend result),
	// CHAR_READ_ALL_ERROR (negative errno) and RANDOM (return value).
	Result int32
	// Written is the second u32 of CHAR_WRITE (bytes accepted).
	Written uint32
	// InputKind is the InputEventKind of ASYNC_INPUT (0 key, 1 btn, 2 rel, 3 abs).
	InputKind uint32
	// DataLen is the array length of CHAR_READ, NET, CHAR_READ_ALL, RANDOM.
	DataLen int
}

// End is the absolute offset just past the event.
func (e Event) End() int64 { return e.Offset + int64(e.Size) }

// fixedSize gives the payload size of kinds whose size is known from the
// code alone; -1 marks kinds that need more bytes to tell.
func fixedSize(k Kind) int {
	switch {
	case k == KindInstruction, k == KindCharReadAllError:
		return 4
	case k == KindAsyncBH, k == KindAsyncBHOneshot, k == KindAsyncBlock,
		k == KindCharWrite, k == KindAudioOut, k.IsClock():
		return 8
	case k == KindInterrupt, k == KindException, k == KindAsyncInputSync,
		k.IsShutdown(), k.IsCheckpoint(), k == KindEnd:
		return 0
	}
	return -1
}

// layout looks at the start of an event in b (off is its absolute offset)
// and tells how it is framed. If b is too short to know the event's size,
// total is 0 and hdr is the length b must reach before asking again.
// Otherwise len(b) >= hdr, hdr is the length of the fixed part (everything
// up to any array bytes) and total is the full event size. It never reads
// past hdr, so callers need not buffer array bytes.
func layout(b []byte, off int64) (hdr, total int, err error) {
	if len(b) == 0 {
		return 1, 0, nil
	}
	k := Kind(b[0])
	if !k.Valid() {
		return 0, 0, corrupt(off, "unknown event kind %d", b[0])
	}
	if n := fixedSize(k); n >= 0 {
		return known(b, 1+n, 1+n)
	}
	switch k {
	case KindAsyncCharRead: // u8 index, array
		return array(b, off, 2)
	case KindAsyncNet: // u8 index, u32 flags, array
		return array(b, off, 6)
	case KindCharReadAll: // array
		return array(b, off, 1)
	case KindRandom: // u32 ret, array
		return array(b, off, 5)
	case KindAsyncInput:
		return inputLayout(b, off)
	case KindAudioIn:
		// The sample count depends on the audio buffer size, which is
		// not in the log; ftvmd never configures audio.
		return 0, 0, corrupt(off, "AUDIO_IN events are unsupported (payload size depends on the audio buffer size, which the log does not hold)")
	}
	return 0, 0, corrupt(off, "no layout for event kind %d", b[0])
}

func known(b []byte, hdr, total int) (int, int, error) {
	if len(b) < hdr {
		return hdr, 0, nil
	}
	return hdr, total, nil
}

// array frames an event whose fixed part is lenAt bytes followed by a
// big-endian u32 length and that many bytes.
func array(b []byte, off int64, lenAt int) (int, int, error) {
	hdr := lenAt + 4
	if len(b) < hdr {
		return hdr, 0, nil
	}
	n := binary.BigEndian.Uint32(b[lenAt:])
	if n > MaxArray {
		return 0, 0, corrupt(off, "%s array length %d exceeds %d", Kind(b[0]), n, MaxArray)
	}
	return hdr, hdr + int(n), nil
}

// inputLayout follows replay/replay-input.c:replay_save_input_event.
func inputLayout(b []byte, off int64) (int, int, error) {
	if len(b) < 5 {
		return 5, 0, nil
	}
	switch ik := binary.BigEndian.Uint32(b[1:]); ik {
	case 0: // key: u32 KeyValueKind, then number (i64) or qcode (u32), u8 down
		if len(b) < 9 {
			return 9, 0, nil
		}
		switch kk := binary.BigEndian.Uint32(b[5:]); kk {
		case 0:
			return known(b, 18, 18)
		case 1:
			return known(b, 14, 14)
		default:
			return 0, 0, corrupt(off, "ASYNC_INPUT key value kind %d unknown", kk)
		}
	case 1: // btn: u32 button, u8 down
		return known(b, 10, 10)
	case 2, 3: // rel/abs: u32 axis, i64 value
		return known(b, 17, 17)
	default:
		return 0, 0, corrupt(off, "ASYNC_INPUT event kind %d unknown", ik)
	}
}

// decode fills an Event from its fixed part (as framed by layout) and
// checks values that QEMU cannot have written.
func decode(h []byte, off int64, total int) (Event, error) {
	be := binary.BigEndian
	ev := Event{Kind: Kind(h[0]), Offset: off, Size: total}
	switch k := ev.Kind; {
	case k == KindInstruction:
		ev.Instructions = be.Uint32(h[1:])
		// replay_advance_current_icount computes the delta as an int and
		// asserts it is >= 0, so the top bit is never set.
		if ev.Instructions > 1<<31-1 {
			return ev, corrupt(off, "INSTRUCTION count %d is negative as QEMU's int", ev.Instructions)
		}
	case k.IsClock():
		ev.Clock = int64(be.Uint64(h[1:]))
	case k == KindAsyncBH, k == KindAsyncBHOneshot, k == KindAsyncBlock, k == KindAudioOut:
		ev.ID = be.Uint64(h[1:])
	case k == KindCharWrite:
		ev.Result = int32(be.Uint32(h[1:]))
		ev.Written = be.Uint32(h[5:])
	case k == KindCharReadAllError:
		ev.Result = int32(be.Uint32(h[1:]))
	case k == KindAsyncCharRead:
		ev.Index = h[1]
		ev.DataLen = total - 6
	case k == KindAsyncNet:
		ev.Index = h[1]
		ev.Flags = be.Uint32(h[2:])
		ev.DataLen = total - 10
	case k == KindCharReadAll:
		ev.DataLen = total - 5
	case k == KindRandom:
		ev.Result = int32(be.Uint32(h[1:]))
		ev.DataLen = total - 9
	case k == KindAsyncInput:
		ev.InputKind = be.Uint32(h[1:])
	}
	return ev, nil
}
