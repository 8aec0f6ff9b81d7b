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
	"hash"
	"hash/crc32"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
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
	r := &receiver{ctx: ctx, g: g, conn: conn, dst: dst, partial: dst + ".partial"}
	info, err := r.run(cfg)
	if err != nil {
		return info, fmt.Errorf("receive %s: %w", dst, err)
	}
	ok = true
	return info, nil
}

type receiver struct {
	ctx     context.Context
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
	info, flags, err := r.readHeader()
	if err != nil {
		return ImageInfo{}, err
	}
	if cfg.ResumeDir != "" {
		p, err := partialFor(cfg, info)
		if err != nil {
			return ImageInfo{}, r.refuse(replyRefuse, err)
		}
		r.partial = p
	}
	if err := r.checkSpace(info.Size); err != nil {
		return ImageInfo{}, r.refuse(replyRefuse, err)
	}
	// Resume only from a partial named for this very image, to a sender that
	// can answer an offer (an older one would take it for a protocol error).
	resumable := cfg.ResumeDir != "" && flags&flagResume != 0
	mode := os.O_RDWR | os.O_CREATE
	if !resumable {
		mode |= os.O_TRUNC
	}
	f, err := os.OpenFile(r.partial, mode, 0o600)
	if err != nil {
		return ImageInfo{}, r.refuse(replyRefuse, fmt.Errorf("%w: %w", ErrLocalIO, err))
	}
	r.f = f
	defer func() {
		if r.f != nil { // a lost connection: keep the partial file
			_ = r.f.Close()
		}
	}()
	sum := sha256.New()
	var offer int64
	if resumable {
		offer = r.hashPartial(info.Size, sum, cfg.Logger)
	}
	acc := reply{typ: replyAccept, value: uint64(offer)}
	if offer > 0 {
		acc.msg = hex.EncodeToString(sum.Sum(nil))
	}
	if err := r.g.arm(dlWrite, false); err != nil {
		return ImageInfo{}, r.g.ioErr("send accept", err)
	}
	if _, err := r.conn.Write(encodeReply(acc)); err != nil {
		return ImageInfo{}, r.g.ioErr("send accept", err)
	}
	got := int64(0)
	if offer > 0 {
		if got, err = r.readResume(offer, info.Size, cfg); err != nil {
			return ImageInfo{}, err
		}
	}
	if got == 0 {
		sum.Reset()
	}
	// Drop whatever the partial holds past the agreed offset, and write on from it.
	if err := r.f.Truncate(got); err != nil {
		return ImageInfo{}, r.fail(fmt.Errorf("%w: truncate %s to %d: %w", ErrLocalIO, r.partial, got, err))
	}
	if _, err := r.f.Seek(got, io.SeekStart); err != nil {
		return ImageInfo{}, r.fail(fmt.Errorf("%w: seek %s to %d: %w", ErrLocalIO, r.partial, got, err))
	}
	resumed := got

	crcTab := crc32.MakeTable(crc32.Castagnoli)
	meter := newProgressMeter(cfg.Progress, info.Size, resumed)
	var (
		synced = got
		buf    []byte // grown to the largest length that passed the checks
		fh     [frameHeaderLen]byte
		chunk  int
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

// hashPartial hashes what the partial file holds of the image (at most size
// bytes) into sum and returns its length: the offset to offer. A partial that
// cannot be read is offered as 0 (restart), with a log line.
func (r *receiver) hashPartial(size int64, sum hash.Hash, log *slog.Logger) int64 {
	st, err := r.f.Stat()
	if err != nil {
		log.Warn("disk copy restarts from 0", "partial", r.partial, "why", fmt.Sprintf("cannot stat the partial copy: %v", err))
		return 0
	}
	n := min(st.Size(), size)
	if n == 0 {
		return 0
	}
	if err := hashPrefix(r.ctx, io.NewSectionReader(r.f, 0, n), n, sum); err != nil {
		log.Warn("disk copy restarts from 0", "partial", r.partial, "why", fmt.Sprintf("cannot read the partial copy: %v", err))
		sum.Reset()
		return 0
	}
	return n
}

// readResume reads the sender's answer to a resume offer and returns the offset
// the copy continues from: the offer, or 0 when the sender found the prefix
// differs from its image (it says why).
func (r *receiver) readResume(offer, size int64, cfg CopyConfig) (int64, error) {
	// The sender hashes the same prefix of its image before it answers.
	if err := r.g.armFor(dlRead, false, cfg.Timeout+hashAllowance(offer)); err != nil {
		return 0, r.g.ioErr("read resume answer", err)
	}
	rep, err := readReply(r.conn)
	switch {
	case errors.Is(err, ErrProtocol):
		return 0, r.fail(err)
	case err != nil:
		return 0, r.g.ioErr("read resume answer", err)
	case rep.typ != replyResume:
		return 0, r.fail(fmt.Errorf("%w: reply type %d to a resume offer, want %d", ErrProtocol, rep.typ, replyResume))
	case rep.value == uint64(offer):
		cfg.Logger.Info("disk copy resumes", "partial", r.partial, "offset", offer, "remaining", size-offer)
		return offer, nil
	case rep.value == 0:
		cfg.Logger.Warn("disk copy restarts from 0", "partial", r.partial, "why", "the primary says: "+rep.msg)
		return 0, nil
	}
	return 0, r.fail(fmt.Errorf("%w: the sender answered a resume offer at offset %d with offset %d", ErrProtocol, offer, rep.value))
}

// partialName is the partial file of one source image: named for its size and
// digest, so a changed source never resumes from an older copy.
func partialName(key string, info ImageInfo) string {
	return fmt.Sprintf("%s.%d.%s.partial", key, info.Size, info.SHA256[:16])
}

// partialFor returns the partial file for info in cfg.ResumeDir (creating the
// directory) and deletes the key's partial copies of any other source image,
// saying so: their copy restarts from 0.
func partialFor(cfg CopyConfig, info ImageInfo) (string, error) {
	key := cfg.ResumeKey
	if key == "" || key == "." || key == ".." || strings.ContainsAny(key, "/\x00") {
		return "", fmt.Errorf("%w: resume key %q: want a file name", ErrLocalIO, key)
	}
	if err := os.MkdirAll(cfg.ResumeDir, 0o700); err != nil {
		return "", fmt.Errorf("%w: %w", ErrLocalIO, err)
	}
	want := partialName(key, info)
	ents, err := os.ReadDir(cfg.ResumeDir)
	if err != nil {
		return "", fmt.Errorf("%w: %w", ErrLocalIO, err)
	}
	for _, e := range ents {
		name := e.Name()
		if name == want || !isPartialOf(key, name) {
			continue
		}
		cfg.Logger.Warn("disk copy restarts from 0", "partial", name,
			"why", fmt.Sprintf("the source image changed: the partial copy is of another image, this one is %d bytes with sha256 %s", info.Size, info.SHA256))
		if err := os.Remove(filepath.Join(cfg.ResumeDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("%w: remove stale partial copy: %w", ErrLocalIO, err)
		}
	}
	return filepath.Join(cfg.ResumeDir, want), nil
}

// isPartialOf says whether name is partialName(key, some image): the key, a
// size and 16 hex digits (a key with dots of its own does not match another's).
func isPartialOf(key, name string) bool {
	rest, ok := strings.CutPrefix(name, key+".")
	if !ok {
		return false
	}
	rest, ok = strings.CutSuffix(rest, ".partial")
	if !ok {
		return false
	}
	size, digest, ok := strings.Cut(rest, ".")
	if !ok || size == "" || len(digest) != 16 {
		return false
	}
	for _, c := range []byte(size) {
		if c < '0' || c > '9' {
			return false
		}
	}
	for _, c := range []byte(digest) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// readHeader reads and checks the header; it returns the image and the flags.
func (r *receiver) readHeader() (ImageInfo, uint16, error) {
	if err := r.g.arm(dlRead, false); err != nil {
		return ImageInfo{}, 0, r.g.ioErr("read header", err)
	}
	var h [headerFixedLen]byte
	if _, err := io.ReadFull(r.conn, h[:]); err != nil {
		return ImageInfo{}, 0, r.g.ioErr("read header", err)
	}
	if string(h[:8]) != headerMagic {
		return ImageInfo{}, 0, r.refuse(replyRefuse, fmt.Errorf("%w: stream does not start with %q (got %q)", ErrProtocol, headerMagic, h[:8]))
	}
	if v := binary.BigEndian.Uint16(h[8:]); v != wireVersion {
		return ImageInfo{}, 0, r.refuse(replyRefuse, fmt.Errorf("%w: sender speaks version %d, this host version %d", ErrProtocol, v, wireVersion))
	}
	n := binary.BigEndian.Uint32(h[12:])
	if n == 0 || n > maxHeaderJSON {
		return ImageInfo{}, 0, r.refuse(replyRefuse, fmt.Errorf("%w: header of %d bytes, want 1 to %d", ErrProtocol, n, maxHeaderJSON))
	}
	js := make([]byte, n)
	if _, err := io.ReadFull(r.conn, js); err != nil {
		return ImageInfo{}, 0, r.g.ioErr("read header", err)
	}
	var info ImageInfo
	if err := json.Unmarshal(js, &info); err != nil {
		return ImageInfo{}, 0, r.refuse(replyRefuse, fmt.Errorf("%w: header: %w", ErrProtocol, err))
	}
	if err := info.validate(); err != nil {
		return ImageInfo{}, 0, r.refuse(replyRefuse, fmt.Errorf("%w: header: %w", ErrProtocol, err))
	}
	return info, binary.BigEndian.Uint16(h[10:]), nil
}

// checkSpace requires room for size bytes on the partial file's filesystem,
// counting the blocks of an existing partial file (resumed or rewritten) as room.
func (r *receiver) checkSpace(size int64) error {
	dir := filepath.Dir(r.partial) // where the data is written
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
