package disk

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"
)

// writebackEvery is how much the receiver writes before it asks the kernel to
// start writing it back, so the final fsync does not face gigabytes of dirty
// pages (and the sender's Timeout for the acknowledgement holds).
const writebackEvery = 8 << 20

// ReceiveImage receives an image sent by SendImage on the other end of conn and
// stores it at dst. The data goes to dst+".partial" first; only after every
// chunk's CRC32C, the size and the whole-file SHA256 have been verified is it
// fsync'd, renamed to dst (replacing any older dst) and the directory fsync'd;
// then the sender is acknowledged. It returns the verified ImageInfo.
//
// Before accepting, it checks with statfs that dst's filesystem has room for
// the image (an existing dst+".partial" counts as room, as it is overwritten);
// if not, it refuses with ErrNoSpace and the sender gets the same reason.
//
// Errors: ErrNoSpace, ErrChecksum (the partial file is deleted), ErrProtocol
// (partial deleted), ErrPeerRefused (the sender aborted; partial deleted),
// ErrTruncated or ErrCopyTimeout or ctx's error (the connection failed:
// dst+".partial" is left and reused by the next attempt, which restarts from
// offset 0), ErrLocalIO (partial deleted). dst is never created on error.
// If only the final acknowledgement cannot be sent, dst is complete and the
// returned ImageInfo is valid alongside the error.
func ReceiveImage(ctx context.Context, conn net.Conn, dst string, cfg CopyConfig) (ImageInfo, error) {
	cfg = cfg.withDefaults()
	if err := ctx.Err(); err != nil {
		return ImageInfo{}, fmt.Errorf("receive %s: %w", dst, err)
	}
	g := newConnGuard(conn, cfg.Timeout)
	stop := context.AfterFunc(ctx, func() { g.interrupt(context.Cause(ctx)) })
	defer stop()
	ok := false
	defer func() { g.release(ok) }()
	r := &receiver{g: g, conn: conn, dst: dst, partial: dst + ".partial"}
	info, err := r.run(cfg)
	if err != nil {
		return info, fmt.Errorf("receive %s: %w", dst, err)
	}
	ok = true
	return info, nil
}

type receiver struct {
	g       *connGuard
	conn    net.Conn
	dst     string
	partial string
	f       *os.File
}

// refuse tells the sender why (best effort) and returns err.
func (r *receiver) refuse(typ replyType, err error) error {
	if r.g.arm(dlWrite, false) == nil {
		_, _ = r.conn.Write(encodeReply(reply{typ: typ, code: codeOf(err), msg: err.Error()}))
	}
	return err
}

// discard closes and deletes the partial file.
func (r *receiver) discard() {
	if r.f != nil {
		_ = r.f.Close()
		r.f = nil
		_ = os.Remove(r.partial)
	}
}

// fail deletes the partial file, tells the sender why and returns err.
func (r *receiver) fail(err error) error {
	r.discard()
	return r.refuse(replyFail, err)
}

