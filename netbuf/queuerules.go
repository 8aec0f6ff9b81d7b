package netbuf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/xt"
	"golang.org/x/sys/unix"
)

// The tap data path holds a guest's frames in the kernel: every IPv4 and IPv6
// frame that enters the host bridge from the VM's tap is sent to an NFQUEUE
// (see package nfq), where it waits for the agent's verdict.
//
// Why NFQUEUE and not the plug qdisc (sch_plug) on an IFB, as Remus does: the
// lab's kernel is built without CONFIG_NET_SCH_PLUG and without module
// support, so sch_plug cannot be had there; NFQUEUE is built in. Its batch
// verdict ("accept every frame up to id N") is the plug's release_one.
//
// Bridged frames reach the ip and ip6 netfilter hooks only through
// br_netfilter (EnableBridgeNetfilter). There the input device is the bridge,
// so the rule matches the bridge port with the xtables physdev match; the
// verdict comes from the xtables NFQUEUE target (nft_compat), since kernels
// like the lab's lack nftables' own queue expression and no longer offer the
// xtables NFQUEUE target to the bridge family. ARP and other non-IP frames are
// not held: they carry no application data and a backup that goes live
// answers for the same MAC and address.

// ErrQueueRules: the kernel refused the rules that feed the queue.
var ErrQueueRules = errors.New("netbuf: cannot install the rules that hold the tap's frames")

// brNetfilter are the per-namespace switches that send bridged frames
// through the ip and ip6 hooks.
var brNetfilter = []string{
	"/proc/sys/net/bridge/bridge-nf-call-iptables",
	"/proc/sys/net/bridge/bridge-nf-call-ip6tables",
}

// EnableBridgeNetfilter sends bridged IPv4 and IPv6 frames through netfilter's
// ip and ip6 hooks in the calling thread's network namespace. It affects
// every bridge of the namespace: frames of other bridge ports then also meet
// any ip/ip6 filter rules the host has (a FORWARD policy of drop would drop
// them).
func EnableBridgeNetfilter() error {
	for _, p := range brNetfilter {
		if err := os.WriteFile(p, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("netbuf: enable br_netfilter (%s): %w", p, err)
		}
	}
	return nil
}

// QueueRules are the netfilter tables that send a tap's frames to a queue.
type QueueRules struct {
	conn   *nftables.Conn
	tables []*nftables.Table
}

// queueTableName is the per-tap table name, in both the ip and ip6 families.
func queueTableName(tap string) string { return "ftvmd-hold-" + tap }

// InstallQueueRules adds, for tap, an ip and an ip6 table whose prerouting
// chain sends every frame that entered the bridge from tap to queue. Bind the
// queue (nfq.Open) first: frames that meet the rule with no reader are dropped.
// The caller enables br_netfilter (EnableBridgeNetfilter). Tables left by an
// earlier run for the same tap are replaced.
func InstallQueueRules(tap string, queue uint16) (*QueueRules, error) {
	if err := checkIfName(tap); err != nil {
		return nil, err
	}
	c, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrQueueRules, err)
	}
	r := &QueueRules{conn: c}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		t := &nftables.Table{Family: fam, Name: queueTableName(tap)}
		// Delete and re-add in one transaction: a stale table from a crashed
		// agent is replaced, not appended to. Deleting a missing table fails
		// the whole batch, so add it first (adding an existing one is a no-op).
		c.AddTable(t)
		c.DelTable(t)
		c.AddTable(t)
		prio := nftables.ChainPriority(-300) // before conntrack and the filter chains
		ch := c.AddChain(&nftables.Chain{
			Name: "hold", Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: &prio,
		})
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: queueRuleExprs(tap, queue)})
		r.tables = append(r.tables, t)
	}
	if err := c.Flush(); err != nil {
		return nil, fmt.Errorf("%w for tap %q, queue %d: %w", ErrQueueRules, tap, queue, err)
	}
	return r, nil
}

// RemoveQueueRules deletes the tables InstallQueueRules adds for tap, if there are
// any: an agent that was killed leaves them behind, and they would drop every IP
// frame of a VM that later runs unprotected on a tap of the same name (their queue
// has no reader). Absent tables are fine.
func RemoveQueueRules(tap string) error {
	if err := checkIfName(tap); err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("netbuf: remove the hold tables of tap %q: %w", tap, err)
	}
	for _, fam := range []nftables.TableFamily{nftables.TableFamilyIPv4, nftables.TableFamilyIPv6} {
		t := &nftables.Table{Family: fam, Name: queueTableName(tap)}
		// Adding an existing table is a no-op, and deleting a missing one would
		// fail the batch: add, then delete, in one transaction.
		c.AddTable(t)
		c.DelTable(t)
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netbuf: remove the hold tables of tap %q: %w", tap, err)
	}
	return nil
}

// queueRuleExprs is "-m physdev --physdev-in tap -j NFQUEUE --queue-num queue"
// as nftables compat expressions, with a counter for diagnosis.
func queueRuleExprs(tap string, queue uint16) []expr.Any {
	phys := xt.Unknown(physdevInInfo(tap))
	nfq := xt.Unknown(nfqueueInfo(queue))
	return []expr.Any{
		&expr.Match{Name: "physdev", Rev: 0, Info: &phys},
		&expr.Counter{},
		&expr.Target{Name: "NFQUEUE", Rev: 3, Info: &nfq},
	}
}

// physdevInInfo is struct xt_physdev_info matching frames that entered the
// bridge from port dev: physindev[16], in_mask[16], physoutdev[16],
// out_mask[16], u8 invert, u8 bitmask (XT_PHYSDEV_OP_IN), padded to 8 bytes
// as x_tables wants (XT_ALIGN).
func physdevInInfo(dev string) []byte {
	const opIn = 0x01
	b := make([]byte, 72)
	copy(b[0:16], dev)
	// An exact match: the mask covers the name and its terminating NUL.
	for i := 0; i <= len(dev) && i < unix.IFNAMSIZ; i++ {
		b[16+i] = 0xff
	}
	b[65] = opIn
	return b
}

// nfqueueInfo is struct xt_NFQ_info_v3 {u16 queuenum; u16 queues_total; u16
// flags}, in host byte order, padded to 8 bytes. flags stays 0: no
// NFQ_FLAG_BYPASS, so a queue with no reader drops instead of passing.
func nfqueueInfo(queue uint16) []byte {
	b := make([]byte, 8)
	binary.NativeEndian.PutUint16(b[0:], queue)
	binary.NativeEndian.PutUint16(b[2:], 1)
	return b
}

// Remove deletes the tables. Frames then pass the bridge unheld: call it only
// when the VM runs unprotected or has stopped. Tables already gone are fine.
func (r *QueueRules) Remove() error {
	var errs []error
	for _, t := range r.tables {
		r.conn.DelTable(t)
		if err := r.conn.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("netbuf: delete table %s %s: %w", familyName(t.Family), t.Name, err))
		}
	}
	r.tables = nil
	return errors.Join(errs...)
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	default:
		return fmt.Sprint(f)
	}
}
