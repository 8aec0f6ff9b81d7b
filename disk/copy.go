package disk

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Disk image copy: at `ftvmd protect` the backup host receives an exact copy of
// the primary's qcow2 image over the agents' authenticated connection, before
// the rr log stream starts on it. SendImage runs on the primary, ReceiveImage on
// the backup. The wire format is described in docs/disk-copy.md.
//
// Both calls leave the conn positioned just after the copy exchange on success
// (deadlines cleared), so the caller can go on using it. After any error the
// conn is in an unknown state and must be closed.

// Sentinel errors of the image copy. Test for them with errors.Is; they are
// always wrapped with context (path, offset, sizes, the peer's reason).
var (
	// ErrImageMissing: the image file does not exist.
	ErrImageMissing = errors.New("disk image missing")
	// ErrImageCorrupt: the file is not a qcow2 image (bad magic or version), or
	// it changed between Inspect and SendImage, or the ImageInfo is invalid.
	ErrImageCorrupt = errors.New("disk image is not a valid qcow2 image")
	// ErrNoSpace: the backup host's filesystem cannot hold the image.
	ErrNoSpace = errors.New("not enough free space for the disk image")
	// ErrPeerRefused: the other side refused or abandoned the copy; the error
	// carries its reason, and wraps the matching sentinel too (ErrNoSpace,
	// ErrChecksum, ErrProtocol, ErrLocalIO) when there is one.
	ErrPeerRefused = errors.New("peer refused the disk image copy")
	// ErrChecksum: a chunk's CRC32C, the image's SHA256 or its size did not
	// match. The receiver deletes its partial file.
	ErrChecksum = errors.New("disk image checksum mismatch")
	// ErrTruncated: the connection ended or failed in the middle of the copy.
	// No destination file is created; dst+".partial" may remain.
	ErrTruncated = errors.New("disk image stream truncated")
	// ErrProtocol: the peer sent something that is not a valid copy message
	// (bad magic, unknown version, out-of-range length).
	ErrProtocol = errors.New("disk image copy protocol error")
	// ErrCopyTimeout: the peer made no progress for CopyConfig.Timeout.
	ErrCopyTimeout = errors.New("disk image copy stalled")
	// ErrLocalIO: reading the image or writing the copy on this host failed.
	ErrLocalIO = errors.New("disk image I/O failed")
)

// ImageInfo identifies one image: its file name, size and the SHA256 of the
// whole file (lower-case hex).
type ImageInfo struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// Progress of one copy. Done counts the bytes the receiver holds, including
// Resumed: the verified prefix of an interrupted earlier copy that was not sent
// again. Rate is the average of the bytes sent since the copy started, in bytes/s.
type Progress struct {
	Done, Total int64
	Resumed     int64
	Rate        float64
}

// CopyConfig tunes SendImage and ReceiveImage. The zero value is usable.
type CopyConfig struct {
	// ChunkSize is the payload size of one chunk (sender only). Default 1 MiB,
	// at most 16 MiB (larger values are clamped).
	ChunkSize int
	// Progress, if set, is called from the copying goroutine at most every
	// 200ms and once at the end (with Done == Total) after a successful copy.
	Progress func(Progress)
	// Timeout is the IO deadline of each message (one chunk, the header, the
	// final acknowledgement). Default 30s. The two messages that wait for the
	// other side to hash a resumed prefix get Timeout plus the time to hash the
	// image at hashRateFloor.
	Timeout time.Duration
	// ResumeDir (receiver only), if set, is where an interrupted copy is kept
	// and resumed from: the partial file is ResumeDir/<ResumeKey>.<size>.<first 16
	// hex digits of the sha256>.partial, named for the source image's identity, so
	// a changed source never resumes from an older copy (its partial is deleted).
	// Unset: the partial is dst+".partial" and every copy starts from offset 0.
	ResumeDir string
	// ResumeKey names the partial files of one destination (the VM's name): one
	// or more characters, no '/' or NUL, not "." or "..".
	ResumeKey string
	// Logger gets the resume decisions (resumed at an offset, or restarted from 0
	// and why). Nil: discarded.
	Logger *slog.Logger
}

const (
	defaultChunkSize   = 1 << 20
	maxChunkSize       = 16 << 20
	defaultCopyTimeout = 30 * time.Second
	progressEvery      = 200 * time.Millisecond
)

