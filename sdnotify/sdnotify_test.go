package sdnotify

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeManager is a notify socket like systemd's: it receives datagrams.
type fakeManager struct {
	conn *net.UnixConn
}

func listen(t *testing.T, addr string) fakeManager {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return fakeManager{conn: c}
}

func (m fakeManager) recv(t *testing.T) string {
	t.Helper()
	buf := make([]byte, 4096)
	_ = m.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := m.conn.Read(buf)
	if err != nil {
		t.Fatalf("no datagram: %v", err)
	}
	return string(buf[:n])
}

func TestNotifyPathSocket(t *testing.T) {
	p := filepath.Join(t.TempDir(), "notify")
	m := listen(t, p)
	t.Setenv(EnvSocket, p)
	n, err := FromEnv()
	if err != nil || n == nil {
		t.Fatalf("FromEnv: %v %v", n, err)
	}
	if os.Getenv(EnvSocket) != "" {
		t.Error("FromEnv must unset NOTIFY_SOCKET so children do not inherit it")
	}
	if err := n.Notify("READY=1", "STATUS=serving\nsecond line"); err != nil {
		t.Fatal(err)
	}
	if got := m.recv(t); got != "READY=1\nSTATUS=serving second line\n" {
		t.Fatalf("datagram %q", got)
	}
	if err := n.Notify("STOPPING=1"); err != nil {
		t.Fatal(err)
	}
	if got := m.recv(t); got != "STOPPING=1\n" {
		t.Fatalf("datagram %q", got)
	}
}

func TestNotifyAbstractSocket(t *testing.T) {
	name := fmt.Sprintf("@ftvmd-sdnotify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	m := listen(t, name)
	n, err := New(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Notify("READY=1"); err != nil {
		t.Fatal(err)
	}
	if got := m.recv(t); got != "READY=1\n" {
		t.Fatalf("datagram %q", got)
	}
	// The '@' is the abstract namespace, not a file of that name.
	if _, err := os.Stat(name); err == nil {
		t.Errorf("a file %s exists: the name was taken as a path", name)
	}
}

func TestNoSocket(t *testing.T) {
	t.Setenv(EnvSocket, "")
	n, err := FromEnv()
	if n != nil || err != nil {
		t.Fatalf("FromEnv without NOTIFY_SOCKET: %v %v", n, err)
	}
	if err := n.Notify("READY=1"); err != nil {
		t.Fatalf("a nil notifier must send nothing and succeed: %v", err)
	}
}

func TestBadAddress(t *testing.T) {
	for _, a := range []string{"vsock:2:1234", "relative/path", "@"} {
		if _, err := New(a); !errors.Is(err, ErrAddress) {
			t.Errorf("New(%q): err %v, want ErrAddress", a, err)
		}
	}
	// A socket nobody listens on is an error the caller can log.
	n, err := New(filepath.Join(t.TempDir(), "gone"))
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Notify("READY=1"); err == nil || !strings.Contains(err.Error(), "sdnotify") {
		t.Fatalf("send to a missing socket: %v", err)
	}
}
