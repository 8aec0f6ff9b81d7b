package logging

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math"
	"strings"
	"time"
	"unicode/utf8"
)

// MsgType is the first byte of every message.
type MsgType uint8

// Message types. The numbers are part of the wire format.
const (
	MsgHello      MsgType = 1  // JSON, opaque to this package
	MsgHelloReply MsgType = 2  // JSON, opaque to this package
	MsgFrame      MsgType = 3  // primary -> backup: a piece of the rr log
	MsgAck        MsgType = 4  // backup -> primary: held offset, replayed icount
	MsgHeartbeat  MsgType = 5  // primary -> backup when idle
	MsgBye        MsgType = 6  // orderly shutdown, UTF-8 reason
	MsgError      MsgType = 7  // refusal or failure, UTF-8 reason
	MsgConsole    MsgType = 8  // primary -> backup: console mark (see ConsoleMark)
	MsgSynced     MsgType = 9  // primary -> backup: the backup of a running VM protects it now, under an epoch (u64)
	MsgNIC        MsgType = 10 // primary -> backup: transmitted frames' digests (see NICDigests)
)

func (t MsgType) String() string {
	switch t {
	case MsgHello:
		return "Hello"
	case MsgHelloReply:
		return "HelloReply"
	case MsgFrame:
		return "Frame"
	case MsgAck:
		return "Ack"
	case MsgHeartbeat:
		return "Heartbeat"
	case MsgBye:
		return "Bye"
	case MsgError:
		return "Error"
	case MsgConsole:
		return "Console"
	case MsgSynced:
		return "Synced"
	case MsgNIC:
		return "NIC"
	}
	return fmt.Sprintf("MsgType(%d)", uint8(t))
}

// Wire sizes and limits.
const (
	HeaderSize      = 5       // type (1) + payload length (4, big endian)
	FrameHeaderSize = 24      // offset u64, length u32, crc32c u32, icount u64
	AckSize         = 24      // held offset u64, replayed icount u64, sent unix-nano u64
	AckStallSize    = 56      // AckSize + ReplayStall: for ns, at icount, beyond, episodes (u64 each)
	HeartbeatSize   = 8       // sent unix-nano u64
	ConsoleSize     = 12      // console bytes u64, crc32c u32
	SyncedSize      = 8       // epoch u64
	MaxFrameData    = 1 << 20 // largest data section of one Frame
	MaxHelloSize    = 64 << 10
	MaxReasonSize   = 4 << 10
)

// A backup sends AckStallSize acks only when told that the primary reads them
// (ReceiverConfig.StallReports): an older primary refuses any Ack but AckSize.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Checksum is the CRC-32C (Castagnoli) carried in frames.
func Checksum(data []byte) uint32 { return crc32.Checksum(data, castagnoli) }

// maxPayload returns the payload limits for t; ok is false for unknown types.
func maxPayload(t MsgType) (min, max int, ok bool) {
	switch t {
	case MsgHello, MsgHelloReply:
		return 0, MaxHelloSize, true
	case MsgFrame:
		return FrameHeaderSize + 1, FrameHeaderSize + MaxFrameData, true
	case MsgAck:
		return AckSize, AckStallSize, true
	case MsgHeartbeat:
		return HeartbeatSize, HeartbeatSize, true
	case MsgBye, MsgError:
		return 0, MaxReasonSize, true
	case MsgConsole:
		return ConsoleSize, ConsoleSize, true
	case MsgSynced:
		return SyncedSize, SyncedSize, true
	case MsgNIC:
		return NICHeaderSize + NICEntrySize, NICHeaderSize + NICEntrySize*MaxNICFrames, true
	}
	return 0, 0, false
}

// Message is one undecoded message.
type Message struct {
	Type    MsgType
	Payload []byte
}

// ReadMessage reads exactly one message from r (it never reads past it). It
// checks the type and the length against the type's limits before
// allocating, so a hostile length costs nothing. Errors: ErrProtocol (unknown
// type, bad length), ErrTooLarge, or the reader's error (io.EOF only when r
// ends cleanly before the first header byte).
func ReadMessage(r io.Reader) (Message, error) {
	m, _, err := readMessageInto(r, nil)
	return m, err
}

