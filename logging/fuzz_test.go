package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"testing"
	"time"
)

func FuzzReadMessage(f *testing.F) {
	f.Add(AppendFrame(nil, 12, 99, []byte("hello rr log")))
	f.Add(appendAck(nil, wireAck{Offset: 12, Replayed: 5, SentNano: 7}))
	f.Add(appendAck(nil, wireAck{Offset: 12, Replayed: 5, SentNano: 7, HasStall: true, Stall: ReplayStall{For: 3, AtIcount: 5, Beyond: 9, Episodes: 1}}))
	f.Add(appendHeartbeat(nil, time.Unix(1, 2)))
	f.Add(appendReason(nil, MsgBye, "shutdown"))
	f.Add(appendReason(nil, MsgError, "bad \xff utf8"))
	f.Add(AppendMessage(nil, MsgHello, []byte(`{"vm":"x"}`)))
	f.Add(appendConsole(nil, ConsoleMark{Bytes: 4096, CRC: 0xdeadbeef}))
	f.Add(appendNIC(nil, NICDigests{First: 3, At: 4096, Frames: []NICFrame{{Len: 60, Hash: 7}}}))
	f.Add([]byte{byte(MsgFrame), 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{byte(MsgFrame), 0, 0, 0, 24, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0})
	f.Add([]byte("GET / HTTP/1.1\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		for {
			before := r.Len()
			m, err := ReadMessage(r)
			if err != nil {
				if errors.Is(err, io.EOF) && before != 0 {
					t.Fatalf("clean EOF reported mid-stream")
				}
				return
			}
			consumed := before - r.Len()
			if consumed != HeaderSize+len(m.Payload) {
				t.Fatalf("consumed %d bytes for a %d-byte payload", consumed, len(m.Payload))
			}
			// Round trip: re-encoding gives back the input bytes.
			if enc := AppendMessage(nil, m.Type, m.Payload); !bytes.Equal(enc, data[len(data)-before:len(data)-before+consumed]) {
				t.Fatalf("re-encoding differs")
			}
			switch m.Type {
			case MsgFrame:
				if fr, err := DecodeFrame(m.Payload); err == nil {
					if fr.End() < fr.Offset || len(fr.Data) == 0 {
						t.Fatalf("decoded impossible frame %+v", fr)
					}
					if fr.Verify() == nil && !bytes.Equal(AppendFrame(nil, fr.Offset, fr.Icount, fr.Data), AppendMessage(nil, m.Type, m.Payload)) {
						t.Fatal("frame round trip differs")
					}
				} else if !errors.Is(err, ErrProtocol) {
					t.Fatalf("DecodeFrame error %v is not ErrProtocol", err)
				}
			case MsgAck:
				a, err := decodeAck(m.Payload)
				valid := len(m.Payload) == AckSize || len(m.Payload) == AckStallSize
				switch {
				case valid && err != nil:
					t.Fatalf("ack of valid length refused: %v", err)
				case !valid && !errors.Is(err, ErrProtocol):
					t.Fatalf("ack of %d bytes: %v, want ErrProtocol", len(m.Payload), err)
				case err == nil && (a.Stall.For < 0 || a.Stall.Beyond < 0):
					t.Fatalf("decoded negative stall fields %+v", a.Stall)
				}
			case MsgHeartbeat:
				if _, err := decodeHeartbeat(m.Payload); err != nil {
					t.Fatalf("heartbeat of valid length refused: %v", err)
				}
			case MsgBye, MsgError:
				_ = decodeReason(m.Payload)
			case MsgHello, MsgHelloReply:
				var v any
				_ = json.Unmarshal(m.Payload, &v)
			case MsgConsole:
				cm, err := decodeConsole(m.Payload)
				if err != nil {
					t.Fatalf("console mark of valid length refused: %v", err)
				}
				if cm.Bytes < 0 {
					t.Fatalf("decoded negative console length %+v", cm)
				}
				if cm.Bytes < math.MaxInt64 && !bytes.Equal(appendConsole(nil, cm), AppendMessage(nil, m.Type, m.Payload)) {
					t.Fatal("console mark round trip differs")
				}
			case MsgNIC:
				if d, err := DecodeNIC(m.Payload); err == nil {
					if d.At < math.MaxInt64 && !bytes.Equal(appendNIC(nil, d), AppendMessage(nil, m.Type, m.Payload)) {
						t.Fatal("NIC digests round trip differs")
					}
				} else if !errors.Is(err, ErrProtocol) {
					t.Fatalf("DecodeNIC error %v is not ErrProtocol", err)
				}
			default:
				t.Fatalf("ReadMessage accepted unknown type %d", m.Type)
			}
		}
	})
}
