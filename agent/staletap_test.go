package agent

import (
	"context"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ftvmd/ftvmd/netbuf"
)

// A tap left by an agent that was killed (SIGKILL of every process of the host, a
// power loss) must not stop this VM from starting on this host again, nor a later
// go-live here (chaos run 3: "go live under epoch 15: create-tap: link already
// exists"). The primary's createTap replaces it; a link of the same name that is
// not a tap is still refused.
func TestCreateTapReplacesAStaleTap(t *testing.T) {
	a := testAgent(t, "hosta", "")
	a.cfg.Bridge = "ftbr-stale"
	p := testPrimary(t, a, "")
	inFreshNetns(t, func() error {
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
	})
}
