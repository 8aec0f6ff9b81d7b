package disk

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Wire format of the image copy (all integers big-endian); see docs/disk-copy.md.
//
//	sender   -> receiver  header:  "FTVMDIMG" u16 version=1 u16 flags u32 jsonLen  JSON(ImageInfo)
//	receiver -> sender    reply:   accept (value = resume offset, msg = hex sha256 of that
//	                               prefix; non-zero only if flags has flagResume) or refuse
//	sender   -> receiver  reply:   resume (value = the offered offset, or 0 to restart with
//	                               msg = why), only after a non-zero offer
//	sender   -> receiver  frames:  [u32 len][u32 crc32c][data]   1 <= len <= 16 MiB
//	                      trailer: [u32 0][u32 crc32c(body)] body = u64 total, [32]byte sha256
//	                      abort:   [u32 0xFFFFFFFF][u32 msgLen][msg]
//	receiver -> sender    reply:   ok (value = bytes written) or fail
//
// reply: "FTVR" u8 type u8 code u16 0 u64 value u32 msgLen msg (msgLen <= 4096).
const (
	headerMagic = "FTVMDIMG"
	wireVersion = 1
	// flagResume: the sender can resume (it reads an offer in the accept and
	// answers with a resume reply). A receiver that does not know the flag
	// ignores it and offers 0; one that does offers a prefix only when the flag
	// is set, so either side may be older than the other.
	flagResume     = 1
	headerFixedLen = 16
	maxHeaderJSON  = 64 << 10

	frameHeaderLen = 8
	trailerBodyLen = 8 + 32
	abortMarker    = 0xFFFFFFFF

	replyMagic    = "FTVR"
	replyFixedLen = 20
	maxReplyMsg   = 4096
)

type replyType uint8

const (
	replyAccept replyType = 1
	replyRefuse replyType = 2
	replyOK     replyType = 3
	replyFail   replyType = 4
	// replyResume goes from sender to receiver: its answer to a resume offer.
	replyResume replyType = 5
)

// Reason codes of refuse and fail replies.
type replyCode uint8

const (
	codeNone     replyCode = 0
	codeNoSpace  replyCode = 1
	codeChecksum replyCode = 2
	codeProtocol replyCode = 3
	codeIO       replyCode = 4
)

func (c replyCode) sentinel() error {
	switch c {
	case codeNoSpace:
		return ErrNoSpace
	case codeChecksum:
		return ErrChecksum
	case codeProtocol:
		return ErrProtocol
	case codeIO:
		return ErrLocalIO
	}
	return nil
}

// codeOf picks the reply code for a receiver-side error.
func codeOf(err error) replyCode {
	switch {
	case errors.Is(err, ErrNoSpace):
		return codeNoSpace
	case errors.Is(err, ErrChecksum):
		return codeChecksum
	case errors.Is(err, ErrProtocol):
		return codeProtocol
	case errors.Is(err, ErrLocalIO):
		return codeIO
	}
	return codeNone
}

type reply struct {
	typ   replyType
	code  replyCode
	value uint64
	msg   string
}

// peerErr is the sender-side error for a refuse or fail reply.
func (r reply) peerErr() error {
	if s := r.code.sentinel(); s != nil {
		// The receiver's message starts with the sentinel's text: say it once.
		return fmt.Errorf("%w: %w: %s", ErrPeerRefused, s, strings.TrimPrefix(r.msg, s.Error()+": "))
	}
	return fmt.Errorf("%w: %s", ErrPeerRefused, r.msg)
}

func truncateMsg(s string) string {
	if len(s) > maxReplyMsg {
		return s[:maxReplyMsg]
	}
	return s
}

func encodeReply(r reply) []byte {
	msg := truncateMsg(r.msg)
	b := make([]byte, replyFixedLen+len(msg))
	copy(b, replyMagic)
	b[4] = byte(r.typ)
	b[5] = byte(r.code)
	binary.BigEndian.PutUint64(b[8:], r.value)
	binary.BigEndian.PutUint32(b[16:], uint32(len(msg)))
	copy(b[replyFixedLen:], msg)
	return b
}

// readReply reads one reply; a malformed one is ErrProtocol, an IO failure is
// returned as is (the caller classifies it).
func readReply(r io.Reader) (reply, error) {
	var b [replyFixedLen]byte
	if _, err := io.ReadFull(r, b[:]); err != nil {
		return reply{}, err
	}
	if string(b[:4]) != replyMagic {
		return reply{}, fmt.Errorf("%w: reply does not start with %q (got %q)", ErrProtocol, replyMagic, b[:4])
	}
	rep := reply{typ: replyType(b[4]), code: replyCode(b[5]), value: binary.BigEndian.Uint64(b[8:])}
	if rep.typ < replyAccept || rep.typ > replyResume {
		return reply{}, fmt.Errorf("%w: unknown reply type %d", ErrProtocol, b[4])
	}
	n := binary.BigEndian.Uint32(b[16:])
	if n > maxReplyMsg {
		return reply{}, fmt.Errorf("%w: reply message of %d bytes exceeds %d", ErrProtocol, n, maxReplyMsg)
	}
	if n > 0 {
		msg := make([]byte, n)
		if _, err := io.ReadFull(r, msg); err != nil {
			return reply{}, err
		}
		rep.msg = string(msg)
	}
	return rep, nil
}
