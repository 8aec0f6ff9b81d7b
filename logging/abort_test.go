package logging

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// A backup that fails locally aborts its receiver: the primary's sender learns why
// (ErrPeerRefused carrying the reason), not a Bye, and not a silent drop.
func TestReceiverAbortTellsThePrimary(t *testing.T) {
	p := runEmptyPair(t, 12, ReceiverConfig{})
	rcv, sdone, rdone := p.rcv, p.sdone, p.rdone
	time.Sleep(20 * time.Millisecond)
	rcv.Abort(errors.New("replaying qemu exited: signal: killed"))
	rcv.Abort(errors.New("a second reason is ignored"))
	rerr := waitErr(t, rdone, 5*time.Second, "receiver")
	if !errors.Is(rerr, ErrAborted) || !strings.Contains(rerr.Error(), "replaying qemu exited") {
		t.Fatalf("receiver: %v, want ErrAborted with the reason", rerr)
	}
	serr := waitErr(t, sdone, 5*time.Second, "sender")
	if !errors.Is(serr, ErrPeerRefused) || !strings.Contains(serr.Error(), "replaying qemu exited") {
		t.Fatalf("sender: %v, want ErrPeerRefused with the backup's reason", serr)
	}
}

// A primary that fails aborts its sender: the backup learns why with an Error (not a
// Bye, which means "stop quietly").
func TestSenderAbortTellsTheBackup(t *testing.T) {
	p := runEmptyPair(t, 12, ReceiverConfig{})
	snd, sdone, rdone := p.snd, p.sdone, p.rdone
	time.Sleep(20 * time.Millisecond)
	snd.Abort(errors.New("qemu exited: signal: killed"))
	serr := waitErr(t, sdone, 5*time.Second, "sender")
	if !errors.Is(serr, ErrAborted) {
		t.Fatalf("sender: %v, want ErrAborted", serr)
	}
	rerr := waitErr(t, rdone, 5*time.Second, "receiver")
	if !errors.Is(rerr, ErrPeerRefused) || errors.Is(rerr, ErrPeerClosed) || !strings.Contains(rerr.Error(), "qemu exited") {
		t.Fatalf("receiver: %v, want ErrPeerRefused with the primary's reason", rerr)
	}
}
