package agent

import (
	"context"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/journal"
	"github.com/ftvmd/ftvmd/logging"
	"github.com/ftvmd/ftvmd/replay"
)

// kinds lists the events' kinds.
func kinds(evs []journal.Event) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Kind)
	}
	return out
}

// TestPeerTable: the first channel takes a peer up, the last one's end takes it
// down (with the reason), each once, in the journal; the peer stays listed, down.
func TestPeerTable(t *testing.T) {
	j := journal.NewMemory(100)
	t0 := time.Unix(1_700_000_000, 0)
	now := t0
	pt := &peerTable{record: j.Record, now: func() time.Time { return now }}
	heard := t0.Add(-30 * time.Millisecond)
	d1 := pt.attach("b", "vm1", nil, func() time.Time { return heard })
	d2 := pt.attach("b", "vm2", nil, nil)
	if ps := pt.snapshot(); len(ps) != 1 || !ps[0].Up || ps[0].Channels != 2 || ps[0].LastHeardMS != 30 || !ps[0].Since.Equal(t0) {
		t.Fatalf("two channels: %+v", ps)
	}
	now = t0.Add(time.Second)
	d1("log channel ended: peer silent")
	d1("again") // a second call changes nothing
	if ps := pt.snapshot(); !ps[0].Up || ps[0].Channels != 1 {
		t.Fatalf("one channel left: %+v", ps)
	}
	now = t0.Add(2 * time.Second)
	d2("log channel ended: peer silent for 3s")
	ps := pt.snapshot()
	if len(ps) != 1 || ps[0].Up || ps[0].Channels != 0 || !ps[0].Since.Equal(now) || ps[0].LastHeardMS != 0 {
		t.Fatalf("no channel left: %+v", ps)
	}
	evs, _ := j.Read("", 0)
	if got := strings.Join(kinds(evs), ","); got != "peer-up,peer-down" {
		t.Fatalf("events %s, want peer-up,peer-down", got)
	}
	if evs[0].Peer != "b" || !evs[0].Time.Equal(t0) || evs[1].Detail != "log channel ended: peer silent for 3s" || !evs[1].Time.Equal(now) {
		t.Fatalf("events %+v", evs)
	}
	// Up again on a new channel.
	pt.attach("b", "vm1", nil, nil)
	if evs, _ := j.Read("", 0); len(evs) != 3 || evs[2].Kind != journal.KindPeerUp {
		t.Fatalf("events after reconnect: %v", kinds(evs))
	}
}

