package netbuf

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRaiseDgramQueueFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "max_dgram_qlen")
	if err := os.WriteFile(path, []byte("10\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	read := func() string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if err := raiseDgramQueue(path, DefaultDgramQueue); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "512" {
		t.Fatalf("after raise: %q", got)
	}
	if err := os.WriteFile(path, []byte("1000\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := raiseDgramQueue(path, DefaultDgramQueue); err != nil {
		t.Fatal(err)
	}
	if got := read(); got != "1000" {
		t.Fatalf("a higher value was lowered: %q", got)
	}
	for _, n := range []int{0, -1, 1 << 40} {
		if err := raiseDgramQueue(path, n); !errors.Is(err, ErrDgramQueue) {
			t.Errorf("raise to %d: %v", n, err)
		}
	}
	if err := os.WriteFile(path, []byte("ten\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := raiseDgramQueue(path, 512); !errors.Is(err, ErrDgramQueue) {
		t.Errorf("garbage: %v", err)
	}
	err := raiseDgramQueue(filepath.Join(t.TempDir(), "missing"), 512)
	if !errors.Is(err, ErrDgramQueue) || !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestRaiseDgramQueueNotWritable(t *testing.T) {
	// A read-only sysctl (mode 0444) refuses writes even to root.
	const ro = "/proc/sys/kernel/ngroups_max"
	cur, err := readIntFile(ro)
	if err != nil {
		t.Skipf("no %s: %v", ro, err)
	}
	err = raiseDgramQueue(ro, cur+1)
	if !errors.Is(err, ErrDgramQueue) || !errors.Is(err, fs.ErrPermission) {
		t.Fatalf("raise a read-only sysctl: %v", err)
	}
	t.Logf("%v", err)
}

// dgramBacklog counts the datagrams a fresh unix datagram socket, created in
// the calling thread's network namespace, queues from an unconnected sender
// before the sender gets EAGAIN.
func dgramBacklog(dir string) (int, error) {
	rfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(rfd)
	path := filepath.Join(dir, "backlog.sock")
	_ = os.Remove(path)
	if err := unix.Bind(rfd, &unix.SockaddrUnix{Name: path}); err != nil {
		return 0, err
	}
	sfd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(sfd)
	// So that the sender's buffer is not what runs out first.
	if err := unix.SetsockoptInt(sfd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 64<<20); err != nil {
		return 0, err
	}
	for n := 0; n < 100000; n++ {
		err := unix.Sendto(sfd, []byte{1}, unix.MSG_DONTWAIT, &unix.SockaddrUnix{Name: path})
		if errors.Is(err, unix.EAGAIN) {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
	return 0, errors.New("backlog never filled")
}

func TestRaiseDgramQueueInNetns(t *testing.T) {
	requireRoot(t)
	hostBefore, err := readIntFile(dgramQlenPath)
	if err != nil {
		t.Fatal(err)
	}
	ns := newNetns(t)
	dir := t.TempDir()
	var before, after, backlogBefore, backlogAfter int
	err = ns.do(func() (err error) {
		if before, err = readIntFile(dgramQlenPath); err != nil {
			return err
		}
		if backlogBefore, err = dgramBacklog(dir); err != nil {
			return err
		}
		if err := RaiseDgramQueue(DefaultDgramQueue); err != nil {
			return err
		}
		if after, err = readIntFile(dgramQlenPath); err != nil {
			return err
		}
		backlogAfter, err = dgramBacklog(dir)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fresh netns: max_dgram_qlen %d -> %d, datagrams queued %d -> %d", before, after, backlogBefore, backlogAfter)
	want := max(before, DefaultDgramQueue)
	if after != want {
		t.Errorf("max_dgram_qlen %d after raise, want %d", after, want)
	}
	// The kernel refuses a datagram once more than qlen are queued.
	if backlogBefore != before+1 || backlogAfter != after+1 {
		t.Errorf("datagrams queued: %d before, %d after; want %d, %d", backlogBefore, backlogAfter, before+1, after+1)
	}
	hostAfter, err := readIntFile(dgramQlenPath)
	if err != nil {
		t.Fatal(err)
	}
	if hostAfter != hostBefore {
		t.Errorf("host namespace's max_dgram_qlen changed: %d -> %d", hostBefore, hostAfter)
	}
}
