package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/vmspec"
)

// bufConn is a net.Conn whose reads come from a buffer (then EOF, as from a client
// that sent its request and shut its side) and whose writes are kept.
type bufConn struct {
	r io.Reader
	w bytes.Buffer
}

func (c *bufConn) Read(p []byte) (int, error)         { return c.r.Read(p) }
func (c *bufConn) Write(p []byte) (int, error)        { return c.w.Write(p) }
func (c *bufConn) Close() error                       { return nil }
func (c *bufConn) LocalAddr() net.Addr                { return &net.UnixAddr{Name: "agent", Net: "unix"} }
func (c *bufConn) RemoteAddr() net.Addr               { return &net.UnixAddr{Name: "cli", Net: "unix"} }
func (c *bufConn) SetDeadline(t time.Time) error      { return nil }
func (c *bufConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *bufConn) SetWriteDeadline(t time.Time) error { return nil }

// FuzzServe: whatever a client writes on the control socket, the agent answers it
// with exactly one JSON response and nothing else; a request that does not decode
// never reaches the handler and gets a "bad request" error; one that does reaches it
// as what the client meant (the request encodes back to itself), and the handler's
// answer reaches the client unchanged.
func FuzzServe(f *testing.F) {
	shift := 2
	for _, r := range []Request{
		{Op: OpPing},
		{Op: OpProtect, VM: "vm1", Backup: "10.0.0.2:7800", KeepDiskCopy: true},
		{Op: OpDefine, Spec: &vmspec.Spec{Name: "vm1", MemoryMB: 256, Kernel: "/k", Initrd: "/i", MAC: "52:54:00:12:34:56", IcountShift: &shift}},
		{Op: OpTestAckDelay, VM: "vm1", AckDelayMS: 200},
	} {
		b, _ := json.Marshal(r)
		f.Add(b)
	}
	f.Add([]byte(`{"op":"status"}{"op":"stop"}`))
	f.Add([]byte(`{"op":"define","spec":{"name":"x","bogus":1}}`))
	f.Add([]byte(`{"op":`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"op":"status","ack_delay_ms":-1}`))
	f.Add([]byte("\xff\xfe"))
	log := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, in []byte) {
		var got *Request
		handler := func(_ context.Context, r Request) Response {
			got = &r
			lag := float64(r.AckDelayMS) / 3
			if r.AckDelayMS < 0 {
				lag = math.Inf(-1) // an answer JSON cannot hold: the agent must still answer
			}
			st := VMStatus{Name: r.VM, Role: "primary", State: "protected", Peer: r.Backup, LagMS: lag,
				StartedAt: time.Unix(int64(r.AckDelayMS), 0).UTC(), AddedDelayHist: []uint64{1, uint64(len(r.Op))}}
			return Response{OK: r.Op != "", Message: r.Op, Host: r.Backup, VMs: []VMStatus{st}}
		}
		c := &bufConn{r: bytes.NewReader(in)}
		serveConn(context.Background(), c, handler, log)

		out := c.w.Bytes()
		dec := json.NewDecoder(bytes.NewReader(out))
		var resp Response
		if err := dec.Decode(&resp); err != nil {
			t.Fatalf("response %q does not decode: %v", out, err)
		}
		if rest, _ := io.ReadAll(dec.Buffered()); strings.TrimSpace(string(rest)) != "" || dec.More() {
			t.Fatalf("more than one response: %q", out)
		}
		var first Request
		decodes := json.NewDecoder(bytes.NewReader(in)).Decode(&first) == nil
		switch {
		case !decodes && got != nil:
			t.Fatalf("handler called for a request that does not decode: %q", in)
		case !decodes:
			if resp.OK || !strings.HasPrefix(resp.Error, "bad request") {
				t.Fatalf("undecodable request answered %+v", resp)
			}
			return
		case got == nil:
			t.Fatalf("a request that decodes never reached the handler: %q", in)
		}
		if !reflect.DeepEqual(*got, first) {
			t.Fatalf("handler got %+v, the client sent %+v", *got, first)
		}
		b, err := json.Marshal(*got)
		if err != nil {
			t.Fatalf("request %+v does not encode: %v", *got, err)
		}
		var back Request
		if err := json.Unmarshal(b, &back); err != nil || !reflect.DeepEqual(back, *got) {
			t.Fatalf("request round trip: %+v (%v), want %+v", back, err, *got)
		}
		if got.AckDelayMS < 0 {
			if resp.OK || !strings.Contains(resp.Error, "cannot encode") {
				t.Fatalf("an unencodable answer reached the client as %+v", resp)
			}
			return
		}
		if want := handler(context.Background(), *got); !reflect.DeepEqual(resp, want) {
			t.Fatalf("client got %+v, the handler answered %+v", resp, want)
		}
	})
}

// FuzzCall: whatever an agent (or whatever else listens on the socket) answers, the
// CLI returns a response only when it says OK, an error otherwise, and never waits
// past its deadline.
func FuzzCall(f *testing.F) {
	f.Add([]byte(`{"ok":true,"message":"pong","vms":[{"name":"vm1","role":"primary","started_at":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"ok":false,"error":"no such VM"}`))
	f.Add([]byte(`{"ok":false}`))
	f.Add([]byte(`{"ok":true`))
	f.Add([]byte(`{"ok":"yes"}`))
	f.Add([]byte{})
	sock := filepath.Join(f.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	answers := make(chan []byte)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.ReadAll(io.LimitReader(c, 0)) // the request is not read: the answer goes first
			_, _ = c.Write(<-answers)
			c.Close()
		}
	}()
	f.Fuzz(func(t *testing.T, answer []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done := make(chan struct{})
		var resp Response
		var err error
		go func() { resp, err = Call(ctx, sock, Request{Op: OpStatus}); close(done) }()
		answers <- answer
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("Call did not return")
		}
		if errors.Is(err, ErrNoAgent) {
			t.Fatalf("Call: %v", err)
		}
		if err == nil && !resp.OK {
			t.Fatalf("Call returned a response that is not OK without an error: %+v", resp)
		}
		if err != nil && err.Error() == "" {
			t.Fatal("Call returned an empty error")
		}
	})
}
