package netbuf

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/outputrule"
	"github.com/ftvmd/ftvmd/throttle"
)

// fakeTap returns a pollable socketpair standing in for a tap: the relay gets
// one end, the test (the "network") the other. One message is one frame.
func fakeTap(t testing.TB) (relaySide, netSide *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		// Room for bursts of large frames in the benchmark.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	}
	a, b := os.NewFile(uintptr(fds[0]), "tap-relay"), os.NewFile(uintptr(fds[1]), "tap-net")
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// fakeQEMU stands in for QEMU's -netdev dgram: it binds QEMUSock (frames from
// the network arrive there) and sends guest frames to AgentSock.
type fakeQEMU struct {
	local *net.UnixConn // bound at QEMUSock
	send  *net.UnixConn // connected to AgentSock
}

func newFakeQEMU(t testing.TB, qemuSock, agentSock string) *fakeQEMU {
	t.Helper()
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: qemuSock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	s, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: agentSock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close(); s.Close() })
	return &fakeQEMU{local: l, send: s}
}

// frame builds an Ethernet-sized frame carrying seq at bytes 14..22.
func frame(seq uint64, size int) []byte {
	b := make([]byte, size)
	copy(b, []byte{0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x88, 0xb5})
	binary.BigEndian.PutUint64(b[14:], seq)
	return b
}

func seqOf(b []byte) uint64 { return binary.BigEndian.Uint64(b[14:]) }

type harness struct {
	t     testing.TB
	relay *Relay
	qemu  *fakeQEMU
	net   *os.File
	log   atomic.Int64 // the fake rr log size returned by Stamp
	done  chan error
}

type harnessOpt func(*RelayConfig)

func newHarness(t testing.TB, mode outputrule.Mode, opts ...harnessOpt) *harness {
	t.Helper()
	dir := t.TempDir()
	tap, netSide := fakeTap(t)
	h := &harness{t: t, net: netSide, done: make(chan error, 1)}
	cfg := RelayConfig{
		AgentSock:      filepath.Join(dir, "agent.sock"),
		QEMUSock:       filepath.Join(dir, "qemu.sock"),
		Tap:            tap,
		Stamp:          func() (int64, error) { return h.log.Load(), nil },
		Rule:           outputrule.New(outputrule.Config{}, mode),
		CheckInvariant: true,
		Logger:         slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	for _, o := range opts {
		o(&cfg)
	}
	r, err := NewRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.relay = r
	h.qemu = newFakeQEMU(t, cfg.QEMUSock, cfg.AgentSock)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { h.done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-h.done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return h
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }

// waitFor polls cond until it holds, failing after a long stop.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(500 * time.Microsecond)
	}
}

// sendGuest sends one guest frame with the log at size stamp and waits until
// the relay has stamped it.
func (h *harness) sendGuest(seq uint64, stamp int64) {
	h.t.Helper()
	h.log.Store(stamp)
	before := h.relay.Stats().GuestFrames
	if _, err := h.qemu.send.Write(frame(seq, 64)); err != nil {
		h.t.Fatal(err)
	}
	waitFor(h.t, "guest frame stamped", func() bool { return h.relay.Stats().GuestFrames > before })
}

// readNet reads one frame that reached the network.
func (h *harness) readNet() []byte {
	h.t.Helper()
	buf := make([]byte, DefaultMaxFrame)
	_ = h.net.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := h.net.Read(buf)
	if err != nil {
		h.t.Fatalf("read network: %v", err)
	}
	return buf[:n]
}

// expectNoNet asserts that nothing reached the network.
func (h *harness) expectNoNet() {
	h.t.Helper()
	buf := make([]byte, DefaultMaxFrame)
	_ = h.net.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if n, err := h.net.Read(buf); err == nil {
		h.t.Fatalf("frame seq %d reached the network", seqOf(buf[:n]))
	}
}

func (h *harness) expectSeqs(seqs ...uint64) {
	h.t.Helper()
	for _, want := range seqs {
		if got := seqOf(h.readNet()); got != want {
			h.t.Fatalf("network got seq %d, want %d", got, want)
		}
	}
}

func TestRelayHoldsUntilAckInOrder(t *testing.T) {
	h := newHarness(t, outputrule.Protected)
	h.sendGuest(1, 100)
	h.sendGuest(2, 200)
	h.sendGuest(3, 300)
	if s := h.relay.Stats().Rule; s.HeldFrames != 3 {
		t.Fatalf("held %d, want 3", s.HeldFrames)
	}
	h.expectNoNet()
	h.relay.Sent(1000)
	h.relay.Ack(250)
	h.expectSeqs(1, 2)
	h.expectNoNet()
	h.relay.Ack(150) // stale
	h.relay.Ack(300)
	h.expectSeqs(3)
	waitFor(t, "counters", func() bool { return h.relay.Stats().TapFrames == 3 })
	s := h.relay.Stats()
	if s.TapFrames != 3 || s.Invariant != 0 || s.Rule.StaleAcks != 1 {
		t.Fatalf("stats %+v", s)
	}
}