func (r *receiver) run(cfg CopyConfig) (ImageInfo, error) {
	info, err := r.readHeader()
	if err != nil {
		return ImageInfo{}, err
	}
	if err := r.checkSpace(info.Size); err != nil {
		return ImageInfo{}, r.refuse(replyRefuse, err)
	}
	f, err := os.OpenFile(r.partial, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return ImageInfo{}, r.refuse(replyRefuse, fmt.Errorf("%w: %w", ErrLocalIO, err))
	}
	r.f = f
	defer func() {
		if r.f != nil { // a lost connection: keep the partial file
			_ = r.f.Close()
		}
	}()
	if err := r.g.arm(dlWrite, false); err != nil {
		return ImageInfo{}, r.g.ioErr("send accept", err)
	}
	if _, err := r.conn.Write(encodeReply(reply{typ: replyAccept, value: 0})); err != nil {
		return ImageInfo{}, r.g.ioErr("send accept", err)
	}

	crcTab := crc32.MakeTable(crc32.Castagnoli)
	sum := sha256.New()
	meter := newProgressMeter(cfg.Progress, info.Size)
	var (
		got, synced int64
		buf         []byte // grown to the largest length that passed the checks
		fh          [frameHeaderLen]byte
		chunk       int
	)
	for {
		if err := r.g.arm(dlRead, false); err != nil {
			return ImageInfo{}, r.g.ioErr("read chunk", err)
		}
		if _, err := io.ReadFull(r.conn, fh[:]); err != nil {
			return ImageInfo{}, r.g.ioErr(fmt.Sprintf("read chunk header at offset %d of %d", got, info.Size), err)
		}
		n, crc := binary.BigEndian.Uint32(fh[:4]), binary.BigEndian.Uint32(fh[4:])
		if n == 0 { // trailer
			break
		}
		if n == abortMarker {
			return ImageInfo{}, r.readAbort(crc)
		}
		if n > maxChunkSize {
			return ImageInfo{}, r.fail(fmt.Errorf("%w: chunk %d at offset %d claims %d bytes, the limit is %d", ErrProtocol, chunk, got, n, maxChunkSize))
		}
		if int64(n) > info.Size-got {
			return ImageInfo{}, r.fail(fmt.Errorf("%w: chunk %d at offset %d claims %d bytes, only %d remain of the %d in the header", ErrProtocol, chunk, got, n, info.Size-got, info.Size))
		}
		if int(n) > len(buf) {
			buf = make([]byte, n)
		}
		data := buf[:n]
		if _, err := io.ReadFull(r.conn, data); err != nil {
			return ImageInfo{}, r.g.ioErr(fmt.Sprintf("read chunk %d at offset %d of %d", chunk, got, info.Size), err)
		}
		if c := crc32.Checksum(data, crcTab); c != crc {
			return ImageInfo{}, r.fail(fmt.Errorf("%w: chunk %d at offset %d (%d bytes): crc32c %08x, sender says %08x", ErrChecksum, chunk, got, n, c, crc))
		}
		if _, err := r.f.Write(data); err != nil {
			if errors.Is(err, syscall.ENOSPC) {
				err = fmt.Errorf("%w: %w", ErrNoSpace, err)
			}
			return ImageInfo{}, r.fail(fmt.Errorf("%w: write %s at offset %d: %w", ErrLocalIO, r.partial, got, err))
		}
		sum.Write(data)
		got += int64(n)
		chunk++
		if got-synced >= writebackEvery {
			// Start writeback of what is written so far; errors show at fsync.
			_ = unix.SyncFileRange(int(r.f.Fd()), synced, got-synced, unix.SYNC_FILE_RANGE_WRITE)
			synced = got
		}
		meter.update(got, false)
	}

	// Trailer: u64 total, sha256 as the sender computed it.
	var body [trailerBodyLen]byte
	if _, err := io.ReadFull(r.conn, body[:]); err != nil {
		return ImageInfo{}, r.g.ioErr("read trailer", err)
	}
	if c := crc32.Checksum(body[:], crcTab); c != binary.BigEndian.Uint32(fh[4:]) {
		return ImageInfo{}, r.fail(fmt.Errorf("%w: trailer crc32c %08x, sender says %08x", ErrChecksum, c, binary.BigEndian.Uint32(fh[4:])))
	}
	if total := binary.BigEndian.Uint64(body[:8]); total != uint64(got) {
		return ImageInfo{}, r.fail(fmt.Errorf("%w: trailer says %d bytes were sent, %d arrived", ErrProtocol, total, got))
	}
	if got != info.Size {
		return ImageInfo{}, r.fail(fmt.Errorf("%w: received %d bytes, the header says the image is %d", ErrChecksum, got, info.Size))
	}
	digest := sum.Sum(nil)
	if hex.EncodeToString(digest) != info.SHA256 {
		why := "the sender's file does not match its header"
		if !bytes.Equal(digest, body[8:]) {
			why = "the data changed in transit"
		}
		return ImageInfo{}, r.fail(fmt.Errorf("%w: received image has sha256 %x, the header says %s (%s)", ErrChecksum, digest, info.SHA256, why))
	}

	// Durable, then visible, then acknowledged.
	if err := r.f.Sync(); err != nil {
		return ImageInfo{}, r.fail(fmt.Errorf("%w: fsync %s: %w", ErrLocalIO, r.partial, err))
	}
	if err := r.f.Close(); err != nil {
		r.f = nil
		_ = os.Remove(r.partial)
		return ImageInfo{}, r.refuse(replyFail, fmt.Errorf("%w: close %s: %w", ErrLocalIO, r.partial, err))
	}
	r.f = nil
	if err := os.Rename(r.partial, r.dst); err != nil {
		_ = os.Remove(r.partial)
		return ImageInfo{}, r.refuse(replyFail, fmt.Errorf("%w: rename %s: %w", ErrLocalIO, r.partial, err))
	}
	if err := syncDir(filepath.Dir(r.dst)); err != nil {
		return ImageInfo{}, r.refuse(replyFail, fmt.Errorf("%w: %w", ErrLocalIO, err))
	}
	if err := r.g.arm(dlWrite, false); err != nil {
		return info, r.g.ioErr("send acknowledgement (the image is in place)", err)
	}
	if _, err := r.conn.Write(encodeReply(reply{typ: replyOK, value: uint64(got)})); err != nil {
		return info, r.g.ioErr("send acknowledgement (the image is in place)", err)
	}
	meter.update(got, true)
	return info, nil
}

