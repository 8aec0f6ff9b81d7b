package logging

import (
	"encoding/binary"
	"fmt"
	"math"
)

// Wire sizes of a NIC message (MsgNIC).
const (
	NICHeaderSize = 16 // first frame number u64, primary log size u64
	NICEntrySize  = 12 // frame length u32, checksum u64
	// MaxNICFrames is the most frames one NIC message describes.
	MaxNICFrames = 512
)

// NICFrame is one frame the primary's guest transmitted: its length and checksum
// (sentinel.HashFunc: the one the agents' hello agreed on, CRC-64 by default).
type NICFrame struct {
	Len  uint32
	Hash uint64
}

// NICDigests describe consecutive frames the primary's guest transmitted, numbered
// from First (0: the first frame since its QEMU started): the other half of the
// divergence sentinel, which the backup compares with the frames its replay's guest
// transmits. At is the primary's rr log size when it captured the last of them. A
// primary sends them only to a backup that said it reads them (an older one refuses
// an unknown message type).
type NICDigests struct {
	First  uint64
	At     int64
	Frames []NICFrame
}

func appendNIC(b []byte, d NICDigests) []byte {
	b = appendHeader(b, MsgNIC, NICHeaderSize+NICEntrySize*len(d.Frames))
	b = binary.BigEndian.AppendUint64(b, d.First)
	b = binary.BigEndian.AppendUint64(b, uint64(max(d.At, 0)))
	for _, f := range d.Frames {
		b = binary.BigEndian.AppendUint32(b, f.Len)
		b = binary.BigEndian.AppendUint64(b, f.Hash)
	}
	return b
}

// DecodeNIC decodes a NIC payload. A lying peer gets ErrProtocol: no frames, more
// than MaxNICFrames, a length that is not a whole number of entries, or frame
// numbers that would overflow.
func DecodeNIC(p []byte) (NICDigests, error) {
	if len(p) < NICHeaderSize+NICEntrySize || (len(p)-NICHeaderSize)%NICEntrySize != 0 {
		return NICDigests{}, fmt.Errorf("%w: NIC payload of %d bytes: want %d plus a positive multiple of %d", ErrProtocol, len(p), NICHeaderSize, NICEntrySize)
	}
	n := (len(p) - NICHeaderSize) / NICEntrySize
	if n > MaxNICFrames {
		return NICDigests{}, fmt.Errorf("%w: NIC message of %d frames, limit %d", ErrProtocol, n, MaxNICFrames)
	}
	d := NICDigests{First: binary.BigEndian.Uint64(p), At: clampInt64(binary.BigEndian.Uint64(p[8:]))}
	if d.First > math.MaxInt64-uint64(n) {
		return NICDigests{}, fmt.Errorf("%w: NIC frame numbers from %d overflow", ErrProtocol, d.First)
	}
	d.Frames = make([]NICFrame, n)
	for i := range d.Frames {
		e := p[NICHeaderSize+i*NICEntrySize:]
		d.Frames[i] = NICFrame{Len: binary.BigEndian.Uint32(e), Hash: binary.BigEndian.Uint64(e[4:])}
	}
	return d, nil
}
