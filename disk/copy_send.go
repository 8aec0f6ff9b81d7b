package disk

import (
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
	"net"
	"os"
	"time"
)

// SendImage sends the image at path, described by info (from Inspect), to a
// ReceiveImage on the other end of conn. It returns nil only after the
// receiver has verified the copy, made it durable and acknowledged it.
//
// Errors: ErrImageMissing, ErrImageCorrupt (the file no longer matches info),
// ErrLocalIO (reading the file), ErrPeerRefused wrapping the receiver's reason
// (and ErrNoSpace, ErrChecksum, ErrProtocol or ErrLocalIO when it gives one),
// ErrTruncated (the connection failed), ErrCopyTimeout, ErrProtocol (a bad
// reply), or ctx's error. After an error the conn must be closed.
func SendImage(ctx context.Context, conn net.Conn, path string, info ImageInfo, cfg CopyConfig) error {
	if err := sendImage(ctx, conn, path, info, cfg.withDefaults()); err != nil {
		return fmt.Errorf("send %s: %w", path, err)
	}
	return nil
}

func sendImage(ctx context.Context, conn net.Conn, path string, info ImageInfo, cfg CopyConfig) error {
	if err := info.validate(); err != nil {
		return fmt.Errorf("%w: image info: %w", ErrImageCorrupt, err)
	}
	f, err := openImage(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("%w: stat %s: %w", ErrLocalIO, path, err)
	}
	if st.Size() != info.Size {
		return fmt.Errorf("%w: %s is %d bytes but was %d when inspected: it changed", ErrImageCorrupt, path, st.Size(), info.Size)
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	g := newConnGuard(conn, cfg.Timeout)
	stop := context.AfterFunc(ctx, func() { g.interrupt(context.Cause(ctx)) })
	defer stop()
	ok := false
	defer func() { g.release(ok) }()

	// Header.
	js, err := json.Marshal(info)
	if err != nil {
		return fmt.Errorf("%w: encode header: %w", ErrProtocol, err)
	}
	if len(js) > maxHeaderJSON {
		return fmt.Errorf("%w: header of %d bytes exceeds %d", ErrProtocol, len(js), maxHeaderJSON)
	}
	hdr := make([]byte, headerFixedLen+len(js))
	copy(hdr, headerMagic)
	binary.BigEndian.PutUint16(hdr[8:], wireVersion)
	binary.BigEndian.PutUint16(hdr[10:], flagResume)
	binary.BigEndian.PutUint32(hdr[12:], uint32(len(js)))
	copy(hdr[headerFixedLen:], js)
	if err := g.arm(dlWrite, false); err != nil {
		return g.ioErr("send header", err)
	}
	if _, err := conn.Write(hdr); err != nil {
		return g.ioErr("send header", err)
	}

	// Accept or refusal. The receiver may first hash the partial copy it holds.
	if err := g.armFor(dlRead, false, cfg.Timeout+hashAllowance(info.Size)); err != nil {
		return g.ioErr("read reply to header", err)
	}
	rep, err := readReply(conn)
	if err != nil {
		if errors.Is(err, ErrProtocol) {
			return err
		}
		return g.ioErr("read reply to header", err)
	}
	sum := sha256.New()
	var resumed int64
	switch rep.typ {
	case replyAccept:
		if rep.value != 0 {
			if resumed, err = answerOffer(ctx, g, conn, f, path, info, rep, sum, cfg); err != nil {
				return err
			}
		}
	case replyRefuse, replyFail:
		return rep.peerErr()
	default:
		return fmt.Errorf("%w: unexpected reply type %d to the header", ErrProtocol, rep.typ)
	}

	// From here the receiver may answer at any time (a bad chunk, its disk
	// failing), so one goroutine waits for its verdict while this one streams.
	// It has no read deadline until the trailer is sent.
	if err := g.arm(dlRead, true); err != nil {
		return g.ioErr("clear read deadline", err)
	}
	verdict := make(chan verdictResult, 1)
	go func() {
		rep, err := readReply(conn)
		v := verdictResult{rep: rep, err: err}
		if err == nil && rep.typ != replyOK {
			v.peer = rep.peerErr()
			g.interrupt(v.peer) // stop the streaming side at once
		}
		verdict <- v
	}()
	// fail stops the verdict reader and returns the peer's reason if it had
	// one, else err.
	// A write that failed because the receiver hung up after its verdict
	// (a TCP reset) leaves the verdict readable: give the reader a moment.
	fail := func(err error) error {
		var v verdictResult
		t := time.NewTimer(min(verdictGrace, cfg.Timeout))
		select {
		case v = <-verdict:
		case <-t.C:
			g.interrupt(err)
			v = <-verdict
		}
		t.Stop()
		g.interrupt(err)
		if v.peer != nil {
			return v.peer
		}
		return err
	}

	crcTab := crc32.MakeTable(crc32.Castagnoli)
	buf := make([]byte, frameHeaderLen+cfg.ChunkSize)
	meter := newProgressMeter(cfg.Progress, info.Size, resumed)
	sent := resumed
	for sent < info.Size {
		n := int(min(int64(cfg.ChunkSize), info.Size-sent))
		data := buf[frameHeaderLen : frameHeaderLen+n]
		if _, err := io.ReadFull(f, data); err != nil {
			lerr := fmt.Errorf("%w: read %s at offset %d (did it shrink?): %w", ErrLocalIO, path, sent, err)
			sendAbort(g, conn, lerr.Error())
			g.interrupt(lerr) // the receiver does not answer an abort
			return fail(lerr)
		}
		binary.BigEndian.PutUint32(buf[0:], uint32(n))
		binary.BigEndian.PutUint32(buf[4:], crc32.Checksum(data, crcTab))
		sum.Write(data)
		if err := g.arm(dlWrite, false); err != nil {
			return fail(g.ioErr(fmt.Sprintf("send chunk at offset %d", sent), err))
		}
		if _, err := conn.Write(buf[:frameHeaderLen+n]); err != nil {
			return fail(g.ioErr(fmt.Sprintf("send chunk at offset %d", sent), err))
		}
		sent += int64(n)
		meter.update(sent, false)
	}

	// Trailer, then wait for the verdict.
	var tr [frameHeaderLen + trailerBodyLen]byte
	body := tr[frameHeaderLen:]
	binary.BigEndian.PutUint64(body, uint64(sent))
	copy(body[8:], sum.Sum(nil))
	binary.BigEndian.PutUint32(tr[4:], crc32.Checksum(body, crcTab))
	if err := g.arm(dlWrite, false); err != nil {
		return fail(g.ioErr("send trailer", err))
	}
	if _, err := conn.Write(tr[:]); err != nil {
		return fail(g.ioErr("send trailer", err))
	}
	if err := g.arm(dlRead, false); err != nil {
		return fail(g.ioErr("wait for acknowledgement", err))
	}
	v := <-verdict
	switch {
	case v.peer != nil:
		return v.peer
	case errors.Is(v.err, ErrProtocol):
		return v.err
	case v.err != nil:
		return g.ioErr("wait for acknowledgement", v.err)
	case v.rep.value != uint64(info.Size):
		return fmt.Errorf("%w: receiver acknowledged %d bytes, sent %d", ErrProtocol, v.rep.value, info.Size)
	}
	if got := hex.EncodeToString(sum.Sum(nil)); got != info.SHA256 {
		// Unreachable: the receiver checks the same digest against the header.
		return fmt.Errorf("%w: %s has sha256 %s, inspected as %s", ErrChecksum, path, got, info.SHA256)
	}
	meter.update(sent, true)
	ok = true
	return nil
}

// answerOffer checks the receiver's resume offer (a prefix length and the
// SHA256 of what it holds there) against the image: it hashes the same prefix
// into sum and answers with a resume reply, keeping the offer when the digests
// match and restarting from 0 (with the reason) when they do not. It returns the
// offset the copy continues from, with f positioned there and sum holding the
// digest state of the bytes before it.
func answerOffer(ctx context.Context, g *connGuard, conn net.Conn, f *os.File, path string, info ImageInfo, rep reply, sum hash.Hash, cfg CopyConfig) (int64, error) {
	off, why := int64(0), ""
	switch {
	case rep.value > uint64(info.Size):
		why = fmt.Sprintf("the backup offered to resume at offset %d, beyond the image's %d bytes", rep.value, info.Size)
	case !validSHA256(rep.msg):
		why = fmt.Sprintf("the backup's resume offer at offset %d has no valid sha256", rep.value)
	default:
		n := int64(rep.value)
		if err := hashPrefix(ctx, f, n, sum); err != nil {
			return 0, fmt.Errorf("%w: hash the first %d bytes of %s: %w", ErrLocalIO, n, path, err)
		}
		if got := hex.EncodeToString(sum.Sum(nil)); got == rep.msg {
			off = n
		} else {
			why = fmt.Sprintf("the backup's partial copy differs from the image in its first %d bytes (sha256 %s, the image's %s)", n, rep.msg, got)
		}
	}
	if off == 0 {
		sum.Reset()
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return 0, fmt.Errorf("%w: seek %s: %w", ErrLocalIO, path, err)
		}
		cfg.Logger.Warn("disk copy restarts from 0", "image", path, "why", why)
	} else {
		cfg.Logger.Info("disk copy resumes", "image", path, "offset", off, "remaining", info.Size-off)
	}
	if err := g.arm(dlWrite, false); err != nil {
		return 0, g.ioErr("send resume answer", err)
	}
	if _, err := conn.Write(encodeReply(reply{typ: replyResume, value: uint64(off), msg: why})); err != nil {
		return 0, g.ioErr("send resume answer", err)
	}
	return off, nil
}

