package control

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestCallServe(t *testing.T) {
	if testing.Short() {
		t.Skip()
	}
	sock := filepath.Join(t.TempDir(), "a.sock")
	ln, err := Listen(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, ln, func(_ context.Context, r Request) Response {
			if r.Op == "fail" {
				return Response{Error: "nope"}
			}
			return Response{OK: true, Message: r.Op + ":" + r.VM}
		}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	cctx, ccancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer ccancel()
	resp, err := Call(cctx, sock, Request{Op: OpPing, VM: "x"})
	if err != nil || resp.Message != "ping:x" {
		t.Fatalf("resp %+v err %v", resp, err)
	}
	if _, err := Call(cctx, sock, Request{Op: "fail"}); err == nil || err.Error() != "nope" {
		t.Fatalf("want agent error, got %v", err)
	}
	if _, err := Listen(sock); err == nil || !strings.Contains(err.Error(), "already listening") {
		t.Fatalf("second listener: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := Call(cctx, sock, Request{Op: OpPing}); !errors.Is(err, ErrNoAgent) {
		t.Fatalf("want ErrNoAgent, got %v", err)
	}
}
