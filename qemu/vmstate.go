package qemu

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// SnapshotReplayState is what a snapshot saved while recording holds of the
// record/replay state (replay/replay-snapshot.c, vmstate "replay" version 2):
// where in the log the replay of what follows the snapshot starts, and the
// instruction count there.
type SnapshotReplayState struct {
	// LogOffset is the recording's log position when the snapshot was saved
	// (ftell, saved by replay_pre_save): a replay that loads the snapshot
	// reads its next event there.
	LogOffset int64
	// Icount is the instruction count at the snapshot.
	Icount uint64
	// VMStateBytes is the size of the snapshot's VM state.
	VMStateBytes int64
}

// ErrNoVMState: the image has the snapshot but not its VM state (a disk-only
// snapshot, or the VM state went to another drive).
var ErrNoVMState = errors.New("snapshot holds no VM state")

// ReadSnapshotReplayState reads the replay section of the VM state of
// snapshot tag in the qcow2 image at path. The image may be in use by a QEMU
// that saved the snapshot: a snapshot's tables and clusters are never
// rewritten once saved (the active layer copies what it changes), and the
// drive the VM state goes to (Config.SnapshotDrive) is written only by savevm.
func ReadSnapshotReplayState(path, tag string) (SnapshotReplayState, error) {
	f, err := os.Open(path)
	if err != nil {
		return SnapshotReplayState{}, err
	}
	defer f.Close()
	img, err := openQcow2Snapshot(f, tag)
	if err != nil {
		return SnapshotReplayState{}, fmt.Errorf("%s: %w", path, err)
	}
	st, err := findReplaySection(img.vmstateReader(), img.vmstateSize)
	if err != nil {
		return SnapshotReplayState{}, fmt.Errorf("%s: snapshot %q: %w", path, tag, err)
	}
	st.VMStateBytes = img.vmstateSize
	return st, nil
}

// qcow2Snapshot maps the VM state of one internal snapshot of a qcow2 image
// (QEMU's docs/interop/qcow2.txt).
type qcow2Snapshot struct {
	f           io.ReaderAt
	clusterBits uint
	l2Bits      uint
	l1          []uint64 // the snapshot's L1 table
	vmstateOff  int64    // the VM state's guest offset (qcow2_vm_state_offset)
	vmstateSize int64
}

const (
	qcow2OffsetMask  = 0x00fffffffffffe00
	qcow2Compressed  = 1 << 62
	qcow2ZeroCluster = 1
	// qcow2ExtendedL2 is the incompatible-feature bit of 16-byte L2 entries.
	qcow2ExtendedL2 = 1 << 4
	maxSnapshots    = 65536
)

func openQcow2Snapshot(f io.ReaderAt, tag string) (*qcow2Snapshot, error) {
	hdr := make([]byte, 104)
	n, err := f.ReadAt(hdr, 0)
	if n < 72 {
		return nil, fmt.Errorf("read qcow2 header: %d bytes: %v", n, err)
	}
	be := binary.BigEndian
	if !bytes.Equal(hdr[:4], []byte("QFI\xfb")) {
		return nil, errors.New("not a qcow2 image")
	}
	version := be.Uint32(hdr[4:])
	clusterBits := uint(be.Uint32(hdr[20:]))
	if clusterBits < 9 || clusterBits > 21 {
		return nil, fmt.Errorf("qcow2 cluster bits %d", clusterBits)
	}
	size := be.Uint64(hdr[24:])
	nbSnap := be.Uint32(hdr[60:])
	snapOff := int64(be.Uint64(hdr[64:]))
	l2Bits := clusterBits - 3
	if version >= 3 && n >= 80 && be.Uint64(hdr[72:])&qcow2ExtendedL2 != 0 {
		l2Bits = clusterBits - 4
	}
	if nbSnap > maxSnapshots {
		return nil, fmt.Errorf("qcow2 header says %d snapshots", nbSnap)
	}
	off := snapOff
	for i := uint32(0); i < nbSnap; i++ {
		e := make([]byte, 40)
		if _, err := f.ReadAt(e, off); err != nil {
			return nil, fmt.Errorf("read snapshot %d: %w", i, err)
		}
		l1Off := int64(be.Uint64(e[0:]))
		l1Size := be.Uint32(e[8:])
		idLen, nameLen := int64(be.Uint16(e[12:])), int64(be.Uint16(e[14:]))
		vmSize := int64(be.Uint32(e[32:]))
		extraLen := int64(be.Uint32(e[36:]))
		if extraLen > 1024 {
			return nil, fmt.Errorf("snapshot %d: %d bytes of extra data", i, extraLen)
		}
		rest := make([]byte, extraLen+idLen+nameLen)
		if _, err := f.ReadAt(rest, off+40); err != nil {
			return nil, fmt.Errorf("read snapshot %d: %w", i, err)
		}
		if extraLen >= 8 {
			vmSize = int64(be.Uint64(rest[0:]))
		}
		name := string(rest[extraLen+idLen:])
		off += 40 + extraLen + idLen + nameLen
		off = (off + 7) &^ 7
		if name != tag {
			continue
		}
		if vmSize == 0 {
			return nil, fmt.Errorf("snapshot %q: %w", tag, ErrNoVMState)
		}
		if l1Size > 1<<24 {
			return nil, fmt.Errorf("snapshot %q: L1 table of %d entries", tag, l1Size)
		}
		raw := make([]byte, 8*int64(l1Size))
		if _, err := f.ReadAt(raw, l1Off); err != nil {
			return nil, fmt.Errorf("snapshot %q: read L1 table: %w", tag, err)
		}
		s := &qcow2Snapshot{f: f, clusterBits: clusterBits, l2Bits: l2Bits, vmstateSize: vmSize}
		s.l1 = make([]uint64, l1Size)
		for j := range s.l1 {
			s.l1[j] = be.Uint64(raw[8*j:])
		}
		shift := clusterBits + l2Bits
		s.vmstateOff = int64((size+(1<<shift)-1)>>shift) << shift
		return s, nil
	}
	return nil, fmt.Errorf("no snapshot %q", tag)
}

