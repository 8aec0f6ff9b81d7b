package agent

import (
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/ftvmd/ftvmd/netbuf"
	"github.com/ftvmd/ftvmd/qemu"
	"github.com/ftvmd/ftvmd/vmspec"
)

// A VM whose spec names a bridge (an imported libvirt domain's) that goes live in
// place on the tap path puts the replay's tap on that bridge, as a fresh start
// would, not on the agent's default bridge.
func TestInPlaceTapJoinsTheSpecBridge(t *testing.T) {
	inFreshNetns(t, func() error {
		for _, br := range []string{"br-spec", "br-agent"} {
			if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: br}}); err != nil {
				return err
			}
		}
		const tap = "ft-replay0"
		if _, err := netbuf.CreateTap(tap, ""); err != nil {
			return err
		}
		p := &primary{
			a:    &Agent{cfg: Config{Bridge: "br-agent"}},
			spec: vmspec.Spec{Name: "vm1", Bridge: "br-spec"},
			live: &liveStart{inPlace: &inPlaceLive{nic: &qemu.NIC{TapName: tap}}},
		}
		if err := p.createTap(t.Context()); err != nil {
			return err
		}
		l, err := netlink.LinkByName(tap)
		if err != nil {
			return err
		}
		br, err := netlink.LinkByName("br-spec")
		if err != nil {
			return err
		}
		if l.Attrs().MasterIndex != br.Attrs().Index {
			t.Errorf("tap %s: master index %d, want br-spec's %d", tap, l.Attrs().MasterIndex, br.Attrs().Index)
		}
		if p.tap != tap {
			t.Errorf("primary's tap %q, want the replay's %q", p.tap, tap)
		}
		return nil
	})
}