// readMessageInto is ReadMessage reading the payload into buf, grown as needed,
// rather than into a new slice; it returns the buffer to pass next time. The
// payload is valid until then. The log channel's reader hands one message at a time
// to handlers that keep nothing of it past the call (a frame's data is written to
// the Sink, which copies it), so a frame no longer costs a fresh 64 KiB to zero and
// collect: at 1 Gbit/s of log that was a GB a second of garbage in the backup.
func readMessageInto(r io.Reader, buf []byte) (Message, []byte, error) {
	var hdr [HeaderSize]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return Message{}, buf, err
	}
	t := MsgType(hdr[0])
	n := binary.BigEndian.Uint32(hdr[1:])
	lo, hi, ok := maxPayload(t)
	if !ok {
		return Message{}, buf, fmt.Errorf("%w: unknown message type %d", ErrProtocol, hdr[0])
	}
	if uint64(n) > uint64(hi) {
		return Message{}, buf, fmt.Errorf("%w: %s payload of %d bytes, limit %d", ErrTooLarge, t, n, hi)
	}
	if int(n) < lo {
		return Message{}, buf, fmt.Errorf("%w: %s payload of %d bytes, need at least %d", ErrProtocol, t, n, lo)
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	p := buf[:n]
	if _, err := io.ReadFull(r, p); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Message{}, buf, fmt.Errorf("reading %s payload (%d bytes): %w", t, n, err)
	}
	return Message{Type: t, Payload: p}, buf, nil
}

// appendHeader appends a message header.
func appendHeader(b []byte, t MsgType, n int) []byte {
	b = append(b, byte(t))
	return binary.BigEndian.AppendUint32(b, uint32(n))
}

// AppendMessage appends the encoding of a message with an arbitrary payload.
func AppendMessage(b []byte, t MsgType, payload []byte) []byte {
	b = appendHeader(b, t, len(payload))
	return append(b, payload...)
}

// Frame is a decoded Frame message. Icount is the guest instruction count at
// Offset+len(Data) when that is a published event boundary, and 0 when the
// frame ends inside an event.
type Frame struct {
	Offset int64
	CRC    uint32
	Icount uint64
	Data   []byte
}

// End is the offset just past the frame.
func (f Frame) End() int64 { return f.Offset + int64(len(f.Data)) }

// AppendFrame appends a complete Frame message (header included); the CRC is
// computed from data.
func AppendFrame(b []byte, off int64, icount uint64, data []byte) []byte {
	b = appendHeader(b, MsgFrame, FrameHeaderSize+len(data))
	b = binary.BigEndian.AppendUint64(b, uint64(off))
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	b = binary.BigEndian.AppendUint32(b, Checksum(data))
	b = binary.BigEndian.AppendUint64(b, icount)
	return append(b, data...)
}

// DecodeFrame decodes a Frame payload. It checks the structure (ErrProtocol)
// but not the checksum: see Frame.Verify.
func DecodeFrame(p []byte) (Frame, error) {
	if len(p) < FrameHeaderSize {
		return Frame{}, fmt.Errorf("%w: frame payload %d bytes, shorter than its header", ErrProtocol, len(p))
	}
	off := binary.BigEndian.Uint64(p[0:])
	n := binary.BigEndian.Uint32(p[8:])
	f := Frame{
		CRC:    binary.BigEndian.Uint32(p[12:]),
		Icount: binary.BigEndian.Uint64(p[16:]),
		Data:   p[FrameHeaderSize:],
	}
	if int64(n) != int64(len(f.Data)) {
		return Frame{}, fmt.Errorf("%w: frame length field %d, but %d data bytes", ErrProtocol, n, len(f.Data))
	}
	if n == 0 {
		return Frame{}, fmt.Errorf("%w: empty frame", ErrProtocol)
	}
	if off > math.MaxInt64-uint64(n) {
		return Frame{}, fmt.Errorf("%w: frame offset %d overflows", ErrProtocol, off)
	}
	f.Offset = int64(off)
	return f, nil
}

// Verify checks the frame's CRC-32C.
func (f Frame) Verify() error {
	if got := Checksum(f.Data); got != f.CRC {
		return fmt.Errorf("%w: frame at %d (%d bytes): crc32c %08x, header says %08x",
			ErrChecksum, f.Offset, len(f.Data), got, f.CRC)
	}
	return nil
}

// ReplayStall is the backup's report on its replay: stalled means its instruction
// count has not moved for a while although the backup holds log beyond it (the
// agent's stall detector decides). It rides on acks (see AckStallSize).
type ReplayStall struct {
	For      time.Duration // how long the current stall has lasted; 0: not stalled
	AtIcount uint64        // the replayed instruction count it stopped at (while stalled)
	Beyond   int64         // log bytes the backup holds beyond the replay's position (while stalled)
	Episodes uint64        // stalls since the backup began replaying, the current one included
}

// Stalled reports whether the replay is stalled now.
func (s ReplayStall) Stalled() bool { return s.For > 0 }

// wireAck is the Ack payload. HasStall: the ack carries Stall (AckStallSize).
type wireAck struct {
	Offset   uint64
	Replayed uint64
	SentNano uint64
	HasStall bool
	Stall    ReplayStall
}

