package agent

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/ftvmd/ftvmd/netbuf"
	"github.com/ftvmd/ftvmd/outputrule"
	"github.com/ftvmd/ftvmd/qemu"
	"github.com/ftvmd/ftvmd/vmspec"
)

// holdTables are the names of the ip and ip6 tables that feed a tap's frames to its
// queue, as the kernel lists them ("ip ftvmd-hold-<tap>").
func holdTables() ([]string, error) {
	c, err := nftables.New()
	if err != nil {
		return nil, err
	}
	ts, err := c.ListTables()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, t := range ts {
		fam := map[nftables.TableFamily]string{nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6"}[t.Family]
		names = append(names, fam+" "+t.Name)
	}
	slices.Sort(names)
	return names, nil
}

// On the tap path an unprotected VM (ftvmd run, a survivor after a failover) gets
// a kernel hold whose queue no rule feeds (stale tables of its tap's name are
// removed): its frames cross without the agent.
// Protecting it while it runs installs the rules (Protect), losing the backup
// removes them, a re-protection installs them again, and the VM's teardown
// removes them.
func TestTapHoldOfAnUnprotectedVM(t *testing.T) {
	inFreshNetns(t, func() error {
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
			return err
		}
		const tap = "ft-vm1"
		if _, err := netbuf.CreateTap(tap, "br0"); err != nil {
			return err
		}
		// Tables a killed agent left for this tap's name (queue 999 has no
		// reader: they would drop the unprotected VM's frames).
		if _, err := netbuf.InstallQueueRules(tap, 999); err != nil {
			return err
		}
		p := &primary{
			a:    &Agent{cfg: Config{CheckInvariant: true}},
			spec: vmspec.Spec{Name: "vm1"},
			log:  slog.New(slog.DiscardHandler),
			tap:  tap, dataPath: DataPathTap,
		}
		if err := p.holdInKernel(); err != nil {
			return err
		}
		h, ok := p.out.(*netbuf.Hold)
		if !ok {
			return fmt.Errorf("output path %T, want a kernel hold", p.out)
		}
		want := []string{"ip ftvmd-hold-" + tap, "ip6 ftvmd-hold-" + tap}
		check := func(when string, installed bool, mode outputrule.Mode) error {
			got, err := holdTables()
			if err != nil {
				return err
			}
			if installed != slices.Equal(got, want) || (!installed && len(got) != 0) {
				return fmt.Errorf("%s: tables %v, want installed %v", when, got, installed)
			}
			if m := h.Stats().Rule.Mode; m != mode {
				return fmt.Errorf("%s: mode %v, want %v", when, m, mode)
			}
			return nil
		}
		if err := check("unprotected", false, outputrule.Unprotected); err != nil {
			return err
		}
		if err := p.out.Protect(); err != nil {
			return err
		}
		if err := check("protected", true, outputrule.Protected); err != nil {
			return err
		}
		p.out.SetMode(outputrule.Unprotected) // the lifecycle's ReleaseOutput
		if err := check("backup lost", false, outputrule.Unprotected); err != nil {
			return err
		}
		if err := p.out.Protect(); err != nil {
			return err
		}
		if err := check("protected again", true, outputrule.Protected); err != nil {
			return err
		}
		p.runCleanups()
		got, err := holdTables()
		if err != nil {
			return err
		}
		if len(got) != 0 {
			return fmt.Errorf("after the teardown: tables %v", got)
		}
		return nil
	})
}

// Protecting a running VM is not the relay path's alone: a tap VM whose output can
// be held may be protected while it runs; one whose kernel queue could not be
// bound says why.
func TestCanProtectRunningOnTap(t *testing.T) {
	a := testAgent(t, "hosta", "")
	a.engine = qemu.Engine{Name: "ftvmd", Binary: "/opt/ftvmd/qemu/current/bin/qemu-system-x86_64", LogStream: true}
	p := testPrimary(t, a, "")
	p.dataPath = DataPathTap
	m, err := qemu.New(qemu.Config{Name: "vm1", SnapshotDrive: filepath.Join(t.TempDir(), "snapshot.qcow2")}, qemu.WithLogger(p.log))
	if err != nil {
		t.Fatal(err)
	}
	p.m = m
	p.vmCtx = t.Context()
	p.out = new(fakeOut)
	if err := p.canProtectRunning(); err != nil {
		t.Fatalf("a tap VM whose output can be held: %v", err)
	}
	p.out = unheldPath{why: "tap ft-vm1: bind queue 7: operation not permitted"}
	if err := p.canProtectRunning(); err == nil || !strings.Contains(err.Error(), "bind queue 7") {
		t.Fatalf("a tap VM whose queue could not be bound: %v", err)
	}
	p.out = new(fakeOut)
	a.engine.LogStream = false
	if err := p.canProtectRunning(); err == nil || !strings.Contains(err.Error(), "needs ftvmd's QEMU build") {
		t.Fatalf("a stock engine: %v", err)
	}
}