func (r *receiver) readHeader() (ImageInfo, error) {
	if err := r.g.arm(dlRead, false); err != nil {
		return ImageInfo{}, r.g.ioErr("read header", err)
	}
	var h [headerFixedLen]byte
	if _, err := io.ReadFull(r.conn, h[:]); err != nil {
		return ImageInfo{}, r.g.ioErr("read header", err)
	}
	if string(h[:8]) != headerMagic {
		return ImageInfo{}, r.refuse(replyRefuse, fmt.Errorf("%w: stream does not start with %q (got %q)", ErrProtocol, headerMagic, h[:8]))
	}
	if v := binary.BigEndian.Uint16(h[8:]); v != wireVersion {
		return ImageInfo{}, r.refuse(replyRefuse, fmt.Errorf("%w: sender speaks version %d, this host version %d", ErrProtocol, v, wireVersion))
	}
	n := binary.BigEndian.Uint32(h[12:])
	if n == 0 || n > maxHeaderJSON {
		return ImageInfo{}, r.refuse(replyRefuse, fmt.Errorf("%w: header of %d bytes, want 1 to %d", ErrProtocol, n, maxHeaderJSON))
	}
	js := make([]byte, n)
	if _, err := io.ReadFull(r.conn, js); err != nil {
		return ImageInfo{}, r.g.ioErr("read header", err)
	}
	var info ImageInfo
	if err := json.Unmarshal(js, &info); err != nil {
		return ImageInfo{}, r.refuse(replyRefuse, fmt.Errorf("%w: header: %w", ErrProtocol, err))
	}
	if err := info.validate(); err != nil {
		return ImageInfo{}, r.refuse(replyRefuse, fmt.Errorf("%w: header: %w", ErrProtocol, err))
	}
	return info, nil
}

// checkSpace requires room for size bytes on dst's filesystem, counting the
// blocks of an existing partial file (it is truncated and rewritten) as room.
func (r *receiver) checkSpace(size int64) error {
	dir := filepath.Dir(r.dst)
	var sfs unix.Statfs_t
	if err := unix.Statfs(dir, &sfs); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w: destination directory %s does not exist", ErrLocalIO, dir)
		}
		return fmt.Errorf("%w: statfs %s: %w", ErrLocalIO, dir, err)
	}
	free := satMul(sfs.Bavail, uint64(max(sfs.Bsize, 0)))
	var reuse uint64
	var st unix.Stat_t
	if unix.Stat(r.partial, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFREG {
		reuse = satMul(uint64(max(st.Blocks, 0)), 512)
	}
	need := uint64(size)
	if reuse >= need {
		return nil
	}
	if free < need-reuse {
		msg := fmt.Sprintf("backup host has %s free on %s, the image needs %s", humanBytes(int64(min(free, 1<<62))), dir, humanBytes(size))
		if reuse > 0 {
			msg += fmt.Sprintf(" (%s of it already held by %s)", humanBytes(int64(reuse)), filepath.Base(r.partial))
		}
		return fmt.Errorf("%w: %s", ErrNoSpace, msg)
	}
	return nil
}

// readAbort handles the sender's abort frame (the crc field holds the length).
func (r *receiver) readAbort(n uint32) error {
	r.discard()
	if n > maxReplyMsg {
		return fmt.Errorf("%w: abort message of %d bytes exceeds %d", ErrProtocol, n, maxReplyMsg)
	}
	msg := make([]byte, n)
	if _, err := io.ReadFull(r.conn, msg); err != nil {
		return r.g.ioErr("read abort message", err)
	}
	return fmt.Errorf("%w: sender aborted: %s", ErrPeerRefused, msg)
}

func satMul(a, b uint64) uint64 {
	if b != 0 && a > ^uint64(0)/b {
		return ^uint64(0)
	}
	return a * b
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", dir, err)
	}
	return nil
}