func TestRelayLyingAckReleasesNothing(t *testing.T) {
	h := newHarness(t, outputrule.Protected)
	h.sendGuest(1, 100)
	h.relay.Sent(50)
	h.relay.Ack(100)
	h.expectNoNet()
	if s := h.relay.Stats().Rule; s.LyingAcks != 1 || s.HeldFrames != 1 {
		t.Fatalf("stats %+v", s)
	}
	h.relay.Sent(100)
	h.relay.Ack(100)
	h.expectSeqs(1)
}

func TestRelayUnprotectedPassThrough(t *testing.T) {
	h := newHarness(t, outputrule.Unprotected)
	for i := uint64(1); i <= 100; i++ {
		if _, err := h.qemu.send.Write(frame(i, 1500)); err != nil {
			t.Fatal(err)
		}
		if got := seqOf(h.readNet()); got != i {
			t.Fatalf("got seq %d, want %d", got, i)
		}
	}
}

func TestRelaySwitchToUnprotectedReleasesHeld(t *testing.T) {
	h := newHarness(t, outputrule.Protected)
	h.sendGuest(1, 100)
	h.sendGuest(2, 200)
	h.expectNoNet()
	h.relay.SetMode(outputrule.Unprotected)
	h.expectSeqs(1, 2)
	h.sendGuest(3, 300)
	h.expectSeqs(3)
}

func TestRelayHaltReleasesNothing(t *testing.T) {
	h := newHarness(t, outputrule.Protected)
	h.sendGuest(1, 100)
	h.sendGuest(2, 200)
	h.relay.SetMode(outputrule.Halted)
	h.relay.Sent(1000)
	h.relay.Ack(1000)
	h.sendGuest(3, 300)
	h.relay.SetMode(outputrule.Unprotected) // terminal: ignored
	h.sendGuest(4, 400)
	h.expectNoNet()
	s := h.relay.Stats()
	if s.TapFrames != 0 || s.Rule.DroppedFrames != 4 || s.Rule.Mode != outputrule.Halted {
		t.Fatalf("stats %+v", s)
	}
}

func TestRelayBackpressureThenResumes(t *testing.T) {
	// More frames than the socket queue holds, whatever this network namespace's
	// net.unix.max_dgram_qlen is (10 by default; an agent raises it for its own
	// namespace, and a host may have it raised already), so the sender must block.
	total := uint64(60)
	if b, err := os.ReadFile("/proc/sys/net/unix/max_dgram_qlen"); err == nil {
		if q, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32); err == nil && q+50 > total {
			total = q + 50
		}
	}
	var stamp atomic.Int64
	h := newHarness(t, outputrule.Protected, func(c *RelayConfig) {
		c.Rule = outputrule.New(outputrule.Config{MaxHeldFrames: 4}, outputrule.Protected)
		c.Stamp = func() (int64, error) { return stamp.Add(10), nil }
	})
	var sent atomic.Int64
	sendErr := make(chan error, 1)
	go func() {
		for i := uint64(1); i <= total; i++ {
			if _, err := h.qemu.send.Write(frame(i, 200)); err != nil {
				sendErr <- err
				return
			}
			sent.Add(1)
		}
		sendErr <- nil
	}()
	waitFor(t, "backpressure", func() bool {
		s := h.relay.Stats()
		return s.BackpressureWaits > 0 && s.Rule.HeldFrames == 4
	})
	// The reader stopped: the sender's queue fills and it blocks, as QEMU's
	// sendto would see EAGAIN.
	waitFor(t, "sender blocked", func() bool {
		n := sent.Load()
		time.Sleep(20 * time.Millisecond)
		return n == sent.Load()
	})
	if n := sent.Load(); n >= int64(total) {
		t.Fatalf("sender was never stopped (%d sent)", n)
	}
	h.expectNoNet()
	// Ack step by step; everything arrives, in order, none dropped.
	h.relay.Sent(1 << 40)
	for i := uint64(1); i <= total; i++ {
		h.relay.Ack(int64(i) * 10)
		if got := seqOf(h.readNet()); got != i {
			t.Fatalf("got seq %d, want %d", got, i)
		}
	}
	if err := <-sendErr; err != nil {
		t.Fatal(err)
	}
	waitFor(t, "counters", func() bool { return h.relay.Stats().TapFrames == total })
	s := h.relay.Stats()
	if s.GuestFrames != total || s.TapFrames != total || s.Rule.MaxHeldFrames > 4 || s.Invariant != 0 {
		t.Fatalf("stats %+v", s)
	}
	t.Logf("backpressure waits %d, time %s, full events %d", s.BackpressureWaits, s.BackpressureTime, s.Rule.FullEvents)
}

