// Package nfq speaks the kernel's NFQUEUE protocol (nfnetlink_queue) for one
// queue. The agent's tap data path uses it to hold a guest's frames inside the
// kernel: a netfilter rule sends each frame to the queue, the kernel keeps the
// frame and tells the queue's reader only its id and length (metadata-only
// copy mode, so no payload crosses into user space), and the reader releases
// the held frames in order with one batch verdict, "accept every frame up to
// id N". It is the in-kernel hold that a plug qdisc (sch_plug) would give,
// for kernels built without it.
//
// This file encodes and decodes the messages; conn.go owns the socket.
package nfq

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Protocol numbers from linux/netfilter/nfnetlink_queue.h and
// linux/netfilter/nfnetlink.h.
const (
	subsysQueue = 3 // NFNL_SUBSYS_QUEUE

	msgPacket       = 0 // NFQNL_MSG_PACKET
	msgVerdict      = 1 // NFQNL_MSG_VERDICT
	msgConfig       = 2 // NFQNL_MSG_CONFIG
	msgVerdictBatch = 3 // NFQNL_MSG_VERDICT_BATCH

	attrPacketHdr  = 1  // NFQA_PACKET_HDR
	attrVerdictHdr = 2  // NFQA_VERDICT_HDR
	attrPayload    = 10 // NFQA_PAYLOAD
	attrCapLen     = 13 // NFQA_CAP_LEN: the packet's length when the copy is shorter
	attrSkbInfo    = 14 // NFQA_SKB_INFO

	cfgCmd    = 1 // NFQA_CFG_CMD
	cfgParams = 2 // NFQA_CFG_PARAMS
	cfgMaxLen = 3 // NFQA_CFG_QUEUE_MAXLEN
	cfgMask   = 4 // NFQA_CFG_MASK
	cfgFlags  = 5 // NFQA_CFG_FLAGS

	cmdBind = 1 // NFQNL_CFG_CMD_BIND

	copyMeta = 1 // NFQNL_COPY_META: ids and lengths, no payload

	// flagGSO (NFQA_CFG_F_GSO) lets the kernel queue a GSO packet whole
	// instead of segmenting it first: one id per 64 KiB the guest sent with
	// TSO rather than one per MTU-sized segment. NFQA_CFG_F_FAIL_OPEN is
	// never set: a full queue must drop, never let a frame pass unheld.
	flagGSO = 1 << 2

	skbGSO = 1 << 1 // NFQA_SKB_GSO in NFQA_SKB_INFO

	nlaTypeMask = 0x3fff // strips NLA_F_NESTED and NLA_F_NET_BYTEORDER

	nlmsgHdrLen = unix.SizeofNlMsghdr // 16
	nfgenHdrLen = 4                   // struct nfgenmsg
)

// Verdict is a netfilter verdict for queued frames.
type Verdict uint32

// Verdicts.
const (
	Drop   Verdict = 0 // NF_DROP
	Accept Verdict = 1 // NF_ACCEPT
)

func (v Verdict) String() string {
	switch v {
	case Drop:
		return "drop"
	case Accept:
		return "accept"
	default:
		return fmt.Sprintf("verdict(%d)", uint32(v))
	}
}

// ErrMalformed: bytes from the socket that are not a well-formed message.
var ErrMalformed = errors.New("nfq: malformed netlink message")

// Packet is what the kernel tells about one frame it holds.
type Packet struct {
	ID      uint32 // the queue's id for the frame; ids grow by one per queued frame
	HWProto uint16 // Ethernet protocol (0x0800, 0x86dd)
	Hook    uint8  // netfilter hook the frame was queued at
	Len     int    // the frame's length (a GSO frame's whole length)
	GSO     bool   // the frame is a GSO super-frame the kernel did not segment
}

// Kind says what a Message is.
type Kind int

// Message kinds.
const (
	KindPacket Kind = iota + 1
	// KindAck is the kernel's answer to a request: Errno 0 is success.
	KindAck
	// KindOther is any other message (ignored by callers).
	KindOther
)

// Message is one netlink message read from the queue's socket.
type Message struct {
	Kind   Kind
	Packet Packet     // KindPacket
	Errno  unix.Errno // KindAck: 0 on success
	Seq    uint32     // the request's sequence number (KindAck)
}

