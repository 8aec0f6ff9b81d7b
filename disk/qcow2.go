package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// ErrNotStandalone: the qcow2 image reads data from other files (a backing file or
// an external data file). Only the image file itself is copied to the backup and
// hashed by verify, so the backup would replay against other data: such an image is
// refused until it is converted to a standalone one.
var ErrNotStandalone = errors.New("disk image is not standalone")

// qcow2 header fields (big-endian), from QEMU's docs/interop/qcow2.txt.
const (
	qcow2OffBackingOffset = 8  // uint64: offset of the backing file name, 0 if none
	qcow2OffBackingSize   = 16 // uint32: its length in bytes
	qcow2V2HeaderSize     = 72
	qcow2OffIncompatible  = 72  // uint64, version 3 only
	qcow2OffHeaderLength  = 100 // uint32, version 3 only
	qcow2V3MinHeaderSize  = 104

	// qcow2IncompatDataFile is the incompatible-feature bit of an image whose
	// guest data lives in an external data file.
	qcow2IncompatDataFile = 1 << 2
	// qcow2ExtDataFile is the header extension holding the external data file's
	// name; qcow2ExtEnd ends the extension list.
	qcow2ExtDataFile = 0x44415441
	qcow2ExtEnd      = 0
	// maxNameLen bounds a file name read from a header (QEMU's own limit is 1023).
	maxNameLen = 4096
)

// qcow2Header is what CheckStandalone needs from an image's header.
type qcow2Header struct {
	version      uint32
	backingFile  string // "" if none
	externalData bool
	dataFile     string // the external data file's name, if the header gives one
}

// readQcow2Header parses the header of the qcow2 image in f (named path in errors).
// Errors: ErrImageCorrupt, ErrLocalIO.
func readQcow2Header(f io.ReaderAt, size int64, path string) (qcow2Header, error) {
	var h qcow2Header
	buf := make([]byte, qcow2V3MinHeaderSize)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return h, fmt.Errorf("%w: read %s: %w", ErrLocalIO, path, err)
	}
	buf = buf[:n]
	if len(buf) < 8 {
		return h, fmt.Errorf("%w: %s is %d bytes, too short for a qcow2 header", ErrImageCorrupt, path, size)
	}
	if [4]byte(buf[:4]) != qcow2Magic {
		return h, fmt.Errorf("%w: %s does not start with the qcow2 magic \"QFI\\xfb\" (found %q)", ErrImageCorrupt, path, buf[:4])
	}
	h.version = binary.BigEndian.Uint32(buf[4:])
	if h.version != 2 && h.version != 3 {
		return h, fmt.Errorf("%w: %s has qcow2 version %d, want 2 or 3", ErrImageCorrupt, path, h.version)
	}
	need := qcow2V2HeaderSize
	if h.version == 3 {
		need = qcow2V3MinHeaderSize
	}
	if len(buf) < need {
		return h, fmt.Errorf("%w: %s is %d bytes, too short for a qcow2 version %d header (%d bytes)", ErrImageCorrupt, path, size, h.version, need)
	}
	if off := binary.BigEndian.Uint64(buf[qcow2OffBackingOffset:]); off != 0 {
		name, err := readName(f, size, off, binary.BigEndian.Uint32(buf[qcow2OffBackingSize:]), path, "backing file name")
		if err != nil {
			return h, err
		}
		if name == "" {
			name = "(unnamed)"
		}
		h.backingFile = name
	}
	if h.version == 2 {
		return h, nil
	}
	h.externalData = binary.BigEndian.Uint64(buf[qcow2OffIncompatible:])&qcow2IncompatDataFile != 0
	if h.externalData {
		hdrLen := binary.BigEndian.Uint32(buf[qcow2OffHeaderLength:])
		name, err := findDataFileName(f, size, int64(hdrLen), path)
		if err != nil {
			return h, err
		}
		h.dataFile = name
	}
	return h, nil
}

// readName reads a file name of n bytes at off.
func readName(f io.ReaderAt, size int64, off uint64, n uint32, path, what string) (string, error) {
	if n > maxNameLen || off > uint64(size) || uint64(n) > uint64(size)-off {
		return "", fmt.Errorf("%w: %s: %s of %d bytes at offset %d lies outside the %d-byte file", ErrImageCorrupt, path, what, n, off, size)
	}
	if n == 0 {
		// Nothing to read: an io.ReaderAt may say EOF for an empty read at the end.
		return "", nil
	}
	b := make([]byte, n)
	if _, err := f.ReadAt(b, int64(off)); err != nil {
		return "", fmt.Errorf("%w: read %s's %s: %w", ErrLocalIO, path, what, err)
	}
	return string(b), nil
}

// findDataFileName walks the header extensions, which start at hdrLen, for the
// external data file's name ("" if the image does not name one).
func findDataFileName(f io.ReaderAt, size, hdrLen int64, path string) (string, error) {
	off := hdrLen
	for i := 0; i < 64 && off+8 <= size; i++ {
		var ext [8]byte
		if _, err := f.ReadAt(ext[:], off); err != nil {
			return "", fmt.Errorf("%w: read %s's header extensions: %w", ErrLocalIO, path, err)
		}
		typ, n := binary.BigEndian.Uint32(ext[:4]), binary.BigEndian.Uint32(ext[4:])
		switch typ {
		case qcow2ExtEnd:
			return "", nil
		case qcow2ExtDataFile:
			return readName(f, size, uint64(off+8), n, path, "external data file name")
		}
		off += 8 + (int64(n)+7)&^7
	}
	return "", nil
}

// CheckStandalone checks that the image at path is a qcow2 image that holds all its
// data itself: no backing file, no external data file. The error says how to make a
// standalone copy. Errors: ErrNotStandalone, ErrImageMissing, ErrImageCorrupt,
// ErrLocalIO.
func CheckStandalone(path string) error {
	f, err := openImage(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return checkStandalone(f, path)
}

func checkStandalone(f *os.File, path string) error {
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%w: stat %s: %w", ErrLocalIO, path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%w: %s is not a regular file (%s)", ErrImageCorrupt, path, st.Mode().Type())
	}
	h, err := readQcow2Header(f, st.Size(), path)
	if err != nil {
		return err
	}
	convert := fmt.Sprintf("qemu-img convert -O qcow2 %s <standalone.qcow2>", path)
	switch {
	case h.backingFile != "":
		return fmt.Errorf("%w: %s has a backing file (%s); only the top file would reach the backup, which would replay against other data. Make a standalone image with: %s, and use that",
			ErrNotStandalone, path, h.backingFile, convert)
	case h.externalData:
		name := h.dataFile
		if name == "" {
			name = "not named in the image"
		}
		return fmt.Errorf("%w: %s keeps its data in an external data file (%s); only the qcow2 file would reach the backup. Make a standalone image with: %s, and use that",
			ErrNotStandalone, path, name, convert)
	}
	return nil
}