// readAt reads guest bytes of the snapshot at guest offset off, up to the
// end of the cluster.
func (s *qcow2Snapshot) readAt(p []byte, off int64) (int, error) {
	csize := int64(1) << s.clusterBits
	in := off & (csize - 1)
	p = p[:min(int64(len(p)), csize-in)]
	l1i := off >> (s.clusterBits + s.l2Bits)
	if l1i >= int64(len(s.l1)) || s.l1[l1i]&qcow2OffsetMask == 0 {
		clear(p)
		return len(p), nil
	}
	entrySize := int64(8)
	if s.l2Bits == s.clusterBits-4 {
		entrySize = 16
	}
	l2i := (off >> s.clusterBits) & (1<<s.l2Bits - 1)
	var e [8]byte
	if _, err := s.f.ReadAt(e[:], int64(s.l1[l1i]&qcow2OffsetMask)+l2i*entrySize); err != nil {
		return 0, fmt.Errorf("read L2 entry: %w", err)
	}
	ent := binary.BigEndian.Uint64(e[:])
	if ent&qcow2Compressed != 0 {
		return 0, errors.New("compressed cluster in the VM state")
	}
	if ent&qcow2ZeroCluster != 0 || ent&qcow2OffsetMask == 0 {
		clear(p)
		return len(p), nil
	}
	return s.f.ReadAt(p, int64(ent&qcow2OffsetMask)+in)
}

func (s *qcow2Snapshot) vmstateReader() io.Reader {
	return &snapReader{s: s, end: s.vmstateSize}
}

type snapReader struct {
	s        *qcow2Snapshot
	pos, end int64
}

func (r *snapReader) Read(p []byte) (int, error) {
	if r.pos >= r.end {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.end-r.pos)]
	n, err := r.s.readAt(p, r.s.vmstateOff+r.pos)
	r.pos += int64(n)
	return n, err
}

// The replay section of a VM state stream (migration/savevm.c): section type
// QEMU_VM_SECTION_FULL, a 32-bit section id, the id string "replay" with its
// length byte, instance 0, version 2; then the fields of vmstate_replay:
// cached_clock[REPLAY_CLOCK_COUNT=2] (int64), current_icount (uint64),
// instruction_count (int32), data_kind, has_unread_data (uint32), file_offset,
// block_request_id, read_event_id (uint64); then the footer
// QEMU_VM_SECTION_FOOTER and the section id again. All big-endian.
var replaySectionID = []byte("\x06replay\x00\x00\x00\x00\x00\x00\x00\x02")

const (
	vmSectionFull   = 0x04
	vmSectionFooter = 0x7e
	replayFieldsLen = 2*8 + 8 + 4 + 4 + 4 + 8 + 8 + 8
)

// findReplaySection scans a VM state stream of size bytes for the replay
// section. Exactly one must be found whose section type and footer match.
func findReplaySection(r io.Reader, size int64) (SnapshotReplayState, error) {
	const chunk = 1 << 20
	const keep = 5 + 15 + replayFieldsLen + 5 // a whole section, carried over chunk ends
	var (
		buf    = make([]byte, 0, chunk+keep)
		found  []SnapshotReplayState
		be     = binary.BigEndian
		readN  int64
		tmp    = make([]byte, chunk)
		seenAt = map[int64]bool{}
		base   int64 // stream offset of buf[0]
	)
	for {
		n, err := io.ReadFull(r, tmp)
		buf = append(buf, tmp[:n]...)
		readN += int64(n)
		for i := 0; ; {
			j := bytes.Index(buf[i:], replaySectionID)
			if j < 0 {
				break
			}
			at := i + j
			i = at + 1
			if at < 5 || buf[at-5] != vmSectionFull {
				continue
			}
			end := at + len(replaySectionID) + replayFieldsLen + 5
			if end > len(buf) {
				break // completed by the next chunk
			}
			if seenAt[base+int64(at)] {
				continue
			}
			seenAt[base+int64(at)] = true
			secID := buf[at-4 : at]
			fields := buf[at+len(replaySectionID):]
			foot := fields[replayFieldsLen:]
			if foot[0] != vmSectionFooter || !bytes.Equal(foot[1:5], secID) {
				continue
			}
			found = append(found, SnapshotReplayState{
				Icount:    be.Uint64(fields[16:]),
				LogOffset: int64(be.Uint64(fields[16+8+12:])),
			})
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
				return SnapshotReplayState{}, fmt.Errorf("read VM state: %w", err)
			}
			break
		}
		if len(buf) > keep {
			drop := len(buf) - keep
			base += int64(drop)
			buf = append(buf[:0], buf[drop:]...)
		}
	}
	if readN < size {
		return SnapshotReplayState{}, fmt.Errorf("VM state ends at %d of %d bytes", readN, size)
	}
	switch len(found) {
	case 0:
		return SnapshotReplayState{}, errors.New("no replay section in the VM state (saved without record/replay?)")
	case 1:
		if found[0].LogOffset < LogHeaderSize {
			return SnapshotReplayState{}, fmt.Errorf("replay section: log offset %d is inside the log header", found[0].LogOffset)
		}
		return found[0], nil
	}
	return SnapshotReplayState{}, fmt.Errorf("%d replay sections in the VM state", len(found))
}