// attr appends one netlink attribute, padded to 4 bytes.
func attr(b []byte, typ uint16, data []byte) []byte {
	l := 4 + len(data)
	b = binary.NativeEndian.AppendUint16(b, uint16(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = append(b, data...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// message builds one nfnetlink_queue request for queue: nlmsghdr, nfgenmsg
// (family AF_UNSPEC, version 0, the queue number big-endian), attributes.
func message(typ uint16, flags uint16, seq uint32, queue uint16, attrs []byte) []byte {
	b := make([]byte, nlmsgHdrLen, nlmsgHdrLen+nfgenHdrLen+len(attrs))
	binary.NativeEndian.PutUint32(b[0:], uint32(nlmsgHdrLen+nfgenHdrLen+len(attrs)))
	binary.NativeEndian.PutUint16(b[4:], subsysQueue<<8|typ)
	binary.NativeEndian.PutUint16(b[6:], unix.NLM_F_REQUEST|flags)
	binary.NativeEndian.PutUint32(b[8:], seq)
	// b[12:16], the sender's port id, stays 0: the kernel fills it in.
	b = append(b, unix.AF_UNSPEC, 0)
	b = binary.BigEndian.AppendUint16(b, queue)
	return append(b, attrs...)
}

// bindMsg binds the socket to queue (NFQNL_CFG_CMD_BIND), asking for an ack.
func bindMsg(seq uint32, queue uint16) []byte {
	// struct nfqnl_msg_config_cmd { u8 command; u8 pad; be16 pf; }: pf is
	// unused by BIND.
	return message(msgConfig, unix.NLM_F_ACK, seq, queue, attr(nil, cfgCmd, []byte{cmdBind, 0, 0, 0}))
}

// paramsMsg sets metadata-only copies, the queue's length bound and GSO.
func paramsMsg(seq uint32, queue uint16, maxLen uint32) []byte {
	// struct nfqnl_msg_config_params { be32 copy_range; u8 copy_mode; } packed.
	params := binary.BigEndian.AppendUint32(nil, 0)
	params = append(params, copyMeta)
	a := attr(nil, cfgParams, params)
	a = attr(a, cfgMaxLen, binary.BigEndian.AppendUint32(nil, maxLen))
	a = attr(a, cfgMask, binary.BigEndian.AppendUint32(nil, flagGSO))
	a = attr(a, cfgFlags, binary.BigEndian.AppendUint32(nil, flagGSO))
	return message(msgConfig, unix.NLM_F_ACK, seq, queue, a)
}

// verdictMsg gives v to every frame queued up to and including id (batch), or
// to that one frame. No ack is asked for: the kernel answers only a failure.
func verdictMsg(seq uint32, queue uint16, v Verdict, id uint32, batch bool) []byte {
	// struct nfqnl_msg_verdict_hdr { be32 verdict; be32 id; }
	hdr := binary.BigEndian.AppendUint32(nil, uint32(v))
	hdr = binary.BigEndian.AppendUint32(hdr, id)
	typ := uint16(msgVerdict)
	if batch {
		typ = msgVerdictBatch
	}
	return message(typ, 0, seq, queue, attr(nil, attrVerdictHdr, hdr))
}

// ParseMessages appends the messages in b (one read from the socket) to dst.
func ParseMessages(b []byte, dst []Message) ([]Message, error) {
	for len(b) > 0 {
		if len(b) < nlmsgHdrLen {
			return dst, fmt.Errorf("%w: %d trailing bytes", ErrMalformed, len(b))
		}
		l := int(binary.NativeEndian.Uint32(b[0:]))
		typ := binary.NativeEndian.Uint16(b[4:])
		seq := binary.NativeEndian.Uint32(b[8:])
		if l < nlmsgHdrLen || l > len(b) {
			return dst, fmt.Errorf("%w: length %d with %d bytes left", ErrMalformed, l, len(b))
		}
		body := b[nlmsgHdrLen:l]
		next := (l + 3) &^ 3
		if next > len(b) {
			next = len(b)
		}
		b = b[next:]
		switch {
		case typ == unix.NLMSG_ERROR:
			if len(body) < 4 {
				return dst, fmt.Errorf("%w: short error message", ErrMalformed)
			}
			// The kernel sends the negative errno.
			errno := -int32(binary.NativeEndian.Uint32(body))
			dst = append(dst, Message{Kind: KindAck, Errno: unix.Errno(errno), Seq: seq})
		case typ == subsysQueue<<8|msgPacket:
			p, err := parsePacket(body)
			if err != nil {
				return dst, err
			}
			dst = append(dst, Message{Kind: KindPacket, Packet: p})
		default:
			dst = append(dst, Message{Kind: KindOther, Seq: seq})
		}
	}
	return dst, nil
}

func parsePacket(body []byte) (Packet, error) {
	var p Packet
	if len(body) < nfgenHdrLen {
		return p, fmt.Errorf("%w: packet message without nfgenmsg", ErrMalformed)
	}
	a := body[nfgenHdrLen:]
	haveHdr, haveCapLen := false, false
	for len(a) > 0 {
		if len(a) < 4 {
			return p, fmt.Errorf("%w: %d bytes of attribute", ErrMalformed, len(a))
		}
		l := int(binary.NativeEndian.Uint16(a[0:]))
		typ := binary.NativeEndian.Uint16(a[2:]) & nlaTypeMask
		if l < 4 || l > len(a) {
			return p, fmt.Errorf("%w: attribute %d length %d with %d bytes left", ErrMalformed, typ, l, len(a))
		}
		data := a[4:l]
		switch typ {
		case attrPacketHdr:
			// struct nfqnl_msg_packet_hdr { be32 packet_id; be16 hw_protocol; u8 hook; } packed
			if len(data) < 7 {
				return p, fmt.Errorf("%w: packet header of %d bytes", ErrMalformed, len(data))
			}
			p.ID = binary.BigEndian.Uint32(data[0:])
			p.HWProto = binary.BigEndian.Uint16(data[4:])
			p.Hook = data[6]
			haveHdr = true
		case attrCapLen:
			if len(data) < 4 {
				return p, fmt.Errorf("%w: cap_len of %d bytes", ErrMalformed, len(data))
			}
			p.Len = int(binary.BigEndian.Uint32(data))
			haveCapLen = true
		case attrPayload:
			if !haveCapLen {
				p.Len = len(data)
			}
		case attrSkbInfo:
			if len(data) >= 4 {
				p.GSO = binary.BigEndian.Uint32(data)&skbGSO != 0
			}
		}
		next := (l + 3) &^ 3
		if next > len(a) {
			next = len(a)
		}
		a = a[next:]
	}
	if !haveHdr {
		return p, fmt.Errorf("%w: packet message without a packet header", ErrMalformed)
	}
	return p, nil
}
