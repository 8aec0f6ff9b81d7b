package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// On-disk record slots. Slot n lives at byte offset n*slotSize of the disk:
//
//	[0:4]   magic "FTRC"
//	[4:12]  n, uint64 little endian
//	[12:14] payload length, uint16 little endian
//	[14:18] crc32 (IEEE) of the payload, little endian
//	[18:32] zero
//	[32:]   payload (at most maxPayload bytes), then zero padding to slotSize
//
// A slot is valid when the magic, n, the length bound and the crc all match;
// anything else (an all-zero never-written slot, a torn or foreign write) reads
// as missing.
const (
	slotSize   = 512
	recHeader  = 32
	maxPayload = slotSize - recHeader // 480
	recMagic   = "FTRC"
)

var errNoDisk = errors.New("no disk")

// encodeRecord returns the slotSize-byte image of record n.
func encodeRecord(n uint64, payload []byte) ([]byte, error) {
	if len(payload) > maxPayload {
		return nil, fmt.Errorf("payload %d bytes over limit %d", len(payload), maxPayload)
	}
	b := make([]byte, slotSize)
	copy(b, recMagic)
	binary.LittleEndian.PutUint64(b[4:], n)
	binary.LittleEndian.PutUint16(b[12:], uint16(len(payload)))
	binary.LittleEndian.PutUint32(b[14:], crc32.ChecksumIEEE(payload))
	copy(b[recHeader:], payload)
	return b, nil
}

// decodeRecord returns the payload of slot image b if it holds a valid record n.
func decodeRecord(b []byte, n uint64) ([]byte, bool) {
	if len(b) < slotSize || string(b[:4]) != recMagic || binary.LittleEndian.Uint64(b[4:]) != n {
		return nil, false
	}
	l := int(binary.LittleEndian.Uint16(b[12:]))
	if l > maxPayload {
		return nil, false
	}
	p := b[recHeader : recHeader+l]
	if crc32.ChecksumIEEE(p) != binary.LittleEndian.Uint32(b[14:]) {
		return nil, false
	}
	return bytes.Clone(p), true
}

// openDisk returns the open record device and its size, opening it on first use
// (O_RDWR|O_SYNC: a write returns only once the device has flushed it). The caller
// holds s.dmu. A missing device is errNoDisk; it is looked for again next time.
func (s *server) openDisk() (*os.File, int64, error) {
	if s.disk != nil {
		return s.disk, s.diskSize, nil
	}
	f, err := os.OpenFile(s.diskPath, os.O_RDWR|os.O_SYNC, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, errNoDisk
	}
	if err != nil {
		return nil, 0, err
	}
	// Seeking to the end gives the size of block devices and regular files alike.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		f.Close()
		return nil, 0, fmt.Errorf("size of %s: %w", s.diskPath, err)
	}
	s.disk, s.diskSize = f, size
	return f, size, nil
}

// parseSlot parses a slot number that fits on a disk of size bytes.
func parseSlot(arg string, size int64) (uint64, error) {
	n, err := strconv.ParseUint(arg, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bad slot %q", arg)
	}
	if slots := uint64(size / slotSize); n >= slots {
		return 0, fmt.Errorf("slot %d out of range (disk has %d slots)", n, slots)
	}
	return n, nil
}

// diskErr formats err as a protocol answer; errNoDisk is "err no disk" for every command.
func diskErr(cmd string, err error) string {
	if errors.Is(err, errNoDisk) {
		return "err no disk"
	}
	return fmt.Sprintf("err %s: %v", cmd, err)
}

// recPut serves "rec <n> <payload>": it answers only after the write is durable.
func (s *server) recPut(rest string) string {
	arg, payload, _ := strings.Cut(rest, " ")
	if arg == "" {
		return "err usage: rec <n> <payload>"
	}
	s.dmu.Lock()
	defer s.dmu.Unlock()
	f, size, err := s.openDisk()
	if err != nil {
		return diskErr("rec", err)
	}
	n, err := parseSlot(arg, size)
	if err != nil {
		return diskErr("rec", err)
	}
	b, err := encodeRecord(n, []byte(payload))
	if err != nil {
		return diskErr("rec", err)
	}
	if _, err := f.WriteAt(b, int64(n)*slotSize); err != nil {
		return diskErr("rec", err)
	}
	// The device is open O_SYNC: WriteAt returned after the kernel wrote the slot and
	// flushed the device's write cache (a virtio-blk FLUSH), so the record is durable.
	return fmt.Sprintf("rec ok %d", n)
}

// recGet serves "recget <n>".
func (s *server) recGet(rest string) string {
	if rest == "" {
		return "err usage: recget <n>"
	}
	s.dmu.Lock()
	defer s.dmu.Unlock()
	f, size, err := s.openDisk()
	if err != nil {
		return diskErr("recget", err)
	}
	n, err := parseSlot(rest, size)
	if err != nil {
		return diskErr("recget", err)
	}
	b := make([]byte, slotSize)
	if _, err := f.ReadAt(b, int64(n)*slotSize); err != nil {
		return diskErr("recget", err)
	}
	p, ok := decodeRecord(b, n)
	if !ok {
		return fmt.Sprintf("rec %d missing", n)
	}
	return fmt.Sprintf("rec %d %s", n, p)
}

// recCount serves "reccount": the number of valid slots before the first missing one.
// It reads 128 slots (64 KiB) at a time.
func (s *server) recCount() string {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	f, size, err := s.openDisk()
	if err != nil {
		return diskErr("reccount", err)
	}
	slots := uint64(size / slotSize)
	buf := make([]byte, 128*slotSize)
	var k uint64
	for k < slots {
		chunk := buf[:min(uint64(len(buf)), (slots-k)*slotSize)]
		if _, err := f.ReadAt(chunk, int64(k)*slotSize); err != nil {
			return diskErr("reccount", err)
		}
		for off := 0; off < len(chunk); off += slotSize {
			if _, ok := decodeRecord(chunk[off:off+slotSize], k); !ok {
				return fmt.Sprintf("reccount %d", k)
			}
			k++
		}
	}
	return fmt.Sprintf("reccount %d", k)
}

// diskInfo serves "disk".
func (s *server) diskInfo() string {
	s.dmu.Lock()
	defer s.dmu.Unlock()
	_, size, err := s.openDisk()
	if errors.Is(err, errNoDisk) {
		return "disk none"
	}
	if err != nil {
		return diskErr("disk", err)
	}
	return fmt.Sprintf("disk %d", size)
}