// hashPrefix feeds the next n bytes of f to h, checking ctx between blocks
// (a prefix may be gigabytes).
func hashPrefix(ctx context.Context, f io.Reader, n int64, h hash.Hash) error {
	buf := make([]byte, 1<<20)
	for n > 0 {
		if err := ctx.Err(); err != nil {
			return err
		}
		b := buf[:min(int64(len(buf)), n)]
		if _, err := io.ReadFull(f, b); err != nil {
			return err
		}
		h.Write(b)
		n -= int64(len(b))
	}
	return nil
}

// verdictGrace is how long a sender whose write failed waits for the
// receiver's verdict before giving up on it.
const verdictGrace = time.Second

type verdictResult struct {
	rep  reply
	err  error // reading the reply failed
	peer error // the reply was a refusal or failure
}

// sendAbort tells the receiver, best effort, that the sender gives up.
func sendAbort(g *connGuard, conn net.Conn, msg string) {
	msg = truncateMsg(msg)
	b := make([]byte, frameHeaderLen+len(msg))
	binary.BigEndian.PutUint32(b[0:], abortMarker)
	binary.BigEndian.PutUint32(b[4:], uint32(len(msg)))
	copy(b[frameHeaderLen:], msg)
	if g.arm(dlWrite, false) == nil {
		_, _ = conn.Write(b)
	}
}
