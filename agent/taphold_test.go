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

// holdTables are the names of the ip and ip6 tables of the namespace, as the
// kernel lists them ("ip ftvmd-hold-<tap>"), and of those whose hold chain has a
// rule (queueing: the tap's frames enter the queue).
func holdTables() (tables, queueing []string, err error) {
	c, err := nftables.New()
	if err != nil {
		return nil, nil, err
	}
	ts, err := c.ListTables()
	if err != nil {
		return nil, nil, err
	}
	for _, t := range ts {
		fam := map[nftables.TableFamily]string{nftables.TableFamilyIPv4: "ip", nftables.TableFamilyIPv6: "ip6"}[t.Family]
		tables = append(tables, fam+" "+t.Name)
		rules, err := c.GetRules(t, &nftables.Chain{Name: "hold", Table: t})
		if err != nil {
			return nil, nil, err
		}
		if len(rules) > 0 {
			queueing = append(queueing, fam+" "+t.Name)
		}
	}
	slices.Sort(tables)
	slices.Sort(queueing)
	return tables, queueing, nil
}

// On the tap path an unprotected VM (ftvmd run, a survivor after a failover) gets
// a kernel hold whose queue no rule feeds (stale tables of its tap's name are
// removed): its frames cross without the agent.
// Protecting it while it runs installs the rules (Protect), losing the backup
// takes the rule out of the tables' chains (frames queued then stay for their
// verdicts: deleting the tables would drop them), a re-protection puts it back,
// and the VM's teardown removes the tables.
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
		check := func(when string, tables, queueing bool, mode outputrule.Mode) error {
			got, q, err := holdTables()
			if err != nil {
				return err
			}
			if tables != slices.Equal(got, want) || (!tables && len(got) != 0) {
				return fmt.Errorf("%s: tables %v, want installed %v", when, got, tables)
			}
			if queueing != slices.Equal(q, want) || (!queueing && len(q) != 0) {
				return fmt.Errorf("%s: tables queueing %v, want queueing %v", when, q, queueing)
			}
			if m := h.Stats().Rule.Mode; m != mode {
				return fmt.Errorf("%s: mode %v, want %v", when, m, mode)
			}
			return nil
		}
		if err := check("unprotected", false, false, outputrule.Unprotected); err != nil {
			return err
		}
		if err := p.out.Protect(); err != nil {
			return err
		}
		if err := check("protected", true, true, outputrule.Protected); err != nil {
			return err
		}
		p.out.SetMode(outputrule.Unprotected) // the lifecycle's ReleaseOutput
		if err := check("backup lost", true, false, outputrule.Unprotected); err != nil {
			return err
		}
		if err := p.out.Protect(); err != nil {
			return err
		}
		if err := check("protected again", true, true, outputrule.Protected); err != nil {
			return err
		}
		p.runCleanups()
		got, _, err := holdTables()
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
