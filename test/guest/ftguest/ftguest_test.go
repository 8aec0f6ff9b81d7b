package main

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"encoding/hex"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// dial starts s.handle on one end of a net.Pipe and returns the client end.
func dial(t *testing.T, s *server) (net.Conn, *bufio.Reader, chan error) {
	t.Helper()
	cli, srv := net.Pipe()
	done := make(chan error, 1)
	go func() { done <- s.handle(srv); srv.Close() }()
	t.Cleanup(func() { cli.Close() })
	return cli, bufio.NewReader(cli), done
}

func send(t *testing.T, c net.Conn, r *bufio.Reader, req string) string {
	t.Helper()
	if _, err := io.WriteString(c, req+"\n"); err != nil {
		t.Fatalf("write %q: %v", req, err)
	}
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read answer to %q: %v", req, err)
	}
	return strings.TrimSuffix(line, "\n")
}

func TestProtocol(t *testing.T) {
	dir := t.TempDir()
	s := newServer()
	s.counterPath = filepath.Join(dir, "counter")
	s.uptimePath = filepath.Join(dir, "uptime")
	os.WriteFile(s.counterPath, []byte("42\n"), 0o644)
	os.WriteFile(s.uptimePath, []byte("12.34 5.67\n"), 0o644)

	c, r, _ := dial(t, s)
	for _, tc := range []struct{ req, want string }{
		{"ping", "pong"},
		{"seq 1 hi", "ok 1 1 hi"},
		{"seq 7 hello world", "ok 7 2 hello world"},
		{"seq 3", "ok 3 3 "},
		{"seq", "err usage: seq <n> <payload>"},
		{"counter", "counter 42"},
		{"uptime", "uptime 12.34 5.67"},
		{"md5 x", `err md5: bad size "x"`},
		{"bogus", `err unknown command "bogus"`},
		{"ping\r", "pong"},
	} {
		if got := send(t, c, r, tc.req); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.req, got, tc.want)
		}
	}

	// The count is per server (per boot), shared by all connections.
	c2, r2, _ := dial(t, s)
	if got := send(t, c2, r2, "seq 9 x"); got != "ok 9 4 x" {
		t.Errorf("second connection: got %q", got)
	}
}

func TestMD5(t *testing.T) {
	c, r, _ := dial(t, newServer())
	buf := make([]byte, 2<<20)
	pattern(buf, 0)
	sum := md5.Sum(buf)
	want := "md5 " + hex.EncodeToString(sum[:])
	if got := send(t, c, r, "md5 2"); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
	if got := send(t, c, r, "md5 0"); got != "md5 d41d8cd98f00b204e9800998ecf8427e" {
		t.Fatalf("md5 0: got %q", got)
	}
}

func TestGetPut(t *testing.T) {
	c, r, _ := dial(t, newServer())
	const n = 200_000 // not a multiple of the 64 KiB write chunk
	if got := send(t, c, r, fmt.Sprint("get ", n)); got != fmt.Sprint("data ", n) {
		t.Fatalf("get header: %q", got)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, n)
	pattern(want, 0)
	if !bytes.Equal(body, want) {
		t.Fatal("get body differs from pattern")
	}
	// The connection is still in sync after the bulk body.
	if got := send(t, c, r, "ping"); got != "pong" {
		t.Fatalf("after get: %q", got)
	}

	// put: header line, then the raw body in the same write stream.
	payload := bytes.Repeat([]byte("abc\n"), 30_000)
	go func() {
		fmt.Fprintf(c, "put %d\n", len(payload))
		c.Write(payload)
	}()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf("got %d %08x\n", len(payload), crc32.ChecksumIEEE(payload)); line != want {
		t.Fatalf("put: got %q, want %q", line, want)
	}
	if got := send(t, c, r, "ping"); got != "pong" {
		t.Fatalf("after put: %q", got)
	}
}

func TestQuitAndEOF(t *testing.T) {
	c, r, done := dial(t, newServer())
	if got := send(t, c, r, "quit"); got != "bye" {
		t.Fatalf("quit: %q", got)
	}
	if err := <-done; err != nil {
		t.Fatalf("handle after quit: %v", err)
	}

	// A final request without newline is still served, then EOF ends cleanly.
	s := newServer()
	var out bytes.Buffer
	rw := struct {
		io.Reader
		io.Writer
	}{strings.NewReader("seq 1 a\nseq 2 b"), &out}
	if err := s.handle(rw); err != nil {
		t.Fatal(err)
	}
	if out.String() != "ok 1 1 a\nok 2 2 b\n" {
		t.Fatalf("got %q", out.String())
	}
}
