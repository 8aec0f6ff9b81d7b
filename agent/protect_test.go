package agent

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/disk"
)

// A primary waiting to protect its VM again probes the lost peer's agent: an
// agent that serves the peer port answers the ping; a closed port, or an agent
// whose certificate does not name the host dialled, does not.
func TestProbePeer(t *testing.T) {
	ca := newTestCA(t)
	b := testAgent(t, "hostb", ca.issue("hostb"))
	addr := servePeersTLS(t, b)
	a := testAgent(t, "hosta", ca.issue("hosta"))
	p := testPrimary(t, a, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.probePeer(ctx, addr); err != nil {
		t.Fatalf("probe of a serving agent: %v", err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	if err := p.probePeer(ctx, closed); err == nil {
		t.Fatal("probe of a closed port succeeded")
	}

	// The ping names this host; an agent with another host's certificate is refused.
	c := testAgent(t, "hostc", ca.issue("hosta"))
	c.cfg.Host = "hostc"
	pc := testPrimary(t, c, "")
	if err := pc.probePeer(ctx, addr); err == nil || !strings.Contains(err.Error(), "hostc") {
		t.Fatalf("probe from a host its certificate does not name: %v", err)
	}
}

// A VM's backup hosts may name the host a survivor runs on: the probe of its own
// listener fails at once, without a dial (whose refusal the other end would log).
func TestProbeOwnAddress(t *testing.T) {
	ca := newTestCA(t)
	a := testAgent(t, "hosta", ca.issue("hosta"))
	for _, tc := range []struct {
		listen, addr string
		own          bool
	}{
		{"10.77.0.2:7800", "10.77.0.2:7800", true},
		{"10.77.0.2:7800", "10.77.0.3:7800", false},
		{"10.77.0.2:7800", "10.77.0.2:7801", false},
		{":7800", "127.0.0.1:7800", true},
		{"0.0.0.0:7800", "127.0.0.1:7800", true},
		{":7800", "192.0.2.1:7800", false}, // TEST-NET-1: on no interface here
		{":7800", "spare.example:7800", false},
		{"peer.example:7800", "127.0.0.1:7800", false},
		{":7800", "not an address", false},
	} {
		a.cfg.Listen = tc.listen
		if got := a.isOwnAddr(tc.addr); got != tc.own {
			t.Errorf("listen %s: isOwnAddr(%s) = %v, want %v", tc.listen, tc.addr, got, tc.own)
		}
	}
	a.cfg.Listen = "127.0.0.1:7800"
	p := testPrimary(t, a, "")
	err := p.probePeer(context.Background(), "127.0.0.1:7800")
	if err == nil || !strings.Contains(err.Error(), "this host's own agent") {
		t.Fatalf("probe of its own address: %v", err)
	}
}

// A backup refuses a start from a snapshot it cannot use, and a log start
// offset other than the header's end without one, before it sets anything up.
func TestBackupRefusesBadSnapshotStart(t *testing.T) {
	ca := newTestCA(t)
	b := testAgent(t, "hostb", ca.issue("hostb"))
	addr := servePeersTLS(t, b)
	keys := ca.issue("hosta")
	spec := validSpec(t, "vm1")
	good := disk.ImageInfo{Name: "s.qcow2", Size: 1 << 20, SHA256: strings.Repeat("ab", 32)}
	for _, tc := range []struct {
		name string
		h    peerHello
		want string
	}{
		{"offset without snapshot", peerHello{Op: "backup", From: "hosta", Spec: spec, StartOffset: 4096}, "a backup from boot starts at offset 12"},
		{"bad tag", peerHello{Op: "backup", From: "hosta", Spec: spec, StartOffset: 4096,
			Snapshot: &snapshotStart{Tag: "-loadvm x", VMState: good}}, "snapshot tag"},
		{"no VM state", peerHello{Op: "backup", From: "hosta", Spec: spec, StartOffset: 4096,
			Snapshot: &snapshotStart{Tag: protectTag}}, "VM state image"},
		{"offset in the header", peerHello{Op: "backup", From: "hosta", Spec: spec, StartOffset: 5,
			Snapshot: &snapshotStart{Tag: protectTag, VMState: good}}, "inside the log header"},
	} {
		r, err := helloAs(t, addr, keys, tc.h)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.OK || !strings.Contains(r.Error, tc.want) {
			t.Errorf("%s: reply %+v, want a refusal saying %q", tc.name, r, tc.want)
		}
	}
}
