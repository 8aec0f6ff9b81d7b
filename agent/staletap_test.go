package agent

import (
	"context"
	"os"
	"runtime"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/netbuf"
)

// A tap left by an agent that was killed (SIGKILL of every process of the host, a
// power loss) must not stop this VM from starting on this host again, nor a later
// go-live here (chaos run 3: "go live under epoch 15: create-tap: link already
// exists"). The primary's createTap replaces it; a link of the same name that is
// not a tap is still refused.
func TestCreateTapReplacesAStaleTap(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (a network namespace and taps)")
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skip("needs /dev/net/tun")
	}
	a := testAgent(t, "hosta", "")
	a.cfg.Bridge = "ftbr-stale"
	p := testPrimary(t, a, "")
	done := make(chan error, 1)
	go func() {
		// A fresh network namespace on a thread that is never unlocked: it exits
		// with this goroutine, and its links go with it.
		runtime.LockOSThread()
		done <- func() error {
			if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
				return err
			}
			if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: a.cfg.Bridge}}); err != nil {
				return err
			}
			if _, err := netbuf.CreateTap(tapName("vm1"), a.cfg.Bridge); err != nil { // the dead agent's
				return err
			}
			if err := p.createTap(context.Background()); err != nil {
				t.Errorf("createTap over a stale tap: %v", err)
			}
			p.runCleanups()
			if l, _ := netlink.LinkByName(tapName("vm1")); l != nil {
				t.Errorf("the tap is still there after the cleanup")
			}
			// A link of that name that is not a tap is someone else's: refused.
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: tapName("vm1")}, PeerName: "ftveth-peer"}); err != nil {
				return err
			}
			if err := p.createTap(context.Background()); err == nil {
				t.Errorf("createTap over a veth link succeeded")
			}
			return nil
		}()
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
