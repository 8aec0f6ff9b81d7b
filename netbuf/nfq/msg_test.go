package nfq

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// hdr is a little-endian nlmsghdr (this package builds for little-endian
// hosts' native order; the golden bytes say so).
func hdr(length uint32, typ, flags uint16, seq uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, length)
	b = binary.LittleEndian.AppendUint16(b, typ)
	b = binary.LittleEndian.AppendUint16(b, flags)
	b = binary.LittleEndian.AppendUint32(b, seq)
	return binary.LittleEndian.AppendUint32(b, 0)
}

func join(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func TestEncodeGolden(t *testing.T) {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		t.Skip("golden bytes are for little-endian hosts")
	}
	const req, ack = unix.NLM_F_REQUEST, unix.NLM_F_ACK
	tests := []struct {
		name string
		got  []byte
		want []byte
	}{
		{
			"bind queue 0x0102",
			bindMsg(7, 0x0102),
			join(hdr(28, 0x0302, req|ack, 7), []byte{0, 0, 0x01, 0x02},
				[]byte{8, 0, 1, 0, 1, 0, 0, 0}), // NFQA_CFG_CMD {BIND, pad, pf 0}
		},
		{
			"params: meta copy, maxlen 4096, GSO",
			paramsMsg(8, 5, 4096),
			join(hdr(56, 0x0302, req|ack, 8), []byte{0, 0, 0, 5},
				[]byte{9, 0, 2, 0, 0, 0, 0, 0, 1, 0, 0, 0}, // NFQA_CFG_PARAMS {range 0, META} + pad
				[]byte{8, 0, 3, 0, 0, 0, 0x10, 0},          // NFQA_CFG_QUEUE_MAXLEN 4096 (be32)
				[]byte{8, 0, 4, 0, 0, 0, 0, 4},             // NFQA_CFG_MASK GSO
				[]byte{8, 0, 5, 0, 0, 0, 0, 4}),            // NFQA_CFG_FLAGS GSO
		},
		{
			"batch accept through id 0x01020304",
			verdictMsg(9, 5, Accept, 0x01020304, true),
			join(hdr(32, 0x0303, req, 9), []byte{0, 0, 0, 5},
				[]byte{12, 0, 2, 0, 0, 0, 0, 1, 1, 2, 3, 4}), // NFQA_VERDICT_HDR {NF_ACCEPT, id}
		},
		{
			"single drop of id 3",
			verdictMsg(10, 5, Drop, 3, false),
			join(hdr(32, 0x0301, req, 10), []byte{0, 0, 0, 5},
				[]byte{12, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 3}),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !bytes.Equal(tc.got, tc.want) {
				t.Fatalf("\ngot  % x\nwant % x", tc.got, tc.want)
			}
		})
	}
}

// packetMsg builds a packet message as the kernel sends one in metadata mode.
func packetMsg(id uint32, proto uint16, capLen uint32, skbInfo uint32) []byte {
	var a []byte
	ph := binary.BigEndian.AppendUint32(nil, id)
	ph = binary.BigEndian.AppendUint16(ph, proto)
	ph = append(ph, 0) // hook NF_INET_PRE_ROUTING
	a = attr(a, attrPacketHdr, ph)
	a = attr(a, 5, []byte{0, 0, 0, 9}) // NFQA_IFINDEX_INDEV: ignored
	if capLen > 0 {
		a = attr(a, attrCapLen, binary.BigEndian.AppendUint32(nil, capLen))
	}
	a = attr(a, attrSkbInfo, binary.BigEndian.AppendUint32(nil, skbInfo))
	return message(msgPacket, 0, 0, 5, a)
}

func errorMsg(seq uint32, errno int32) []byte {
	body := binary.NativeEndian.AppendUint32(nil, uint32(-errno))
	body = append(body, make([]byte, 16)...) // the echoed request header
	b := make([]byte, 16)
	binary.NativeEndian.PutUint32(b[0:], uint32(16+len(body)))
	binary.NativeEndian.PutUint16(b[4:], unix.NLMSG_ERROR)
	binary.NativeEndian.PutUint32(b[8:], seq)
	return append(b, body...)
}

