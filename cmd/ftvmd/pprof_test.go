package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A relative --debug-pprof path is a unix socket under the state dir that serves a
// real CPU profile (gzip'd protobuf), and the server ends with its context.
func TestDebugPprofUnixSocket(t *testing.T) {
	dir := t.TempDir()
	// A stale socket of an agent that died is replaced.
	stale, err := net.Listen("unix", filepath.Join(dir, "pprof.sock"))
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	ln, err := pprofListen("pprof.sock", dir)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "pprof.sock")
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: %v %v", path, fi, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); servePprof(ctx, ln, slog.New(slog.DiscardHandler)) }()

	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}}
	resp, err := c.Get("http://agent/debug/pprof/profile?seconds=1")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("profile: %d %v", resp.StatusCode, err)
	}
	if !bytes.HasPrefix(body, []byte{0x1f, 0x8b}) {
		t.Fatalf("profile is not gzip'd: % x", body[:min(len(body), 8)])
	}
	cancel()
	<-done
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestDebugPprofRefuses(t *testing.T) {
	dir := t.TempDir()
	for _, addr := range []string{"0.0.0.0:6060", "10.0.0.1:6060", ":6060"} {
		if ln, err := pprofListen(addr, dir); err == nil || !strings.Contains(err.Error(), "loopback") {
			if ln != nil {
				ln.Close()
			}
			t.Errorf("%s: want a loopback error, got %v", addr, err)
		}
	}
	// A file that is not a socket is not removed.
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := pprofListen(p, dir); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("want not-a-socket error, got %v", err)
	}
	ln, err := pprofListen("127.0.0.1:0", dir)
	if err != nil {
		t.Fatalf("loopback: %v", err)
	}
	ln.Close()
}
