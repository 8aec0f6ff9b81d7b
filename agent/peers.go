package agent

import (
	"net"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/journal"
)

// peerTable follows the agents this one has log channels with. Agents talk only over
// the channels of the VMs they protect together, so a peer is up while one of them is
// open; a channel whose peer is silent for the peer timeout ends (logging.Sender and
// Receiver), which takes the peer down if it was the last. Peers stay in the table,
// down, once their last channel ends: a lost host must show as down, not vanish.
type peerTable struct {
	record func(journal.Event)
	now    func() time.Time

	mu    sync.Mutex
	peers map[string]*peerEntry
}

type peerEntry struct {
	channels map[*peerChannel]struct{}
	since    time.Time // when it last went up or down
}

// peerChannel is one open log channel.
type peerChannel struct {
	vm string
	// conn carries the channel (TLS over TCP in production; its TCP_INFO gives the
	// round trip). lastHeard says when the peer last sent anything on it.
	conn      net.Conn
	lastHeard func() time.Time
}

func (t *peerTable) clock() time.Time {
	if t.now != nil {
		return t.now()
	}
	return time.Now()
}

// attach registers an open channel with host for vm; the returned detach ends it,
// with the reason the channel ended. The first channel takes the peer up, the last
// one's detach takes it down: both are journal events.
func (t *peerTable) attach(host, vm string, conn net.Conn, lastHeard func() time.Time) (detach func(reason string)) {
	ch := &peerChannel{vm: vm, conn: conn, lastHeard: lastHeard}
	now := t.clock()
	t.mu.Lock()
	if t.peers == nil {
		t.peers = map[string]*peerEntry{}
	}
	p, ok := t.peers[host]
	if !ok {
		p = &peerEntry{channels: map[*peerChannel]struct{}{}}
		t.peers[host] = p
	}
	up := len(p.channels) == 0
	p.channels[ch] = struct{}{}
	if up {
		p.since = now
	}
	t.mu.Unlock()
	if up {
		t.emit(journal.Event{Time: now, Kind: journal.KindPeerUp, Peer: host, VM: vm, Detail: "log channel open"})
	}
	var once sync.Once
	return func(reason string) {
		once.Do(func() {
			now := t.clock()
			t.mu.Lock()
			delete(p.channels, ch)
			down := len(p.channels) == 0
			if down {
				p.since = now
			}
			t.mu.Unlock()
			if down {
				t.emit(journal.Event{Time: now, Kind: journal.KindPeerDown, Peer: host, VM: vm, Detail: reason})
			}
		})
	}
}

func (t *peerTable) emit(e journal.Event) {
	if t.record != nil {
		t.record(e)
	}
}

// snapshot returns every peer, sorted by host.
func (t *peerTable) snapshot() []control.PeerStatus {
	now := t.clock()
	type view struct {
		st    control.PeerStatus
		chans []*peerChannel
	}
	t.mu.Lock()
	views := make([]view, 0, len(t.peers))
	for host, p := range t.peers {
		v := view{st: control.PeerStatus{Host: host, Up: len(p.channels) > 0, Channels: len(p.channels), Since: p.since}}
		for ch := range p.channels {
			v.chans = append(v.chans, ch)
		}
		views = append(views, v)
	}
	t.mu.Unlock()
	out := make([]control.PeerStatus, 0, len(views))
	for _, v := range views {
		// Outside the lock: a socket option read and the channels' own locks.
		var heard time.Time
		for _, ch := range v.chans {
			if ch.lastHeard != nil {
				if h := ch.lastHeard(); h.After(heard) {
					heard = h
				}
			}
			if rtt, ok := tcpRTT(ch.conn); ok && (v.st.RTTMS == 0 || ms(rtt) < v.st.RTTMS) {
				v.st.RTTMS = ms(rtt)
			}
		}
		if !heard.IsZero() {
			v.st.LastHeardMS = ms(max(now.Sub(heard), 0))
		}
		out = append(out, v.st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host < out[j].Host })
	return out
}

// tcpRTT is the kernel's smoothed round-trip time of the TCP connection under c (a
// TLS connection is unwrapped); ok is false for anything else.
func tcpRTT(c net.Conn) (time.Duration, bool) {
	if c == nil {
		return 0, false
	}
	for { // TLS, then the log channel's batching (logging.BatchWrites)
		w, ok := c.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		c = w.NetConn()
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return 0, false
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var info *unix.TCPInfo
	var ierr error
	if err := raw.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), syscall.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil || ierr != nil || info.Rtt == 0 {
		return 0, false
	}
	return time.Duration(info.Rtt) * time.Microsecond, true
}