func TestParseMessages(t *testing.T) {
	in := join(packetMsg(41, 0x0800, 65226, skbGSO), packetMsg(42, 0x86dd, 0, 0), errorMsg(3, 0), errorMsg(4, int32(unix.ENOENT)))
	msgs, err := ParseMessages(in, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []Message{
		{Kind: KindPacket, Packet: Packet{ID: 41, HWProto: 0x0800, Len: 65226, GSO: true}},
		{Kind: KindPacket, Packet: Packet{ID: 42, HWProto: 0x86dd}},
		{Kind: KindAck, Seq: 3},
		{Kind: KindAck, Seq: 4, Errno: unix.ENOENT},
	}
	if len(msgs) != len(want) {
		t.Fatalf("got %d messages, want %d: %+v", len(msgs), len(want), msgs)
	}
	for i := range want {
		if msgs[i] != want[i] {
			t.Errorf("message %d = %+v, want %+v", i, msgs[i], want[i])
		}
	}
}

func TestParsePayloadLength(t *testing.T) {
	// Without NFQA_CAP_LEN (the copy was whole) the payload's length counts.
	a := attr(nil, attrPacketHdr, []byte{0, 0, 0, 1, 8, 0, 0})
	a = attr(a, attrPayload, make([]byte, 60))
	msgs, err := ParseMessages(message(msgPacket, 0, 0, 1, a), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || msgs[0].Packet.Len != 60 || msgs[0].Packet.ID != 1 {
		t.Fatalf("got %+v", msgs)
	}
}

func TestParseMalformed(t *testing.T) {
	good := packetMsg(1, 0x0800, 100, 0)
	noHdr := message(msgPacket, 0, 0, 1, attr(nil, attrCapLen, []byte{0, 0, 0, 1}))
	badAttr := append([]byte(nil), good...)
	binary.NativeEndian.PutUint16(badAttr[20:], 200) // packet header attribute runs past the end
	shortHdr := message(msgPacket, 0, 0, 1, attr(nil, attrPacketHdr, []byte{0, 0, 0, 1}))
	tests := map[string][]byte{
		"trailing bytes":          append(append([]byte(nil), good...), 1, 2, 3),
		"length past the end":     good[:len(good)-4],
		"length below the header": hdr(8, 0x0300, 0, 0),
		"no packet header":        noHdr,
		"attribute past the end":  badAttr,
		"short packet header":     shortHdr,
		"short error":             join(hdr(18, unix.NLMSG_ERROR, 0, 0), []byte{1, 2}),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseMessages(b, nil); !errors.Is(err, ErrMalformed) {
				t.Fatalf("err = %v, want ErrMalformed", err)
			}
		})
	}
}

func FuzzParseMessages(f *testing.F) {
	f.Add(packetMsg(1, 0x0800, 1500, 0))
	f.Add(errorMsg(1, 2))
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, err := ParseMessages(b, nil)
		if err == nil && len(b) > 0 && len(msgs) == 0 {
			t.Fatal("bytes consumed without a message")
		}
	})
}

// FuzzPacketRoundTrip: packet messages as the kernel sends them (metadata copy,
// with or without NFQA_CAP_LEN and GSO), batched with acks as one read returns
// them, parse back to exactly the ids, protocols, lengths and flags sent, in order.
func FuzzPacketRoundTrip(f *testing.F) {
	f.Add(uint32(41), uint16(0x0800), uint32(65226), uint32(skbGSO), uint8(3), int32(0))
	f.Add(uint32(0xffffffff), uint16(0x86dd), uint32(0), uint32(0), uint8(1), int32(unix.ENOBUFS))
	f.Fuzz(func(t *testing.T, id uint32, proto uint16, capLen, skb uint32, n uint8, errno int32) {
		var in []byte
		var want []Message
		for i := uint32(0); i < uint32(n%16); i++ {
			in = append(in, packetMsg(id+i, proto, capLen+i, skb)...)
			want = append(want, Message{Kind: KindPacket, Packet: Packet{ID: id + i, HWProto: proto, Len: int(capLen + i), GSO: skb&skbGSO != 0}})
			if capLen+i == 0 { // no NFQA_CAP_LEN and no payload: length 0
				want[len(want)-1].Packet.Len = 0
			}
			if i%3 == 1 {
				in = append(in, errorMsg(i, errno)...)
				want = append(want, Message{Kind: KindAck, Seq: i, Errno: unix.Errno(errno)})
			}
		}
		got, err := ParseMessages(in, nil)
		if err != nil || len(got) != len(want) {
			t.Fatalf("parsed %d messages (%v), want %d", len(got), err, len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("message %d: %+v, want %+v", i, got[i], want[i])
			}
		}
	})
}