func appendAck(b []byte, a wireAck) []byte {
	n := AckSize
	if a.HasStall {
		n = AckStallSize
	}
	b = appendHeader(b, MsgAck, n)
	b = binary.BigEndian.AppendUint64(b, a.Offset)
	b = binary.BigEndian.AppendUint64(b, a.Replayed)
	b = binary.BigEndian.AppendUint64(b, a.SentNano)
	if !a.HasStall {
		return b
	}
	b = binary.BigEndian.AppendUint64(b, uint64(max(a.Stall.For, 0)))
	b = binary.BigEndian.AppendUint64(b, a.Stall.AtIcount)
	b = binary.BigEndian.AppendUint64(b, uint64(max(a.Stall.Beyond, 0)))
	return binary.BigEndian.AppendUint64(b, a.Stall.Episodes)
}

func decodeAck(p []byte) (wireAck, error) {
	if len(p) != AckSize && len(p) != AckStallSize {
		return wireAck{}, fmt.Errorf("%w: ack payload %d bytes, want %d or %d", ErrProtocol, len(p), AckSize, AckStallSize)
	}
	a := wireAck{
		Offset:   binary.BigEndian.Uint64(p[0:]),
		Replayed: binary.BigEndian.Uint64(p[8:]),
		SentNano: binary.BigEndian.Uint64(p[16:]),
	}
	if len(p) == AckStallSize {
		a.HasStall = true
		a.Stall = ReplayStall{
			For:      time.Duration(clampInt64(binary.BigEndian.Uint64(p[24:]))),
			AtIcount: binary.BigEndian.Uint64(p[32:]),
			Beyond:   clampInt64(binary.BigEndian.Uint64(p[40:])),
			Episodes: binary.BigEndian.Uint64(p[48:]),
		}
	}
	return a, nil
}

// clampInt64 reads a u64 that should fit an int64; a peer's nonsense saturates.
func clampInt64(v uint64) int64 {
	if v > math.MaxInt64 {
		return math.MaxInt64
	}
	return int64(v)
}

// ConsoleMark is the primary's console output at one moment: the CRC-32C of its
// first Bytes bytes (sentinel.Mark). The backup compares it with its replay's console
// at the same length; a primary sends marks only to a backup that said it reads them
// (an older one refuses an unknown message type).
type ConsoleMark struct {
	Bytes int64
	CRC   uint32
}

func appendConsole(b []byte, m ConsoleMark) []byte {
	b = appendHeader(b, MsgConsole, ConsoleSize)
	b = binary.BigEndian.AppendUint64(b, uint64(max(m.Bytes, 0)))
	return binary.BigEndian.AppendUint32(b, m.CRC)
}

func decodeConsole(p []byte) (ConsoleMark, error) {
	if len(p) != ConsoleSize {
		return ConsoleMark{}, fmt.Errorf("%w: console mark payload %d bytes, want %d", ErrProtocol, len(p), ConsoleSize)
	}
	return ConsoleMark{Bytes: clampInt64(binary.BigEndian.Uint64(p)), CRC: binary.BigEndian.Uint32(p[8:])}, nil
}

func appendSynced(b []byte, epoch uint64) []byte {
	b = appendHeader(b, MsgSynced, SyncedSize)
	return binary.BigEndian.AppendUint64(b, epoch)
}

func decodeSynced(p []byte) (uint64, error) {
	if len(p) != SyncedSize {
		return 0, fmt.Errorf("%w: synced payload %d bytes, want %d", ErrProtocol, len(p), SyncedSize)
	}
	return binary.BigEndian.Uint64(p), nil
}

func appendHeartbeat(b []byte, now time.Time) []byte {
	b = appendHeader(b, MsgHeartbeat, HeartbeatSize)
	return binary.BigEndian.AppendUint64(b, uint64(now.UnixNano()))
}

func decodeHeartbeat(p []byte) (time.Time, error) {
	if len(p) != HeartbeatSize {
		return time.Time{}, fmt.Errorf("%w: heartbeat payload %d bytes, want %d", ErrProtocol, len(p), HeartbeatSize)
	}
	return unixNano(binary.BigEndian.Uint64(p)), nil
}

func unixNano(v uint64) time.Time {
	if v > math.MaxInt64 {
		return time.Time{}
	}
	return time.Unix(0, int64(v))
}

// appendReason appends a Bye or Error message; the reason is made valid
// UTF-8 and truncated to MaxReasonSize.
func appendReason(b []byte, t MsgType, reason string) []byte {
	reason = strings.ToValidUTF8(reason, "\uFFFD")
	if len(reason) > MaxReasonSize {
		reason = reason[:MaxReasonSize]
		for !utf8.ValidString(reason) {
			reason = reason[:len(reason)-1]
		}
	}
	b = appendHeader(b, t, len(reason))
	return append(b, reason...)
}

// decodeReason returns a printable reason from a Bye or Error payload.
func decodeReason(p []byte) string {
	return strings.ToValidUTF8(string(p), "\uFFFD")
}
