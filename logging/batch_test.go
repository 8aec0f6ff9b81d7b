package logging

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countConn counts the writes that reach the connection.
type countConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// A log channel's message leaves in one write(2) however many TLS records it takes,
// and messages written meanwhile from another goroutine arrive whole and in the
// order of the writes.
func TestBatchWritesOneWritePerMessage(t *testing.T) {
	k := makeKeys(t, "batch CA")
	a, b := net.Pipe()
	cc := &countConn{Conn: a}
	cli := tls.Client(BatchWrites(cc), clientCfg(t, k.client))
	srv := tls.Server(b, serverCfg(t, k.server))
	defer cli.Close()
	defer srv.Close()
	hs := make(chan error, 1)
	go func() { hs <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-hs; err != nil {
		t.Fatal(err)
	}

	const n = 40
	msgs := make(chan Message, 3*n)
	rerr := make(chan error, 1)
	go func() {
		br := bufio.NewReader(srv)
		for i := 0; i < 2*n; i++ {
			m, err := ReadMessage(br)
			if err != nil {
				rerr <- err
				return
			}
			msgs <- m
		}
		rerr <- nil
	}()

	pc := &peerConn{conn: cli, log: discardLogger(), timeout: 10 * time.Second}
	data := make([]byte, 100<<10) // seven records
	for i := range data {
		data[i] = byte(i * 7)
	}
	cc.writes.Store(0)
	frame := AppendFrame(nil, 12, 5, data)
	if err := pc.write(frame); err != nil {
		t.Fatal(err)
	}
	if got := cc.writes.Load(); got != 1 {
		t.Errorf("a %d-byte frame took %d writes, want 1", len(frame), got)
	}

	// Small messages from another goroutine interleave with frames: each message
	// arrives whole, frames in order, heartbeats in order.
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < n; i++ {
			if err := pc.write(appendHeartbeat(nil, time.Unix(0, int64(i+1)))); err != nil {
				t.Error(err)
				return
			}
		}
	})
	for i := 1; i < n; i++ {
		if err := pc.write(AppendFrame(nil, 12+int64(i*len(data)), uint64(i), data)); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	var frames, beats int
	for i := 0; i < 2*n; i++ {
		var m Message
		select {
		case m = <-msgs:
		case <-time.After(10 * time.Second):
			t.Fatalf("after %d messages: %v", i, <-rerr)
		}
		switch m.Type {
		case MsgFrame:
			f, err := DecodeFrame(m.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if err := f.Verify(); err != nil {
				t.Fatal(err)
			}
			if f.Offset != 12+int64(frames*len(data)) || !bytes.Equal(f.Data, data) {
				t.Fatalf("frame %d at %d: out of order or damaged", frames, f.Offset)
			}
			frames++
		case MsgHeartbeat:
			ns, err := decodeHeartbeat(m.Payload)
			if err != nil {
				t.Fatal(err)
			}
			beats++
			if ns.UnixNano() != int64(beats) {
				t.Fatalf("heartbeat %d carries %d", beats, ns.UnixNano())
			}
		default:
			t.Fatalf("unexpected %s", m.Type)
		}
	}
	if frames != n || beats != n {
		t.Fatalf("%d frames, %d heartbeats; want %d each", frames, beats, n)
	}
	if err := <-rerr; err != nil {
		t.Fatal(err)
	}
}

// A write that fails under the batch (the peer is gone) is the message's error.
func TestBatchWritesError(t *testing.T) {
	k := makeKeys(t, "batch CA")
	a, b := net.Pipe()
	cli := tls.Client(BatchWrites(a), clientCfg(t, k.client))
	srv := tls.Server(b, serverCfg(t, k.server))
	hs := make(chan error, 1)
	go func() { hs <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-hs; err != nil {
		t.Fatal(err)
	}
	srv.Close()
	pc := &peerConn{conn: cli, log: discardLogger(), timeout: time.Second}
	if err := pc.write(AppendFrame(nil, 12, 0, make([]byte, 64<<10))); err == nil {
		t.Fatal("a write to a closed peer succeeded")
	}
}

// readMessageInto reuses its buffer across messages, growing it for a larger one,
// and refuses an oversized length before reading or allocating.
func TestReadMessageIntoReuses(t *testing.T) {
	var wire []byte
	small, large := bytes.Repeat([]byte{1}, 100), bytes.Repeat([]byte{2}, 5000)
	wire = AppendFrame(wire, 12, 0, large)
	wire = AppendFrame(wire, 12+5000, 0, small)
	r := bytes.NewReader(wire)
	m1, buf, err := readMessageInto(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	f1, err := DecodeFrame(m1.Payload)
	if err != nil || !bytes.Equal(f1.Data, large) {
		t.Fatalf("first frame: %v", err)
	}
	m2, buf2, err := readMessageInto(r, buf)
	if err != nil {
		t.Fatal(err)
	}
	if &buf2[0] != &buf[0] {
		t.Error("a smaller message did not reuse the buffer")
	}
	f2, err := DecodeFrame(m2.Payload)
	if err != nil || !bytes.Equal(f2.Data, small) || f2.Offset != 12+5000 {
		t.Fatalf("second frame: %+v %v", f2.Offset, err)
	}
	huge := appendHeader(nil, MsgFrame, MaxFrameData+FrameHeaderSize+1)
	if _, b, err := readMessageInto(bytes.NewReader(huge), buf2); !errors.Is(err, ErrTooLarge) || &b[0] != &buf2[0] {
		t.Fatalf("oversized frame: %v", err)
	}
}