func TestRelayBadDatagrams(t *testing.T) {
	var failStamp atomic.Bool
	h := newHarness(t, outputrule.Unprotected, func(c *RelayConfig) {
		c.MaxFrame = 2000
		c.Stamp = func() (int64, error) {
			if failStamp.Load() {
				return 0, errors.New("stat rr log: gone")
			}
			return 1, nil
		}
	})
	write := func(b []byte) {
		t.Helper()
		if _, err := h.qemu.send.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	write(make([]byte, 5)) // truncated
	write(make([]byte, 0)) // empty
	write(frame(1, 2001))  // oversized
	write(frame(2, 2000))  // largest allowed
	waitFor(t, "frame 2", func() bool { return h.relay.Stats().GuestFrames == 1 })
	failStamp.Store(true)
	write(frame(3, 100)) // cannot be stamped
	waitFor(t, "stamp error", func() bool { return h.relay.Stats().StampErrors == 1 })
	failStamp.Store(false)
	write(frame(4, 100))
	h.expectSeqs(2, 4)
	waitFor(t, "counters", func() bool { return h.relay.Stats().TapFrames == 2 })
	s := h.relay.Stats()
	if s.Truncated != 2 || s.Oversized != 1 || s.StampErrors != 1 || s.TapFrames != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestRelayNetworkToGuest(t *testing.T) {
	for _, paced := range []bool{false, true} {
		t.Run(map[bool]string{false: "no pacer", true: "pacer within bound"}[paced], func(t *testing.T) {
			var opts []harnessOpt
			if paced {
				opts = append(opts, withPacer(t, throttle.PacerConfig{Bound: 100 * time.Millisecond, MinRate: 1}))
			}
			h := newHarness(t, outputrule.Protected, opts...)
			h.relay.Pace(throttle.Sample{Lag: 100 * time.Millisecond}) // at the bound: no pacing
			// Frames from the network go to QEMU at once, whatever the rule holds.
			h.sendGuest(1, 100)
			for i := uint64(1); i <= 20; i++ {
				if _, err := h.net.Write(frame(100+i, 1000)); err != nil {
					t.Fatal(err)
				}
				if got, n := h.readQEMU(); got != 100+i || n != 1000 {
					t.Fatalf("QEMU got seq %d (%d bytes), want %d", got, n, 100+i)
				}
			}
			waitFor(t, "counters", func() bool { return h.relay.Stats().NetFrames == 20 })
			s := h.relay.Stats()
			if s.NetFrames != 20 || s.Rule.HeldFrames != 1 || s.Pacing.Active || s.Pacing.Paced != 0 {
				t.Fatalf("stats %+v", s)
			}
		})
	}
}

func withPacer(t *testing.T, cfg throttle.PacerConfig) harnessOpt {
	t.Helper()
	p, err := throttle.NewPacer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return func(c *RelayConfig) { c.Pacer = p }
}

// readQEMU reads one frame that reached QEMU and returns its seq and size.
func (h *harness) readQEMU() (uint64, int) {
	h.t.Helper()
	buf := make([]byte, DefaultMaxFrame)
	_ = h.qemu.local.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := h.qemu.local.Read(buf)
	if err != nil {
		h.t.Fatalf("read QEMU: %v", err)
	}
	return seqOf(buf[:n]), n
}

// Over the bound, frames from the network reach QEMU at the paced rate, in order
// and all of them; the stats show pacing.
func TestRelayPacesNetworkInput(t *testing.T) {
	const rate = 200e3
	h := newHarness(t, outputrule.Protected, withPacer(t, throttle.PacerConfig{Bound: 100 * time.Millisecond, MinRate: rate}))
	h.relay.Pace(throttle.Sample{})
	h.relay.Pace(throttle.Sample{Lag: time.Second}) // nothing flowed: the floor
	if s := h.relay.Stats().Pacing; !s.Active || s.Rate != rate {
		t.Fatalf("pacing %+v, want active at %v B/s", s, rate)
	}
	const frames, size = 40, 1000
	start := time.Now()
	for i := uint64(1); i <= frames; i++ {
		if _, err := h.net.Write(frame(i, size)); err != nil {
			t.Fatal(err)
		}
	}
	for i := uint64(1); i <= frames; i++ {
		if got, n := h.readQEMU(); got != i || n != size {
			t.Fatalf("QEMU got seq %d (%d bytes), want %d", got, n, i)
		}
	}
	// The first frame goes on the bucket, and 10 ms of burst: the rest wait for
	// the rate.
	took := time.Since(start)
	if min := time.Duration(float64((frames-1)*size)/rate*float64(time.Second)) - 10*time.Millisecond; took < min {
		t.Fatalf("%d frames of %d bytes at %v B/s took %v, want at least %v", frames, size, rate, took, min)
	}
	waitFor(t, "counters", func() bool { return h.relay.Stats().NetFrames == frames })
	s := h.relay.Stats()
	if s.Pacing.Paced == 0 || s.Pacing.Drops != 0 || s.NetDrops != 0 || s.Pacing.QueueFrames != 0 {
		t.Fatalf("stats %+v", s)
	}
	t.Logf("%d frames of %d bytes at %v B/s took %v", frames, size, rate, took)
}

// A full pacing queue drops and counts what does not fit; releasing pacing lets the
// held frames go at once, in order.
func TestRelayPacingQueueFullThenRelease(t *testing.T) {
	// At 1 B/s the first frame's debt outlasts the test, however slow the machine.
	h := newHarness(t, outputrule.Protected, withPacer(t, throttle.PacerConfig{Bound: 100 * time.Millisecond, MinRate: 1, QueueBytes: 5000}))
	h.relay.Pace(throttle.Sample{})
	h.relay.Pace(throttle.Sample{Lag: time.Second})
	for i := uint64(1); i <= 20; i++ {
		if _, err := h.net.Write(frame(i, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	// One frame on the bucket, five held, fourteen dropped.
	waitFor(t, "drops", func() bool { return h.relay.Stats().Pacing.Drops == 14 })
	if got, _ := h.readQEMU(); got != 1 {
		t.Fatalf("first frame seq %d", got)
	}
	if s := h.relay.Stats().Pacing; s.QueueFrames != 5 || s.QueueBytes != 5000 || s.Paced != 5 {
		t.Fatalf("pacing %+v", s)
	}
	h.relay.ReleasePacing()
	for i := uint64(2); i <= 6; i++ {
		if got, _ := h.readQEMU(); got != i {
			t.Fatalf("QEMU got seq %d, want %d", got, i)
		}
	}
	waitFor(t, "counters", func() bool { return h.relay.Stats().NetFrames == 6 })
	if s := h.relay.Stats(); s.Pacing.Active || s.Pacing.QueueFrames != 0 || s.NetDrops != 0 {
		t.Fatalf("stats %+v", s)
	}
}

func TestRelayNetworkToGuestWithoutQEMU(t *testing.T) {
	h := newHarness(t, outputrule.Protected)
	h.qemu.local.Close() // QEMU gone: its socket file is removed
	if _, err := h.net.Write(frame(1, 100)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "drop counted", func() bool { return h.relay.Stats().NetDrops == 1 })
}

func TestRelayConfigErrors(t *testing.T) {
	tap, _ := fakeTap(t)
	dir := t.TempDir()
	ok := RelayConfig{
		AgentSock: filepath.Join(dir, "a.sock"), QEMUSock: filepath.Join(dir, "q.sock"),
		Tap: tap, Stamp: func() (int64, error) { return 0, nil },
	}
	notSock := filepath.Join(dir, "file")
	if err := os.WriteFile(notSock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mut  func(*RelayConfig)
		want error
	}{
		{"no agent sock", func(c *RelayConfig) { c.AgentSock = "" }, ErrConfig},
		{"no qemu sock", func(c *RelayConfig) { c.QEMUSock = "" }, ErrConfig},
		{"same sock", func(c *RelayConfig) { c.QEMUSock = c.AgentSock }, ErrConfig},
		{"no tap", func(c *RelayConfig) { c.Tap = nil }, ErrConfig},
		{"no stamp", func(c *RelayConfig) { c.Stamp = nil }, ErrConfig},
		{"tiny max frame", func(c *RelayConfig) { c.MaxFrame = 3 }, ErrConfig},
		{"negative buffer", func(c *RelayConfig) { c.RcvBuf = -1 }, ErrConfig},
		{"agent sock is a file", func(c *RelayConfig) { c.AgentSock = notSock }, ErrConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mut(&c)
			r, err := NewRelay(c)
			if !errors.Is(err, tc.want) {
				if r != nil {
					r.Close()
				}
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestRelayRunOnceAndStaleSocket(t *testing.T) {
	tap, _ := fakeTap(t)
	dir := t.TempDir()
	cfg := RelayConfig{
		AgentSock: filepath.Join(dir, "a.sock"), QEMUSock: filepath.Join(dir, "q.sock"),
		Tap: tap, Stamp: func() (int64, error) { return 0, nil },
	}
	// A stale socket file left by a crashed agent is replaced.
	stale, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: cfg.AgentSock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	stale.Close()
	r, err := NewRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	waitFor(t, "running", r.started.Load)
	if err := r.Run(ctx); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second Run: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Stat(cfg.AgentSock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("agent socket left behind: %v", err)
	}
}