func (c CopyConfig) withDefaults() CopyConfig {
	if c.ChunkSize <= 0 {
		c.ChunkSize = defaultChunkSize
	}
	if c.ChunkSize > maxChunkSize {
		c.ChunkSize = maxChunkSize
	}
	if c.Timeout <= 0 {
		c.Timeout = defaultCopyTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}

// hashRateFloor is the slowest rate at which a side is assumed to read and hash
// a resumed prefix (a slow disk): the other side waits that long on top of
// Timeout before it gives up on the answer.
const hashRateFloor = 32 << 20

func hashAllowance(size int64) time.Duration {
	return time.Duration(size/hashRateFloor+1) * time.Second
}

// qcow2 header: magic "QFI\xfb", then a big-endian uint32 version (2 or 3).
var qcow2Magic = [4]byte{'Q', 'F', 'I', 0xfb}

// Inspect stats the image at path, checks that it is a standalone qcow2 image
// (magic, version 2 or 3, no backing file, no external data file: CheckStandalone)
// and computes the SHA256 of the whole file. Errors: ErrImageMissing,
// ErrImageCorrupt, ErrNotStandalone, ErrLocalIO.
func Inspect(path string) (ImageInfo, error) {
	f, err := openImage(path)
	if err != nil {
		return ImageInfo{}, err
	}
	defer f.Close()
	if err := checkStandalone(f, path); err != nil { // reads with ReadAt: the offset stays 0
		return ImageInfo{}, err
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("%w: read %s: %w", ErrLocalIO, path, err)
	}
	return ImageInfo{Name: filepath.Base(path), Size: n, SHA256: hex.EncodeToString(h.Sum(nil))}, nil
}

func openImage(path string) (*os.File, error) {
	f, err := os.Open(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("%w: %s does not exist", ErrImageMissing, path)
	case err != nil:
		return nil, fmt.Errorf("%w: open %s: %w", ErrLocalIO, path, err)
	}
	return f, nil
}

// validate checks an ImageInfo from the caller or the wire.
func (i ImageInfo) validate() error {
	if i.Name == "" || len(i.Name) > 255 {
		return fmt.Errorf("image name %q: must be 1 to 255 bytes", i.Name)
	}
	if i.Size < 0 {
		return fmt.Errorf("image size %d is negative", i.Size)
	}
	if !validSHA256(i.SHA256) {
		return fmt.Errorf("image sha256 %q: want %d lower-case hex digits", i.SHA256, 2*sha256.Size)
	}
	return nil
}

// validSHA256 says whether s is a SHA256 digest in lower-case hex.
func validSHA256(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for _, c := range []byte(s) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// connGuard owns the conn's deadlines for one copy. Every IO step arms a
// deadline of Timeout first; interrupt (ctx cancelled, or the peer's verdict
// arrived early) sets a past deadline that no later arm can undo.
type connGuard struct {
	conn    net.Conn
	timeout time.Duration

	mu       sync.Mutex
	cause    error // why the copy was interrupted; nil while running
	released bool
}

func newConnGuard(conn net.Conn, timeout time.Duration) *connGuard {
	return &connGuard{conn: conn, timeout: timeout}
}

type deadlineKind int

const (
	dlRead deadlineKind = iota
	dlWrite
	dlBoth
)

// arm sets a Timeout deadline for the next IO step, or returns the cause if
// the copy was interrupted. A zero-timeout arm (none=true) clears it.
func (g *connGuard) arm(kind deadlineKind, none bool) error {
	return g.armFor(kind, none, g.timeout)
}

// armFor is arm with another timeout (a step that waits for the peer to hash).
func (g *connGuard) armFor(kind deadlineKind, none bool, timeout time.Duration) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.cause != nil {
		return g.cause
	}
	t := time.Time{}
	if !none {
		t = time.Now().Add(timeout)
	}
	var err error
	switch kind {
	case dlRead:
		err = g.conn.SetReadDeadline(t)
	case dlWrite:
		err = g.conn.SetWriteDeadline(t)
	default:
		err = g.conn.SetDeadline(t)
	}
	if err != nil {
		return fmt.Errorf("%w: set deadline: %w", ErrTruncated, err)
	}
	return nil
}

// interrupt makes every pending and future IO on the conn fail at once.
func (g *connGuard) interrupt(cause error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.released || g.cause != nil {
		return
	}
	g.cause = cause
	_ = g.conn.SetDeadline(time.Unix(1, 0))
}

func (g *connGuard) err() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.cause
}

// release ends the guard; after a successful copy it clears the deadlines so
// the caller can keep using the conn.
func (g *connGuard) release(ok bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.released = true
	if ok && g.cause == nil {
		_ = g.conn.SetDeadline(time.Time{})
	}
}

// ioErr classifies a failed read or write on the conn.
func (g *connGuard) ioErr(op string, err error) error {
	if c := g.err(); c != nil {
		return fmt.Errorf("%s: %w", op, c)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("%w: %s: no progress for %v: %w", ErrCopyTimeout, op, g.timeout, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrTruncated, op, err)
}

// progressMeter rate-limits the Progress callback.
type progressMeter struct {
	fn      func(Progress)
	total   int64
	resumed int64
	start   time.Time
	last    time.Time
}

func newProgressMeter(fn func(Progress), total, resumed int64) *progressMeter {
	now := time.Now()
	return &progressMeter{fn: fn, total: total, resumed: resumed, start: now, last: now}
}

func (p *progressMeter) update(done int64, final bool) {
	if p.fn == nil {
		return
	}
	now := time.Now()
	if !final && now.Sub(p.last) < progressEvery {
		return
	}
	p.last = now
	rate := 0.0
	if el := now.Sub(p.start).Seconds(); el > 0 {
		rate = float64(done-p.resumed) / el
	}
	p.fn(Progress{Done: done, Total: p.total, Resumed: p.resumed, Rate: rate})
}

// humanBytes formats n like "7.9 MiB".
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