// TestTCPRTT reads the kernel's round-trip estimate of a real TCP connection, and
// nothing from a connection that is not TCP.
func TestTCPRTT(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := <-accepted
	if s == nil {
		t.Fatal("accept failed")
	}
	defer s.Close()
	// A few round trips give the estimator samples.
	buf := make([]byte, 1)
	for range 5 {
		if _, err := c.Write([]byte{1}); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(s, buf); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
	rtt, ok := tcpRTT(c)
	if !ok || rtt <= 0 || rtt > time.Second {
		t.Fatalf("loopback rtt %v ok %v", rtt, ok)
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if _, ok := tcpRTT(a); ok {
		t.Fatal("an rtt from a pipe")
	}
	if _, ok := tcpRTT(nil); ok {
		t.Fatal("an rtt from no connection")
	}
}

// TestCountersFromEvents: the per-VM counters are counted from the journal's
// events, outlive the copy, show in status and are what OpEvents reads back.
func TestCountersFromEvents(t *testing.T) {
	a := testAgent(t, "b", "")
	j := journal.NewMemory(100)
	a.journal = j
	a.peers.record = a.record
	a.history.known("web1") // registered: counters exist at zero
	a.history.known("db1")
	for _, e := range []journal.Event{
		{Kind: journal.KindClaim, VM: "web1", Result: journal.ClaimWon, Epoch: 2},
		{Kind: journal.KindFailover, VM: "web1", Role: "backup", Epoch: 2, DurationMS: 42},
		{Kind: journal.KindGoLive, VM: "web1", Role: "backup", Epoch: 2, DurationMS: 1234},
		{Kind: journal.KindProtect, VM: "web1", Role: "primary", Epoch: 2, Result: journal.ProtectFromRunning},
		{Kind: journal.KindProtect, VM: "db1", Role: "primary", Epoch: 5}, // from its boot: no re-protection
		{Kind: journal.KindClaim, VM: "db1", Result: journal.ClaimLost, Epoch: 5},
		{Kind: journal.KindClaim, VM: "db1", Result: journal.ClaimFailed, Epoch: 5},
		{Kind: journal.KindThrottleOn, VM: "db1"},
	} {
		a.record(e)
	}
	st := a.handle(context.Background(), control.Request{Op: control.OpStatus})
	if !st.OK || len(st.Counters) != 2 {
		t.Fatalf("status %+v", st)
	}
	db, web := st.Counters[0], st.Counters[1]
	if web != (control.VMCounters{Name: "web1", Failovers: 1, Reprotections: 1, ClaimsWon: 1, LastClaimMS: 42, LastGoLiveMS: 1234}) {
		t.Fatalf("web1 counters %+v", web)
	}
	if db != (control.VMCounters{Name: "db1", ClaimsLost: 1, ClaimsFailed: 1}) {
		t.Fatalf("db1 counters %+v", db)
	}
	r := a.handle(context.Background(), control.Request{Op: control.OpEvents, VM: "web1"})
	if !r.OK || strings.Join(kinds(r.Events), ",") != "claim,failover,go-live,protect" {
		t.Fatalf("web1's events: %+v", r)
	}
	for _, e := range r.Events {
		if e.Time.IsZero() {
			t.Fatalf("event %+v not stamped", e)
		}
	}
	r = a.handle(context.Background(), control.Request{Op: control.OpEvents, Limit: 2})
	if !r.OK || strings.Join(kinds(r.Events), ",") != "claim,throttle-on" {
		t.Fatalf("the newest two events: %v", kinds(r.Events))
	}
	// An agent without a journal says so.
	a.journal = nil
	if r := a.handle(context.Background(), control.Request{Op: control.OpEvents}); r.OK || !strings.Contains(r.Error, "journal") {
		t.Fatalf("no journal: %+v", r)
	}
}

// TestEpisodes: the throttle and pacing episodes are journalled once when they
// start and once when they end, with how long they lasted.
func TestEpisodes(t *testing.T) {
	a := testAgent(t, "a", "")
	j := journal.NewMemory(100)
	a.journal = j
	p := testPrimary(t, a, "b:7800")
	p.backupHost = "b"
	t0 := time.Unix(1_700_000_000, 0)
	p.quota = 0.4
	p.noteEpisodes(true, false, t0, 150*time.Millisecond)
	p.noteEpisodes(true, false, t0.Add(100*time.Millisecond), 160*time.Millisecond)  // still on: nothing
	p.noteEpisodes(true, true, t0.Add(200*time.Millisecond), 170*time.Millisecond)   // pacing starts
	p.noteEpisodes(false, true, t0.Add(1200*time.Millisecond), 90*time.Millisecond)  // throttle ends
	p.noteEpisodes(false, false, t0.Add(1700*time.Millisecond), 10*time.Millisecond) // pacing ends
	evs, _ := j.Read("vm1", 0)
	if got := strings.Join(kinds(evs), ","); got != "throttle-on,pacing-on,throttle-off,pacing-off" {
		t.Fatalf("events %s", got)
	}
	if !strings.Contains(evs[0].Detail, "150ms") || !strings.Contains(evs[0].Detail, "40%") || evs[0].Peer != "b" || evs[0].Role != "primary" {
		t.Fatalf("throttle-on: %+v", evs[0])
	}
	if evs[2].DurationMS != 1200 || evs[3].DurationMS != 1500 {
		t.Fatalf("durations %v and %v, want 1200 and 1500", evs[2].DurationMS, evs[3].DurationMS)
	}
}

// TestLagHist: samples land in the bucket whose bound is the first at or above
// them; the export is Prometheus' layout.
func TestLagHist(t *testing.T) {
	var h lagHist
	for _, d := range []time.Duration{0, time.Millisecond, time.Millisecond + 1, 3 * time.Millisecond, time.Hour, -time.Second} {
		h.add(d)
	}
	x := h.histogram()
	if len(x.Bounds) != lagHistBuckets || len(x.Counts) != lagHistBuckets+1 {
		t.Fatalf("layout %d bounds, %d counts", len(x.Bounds), len(x.Counts))
	}
	if x.Bounds[0] != 0.001 || x.Bounds[lagHistBuckets-1] != 65.536 {
		t.Fatalf("bounds %v", x.Bounds)
	}
	// 0, -1s (as 0) and 1 ms in the first bucket; 1 ms + 1 ns in the second; 3 ms in
	// the third (2 < 3 <= 4); an hour beyond the last bound.
	want := map[int]uint64{0: 3, 1: 1, 2: 1, lagHistBuckets: 1}
	for i, c := range x.Counts {
		if c != want[i] {
			t.Fatalf("counts %v", x.Counts)
		}
	}
	if x.Count() != 6 || x.Sum < 3600 || x.Sum > 3600.1 {
		t.Fatalf("count %d sum %v", x.Count(), x.Sum)
	}
}

// TestPrimaryJournalsFailover drives a protected primary over a real log channel (in
// memory): acks fill its lag histograms, then the backup is lost and the primary
// claims the next epoch and carries on alone. Its journal tells it in order, and the
// VM's counters, counted from those events, say one failover.
func TestPrimaryJournalsFailover(t *testing.T) {
	store := disk.NewMemStore()
	a := testAgent(t, "hosta", "")
	j := journal.NewMemory(100)
	a.journal, a.store = j, store
	a.peers.record = a.record
	p := testPrimary(t, a, "hostb:7800")
	p.backupHost = "hostb"
	e, err := claimFirst(context.Background(), store, "vm1", "hosta")
	if err != nil {
		t.Fatal(err)
	}
	p.epoch = e
	p.out = new(fakeOut)
	if err := p.life.start(e, "hostb", true); err != nil {
		t.Fatal(err)
	}
	link := logging.NewMemLink()
	p.sender = logging.NewSender(link.A(), logging.NewMemLog(replay.HeaderSize), logging.SenderConfig{StartOffset: replay.HeaderSize,
		HeartbeatInterval: 10 * time.Millisecond, PeerTimeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.startSender(ctx, p.sender)
	p.go1(func() { p.ackLoop(ctx, p.sender) })
	t.Cleanup(func() { _ = p.stop(context.Background()) })

	rcv := logging.NewReceiver(link.B(), logging.NewMemLog(replay.HeaderSize), logging.ReceiverConfig{StartOffset: replay.HeaderSize,
		HeartbeatInterval: 10 * time.Millisecond, PeerTimeout: time.Second})
	rerr := make(chan error, 1)
	go func() { rerr <- rcv.Run(context.Background()) }()
	rcv.SetReplayed(1)
	deadline := time.Now().Add(5 * time.Second)
	for {
		st := p.status()
		if st.LagHist != nil && st.LagHist.Count() >= 3 && st.WorkLagHist.Count() >= 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no lag samples from the acks: %+v", st.LagHist)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if ps := a.peers.snapshot(); len(ps) != 1 || !ps[0].Up || ps[0].Host != "hostb" {
		t.Fatalf("peers while protected: %+v", ps)
	}

	link.Disconnect() // the backup's host is gone
	<-rerr
	waitState(t, p, "unprotected")
	evs, _ := j.Read("vm1", 0)
	if got := strings.Join(kinds(evs), ","); got != "peer-up,peer-down,claim,failover,unprotected" {
		t.Fatalf("events %s", got)
	}
	if c := evs[2]; c.Result != journal.ClaimWon || c.Epoch != e+1 || c.Role != "primary" {
		t.Fatalf("claim %+v", c)
	}
	if f := evs[3]; f.Epoch != e+1 || f.Peer != "hostb" || f.DurationMS <= 0 {
		t.Fatalf("failover %+v", f)
	}
	st := a.handle(context.Background(), control.Request{Op: control.OpStatus})
	if len(st.Counters) != 1 || st.Counters[0].Failovers != 1 || st.Counters[0].ClaimsWon != 1 {
		t.Fatalf("counters %+v", st.Counters)
	}
	if len(st.Peers) != 1 || st.Peers[0].Up {
		t.Fatalf("peers after the loss: %+v", st.Peers)
	}
}
