package logging

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"
)

func testLogger(t *testing.T) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.DiscardHandler)
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// waitFor polls cond until it holds, failing the test after limit.
func waitFor(t *testing.T, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// runAsync runs f in a goroutine and returns a channel with its result.
func runAsync(f func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- f() }()
	return ch
}

func waitErr(t *testing.T, ch <-chan error, limit time.Duration, what string) error {
	t.Helper()
	select {
	case err := <-ch:
		return err
	case <-time.After(limit):
		t.Fatalf("%s did not return within %s", what, limit)
		return nil
	}
}

// keyset is a CA with a server and a client key dir.
type keyset struct {
	ca, server, client string
}

func makeKeys(t *testing.T, name string) keyset {
	t.Helper()
	root := t.TempDir()
	k := keyset{
		ca:     filepath.Join(root, "ca"),
		server: filepath.Join(root, "server"),
		client: filepath.Join(root, "client"),
	}
	if err := InitCA(k.ca, name); err != nil {
		t.Fatalf("InitCA: %v", err)
	}
	if err := IssueHost(k.ca, k.server, "backup.test", []net.IP{net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatalf("IssueHost server: %v", err)
	}
	if err := IssueHost(k.ca, k.client, "primary.test", []net.IP{net.IPv4(127, 0, 0, 1)}); err != nil {
		t.Fatalf("IssueHost client: %v", err)
	}
	return k
}

func serverCfg(t *testing.T, dir string) *tls.Config {
	t.Helper()
	c, err := ServerTLS(dir)
	if err != nil {
		t.Fatalf("ServerTLS: %v", err)
	}
	return c
}

func clientCfg(t *testing.T, dir string) *tls.Config {
	t.Helper()
	c, err := ClientTLS(dir, "backup.test")
	if err != nil {
		t.Fatalf("ClientTLS: %v", err)
	}
	return c
}

// tlsDial runs one server handshake on 127.0.0.1 and one client dial. It
// returns both results; on success both conns are TLS 1.3 and verified.
func tlsDial(t *testing.T, scfg, ccfg *tls.Config) (srv, cli net.Conn, serr, cerr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		c   net.Conn
		err error
	}
	sch := make(chan res, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			sch <- res{nil, err}
			return
		}
		tc, err := ServerHandshake(ctx, c, scfg)
		if err != nil {
			sch <- res{nil, err}
			return
		}
		sch <- res{tc, nil}
	}()
	cc, cerr := Dial(ctx, ln.Addr().String(), ccfg, 0)
	r := <-sch
	if cerr == nil {
		cli = cc
	}
	return r.c, cli, r.err, cerr
}

// memPair is a Sender and a Receiver running against each other over one
// MemLink, the setup of most protocol tests.
type memPair struct {
	link         *MemLink
	snd          *Sender
	rcv          *Receiver
	sdone, rdone <-chan error // what each Run returned
	cancel       context.CancelFunc
}

// runMemPair starts a Sender reading src and a Receiver writing sink over a
// fresh MemLink; both run until stop or the test's end. A config without a
// Logger gets the test's.
func runMemPair(t *testing.T, src Source, sc SenderConfig, sink Sink, rc ReceiverConfig) *memPair {
	t.Helper()
	if sc.Logger == nil {
		sc.Logger = testLogger(t)
	}
	if rc.Logger == nil {
		rc.Logger = testLogger(t)
	}
	p := &memPair{link: NewMemLink()}
	p.snd, p.rcv = NewSender(p.link.A(), src, sc), NewReceiver(p.link.B(), sink, rc)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	p.cancel = cancel
	p.sdone = runAsync(func() error { return p.snd.Run(ctx) })
	p.rdone = runAsync(func() error { return p.rcv.Run(ctx) })
	return p
}

// runEmptyPair is runMemPair on two empty MemLogs that start at start.
func runEmptyPair(t *testing.T, start int64, rc ReceiverConfig) *memPair {
	t.Helper()
	rc.StartOffset = start
	return runMemPair(t, NewMemLog(start), SenderConfig{StartOffset: start}, NewMemLog(start), rc)
}

// stop ends both sides and waits for them (5 s each).
func (p *memPair) stop(t *testing.T) {
	t.Helper()
	p.cancel()
	waitErr(t, p.sdone, 5*time.Second, "sender")
	waitErr(t, p.rdone, 5*time.Second, "receiver")
}

// checkRefusedWithoutHandler: a receiver with no handler for what send makes
// the sender send ends with ErrProtocol (a primary sends it only to a backup
// that said it reads it), and the sender ends too.
func checkRefusedWithoutHandler(t *testing.T, handler string, send func(*Sender)) {
	t.Helper()
	p := runEmptyPair(t, 12, ReceiverConfig{})
	send(p.snd)
	if err := waitErr(t, p.rdone, 5*time.Second, "receiver"); !errors.Is(err, ErrProtocol) {
		t.Fatalf("receiver without %s: %v, want %v", handler, err, ErrProtocol)
	}
	waitErr(t, p.sdone, 5*time.Second, "sender")
}
