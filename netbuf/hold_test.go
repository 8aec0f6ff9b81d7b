package netbuf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/netbuf/nfq"
	"github.com/ftvmd/ftvmd/outputrule"
)

// fakeQueue is an in-memory HoldQueue: the test queues ids, the Hold's
// verdicts are recorded as the kernel would apply them.
type fakeQueue struct {
	in chan []nfq.Message

	mu       sync.Mutex
	queued   []uint32 // ids the kernel still holds, in order
	accepted []uint32
	dropped  []uint32
	stop     chan struct{}
	stopOnce sync.Once
}

func newFakeQueue() *fakeQueue {
	return &fakeQueue{in: make(chan []nfq.Message, 16), stop: make(chan struct{})}
}

func (q *fakeQueue) Read(dst []nfq.Message) ([]nfq.Message, error) {
	select {
	case m := <-q.in:
		return append(dst, m...), nil
	case <-q.stop:
		return dst, os.ErrDeadlineExceeded
	}
}

func (q *fakeQueue) SetReadDeadline(time.Time) error {
	q.stopOnce.Do(func() { close(q.stop) })
	return nil
}

// verdict applies v to the held ids up to id (batch) or to id alone.
func (q *fakeQueue) verdict(accept bool, id uint32, batch bool) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	var keep []uint32
	for _, x := range q.queued {
		if x == id || (batch && x < id) {
			if accept {
				q.accepted = append(q.accepted, x)
			} else {
				q.dropped = append(q.dropped, x)
			}
			continue
		}
		keep = append(keep, x)
	}
	q.queued = keep
	return nil
}

func (q *fakeQueue) Release(id uint32) error { return q.verdict(true, id, true) }
func (q *fakeQueue) Drop(id uint32) error    { return q.verdict(false, id, true) }
func (q *fakeQueue) DropOne(id uint32) error { return q.verdict(false, id, false) }

// put queues ids as one read batch.
func (q *fakeQueue) put(ids ...uint32) {
	var msgs []nfq.Message
	q.mu.Lock()
	for _, id := range ids {
		q.queued = append(q.queued, id)
		msgs = append(msgs, nfq.Message{Kind: nfq.KindPacket, Packet: nfq.Packet{ID: id, HWProto: 0x0800, Len: 1000}})
	}
	q.mu.Unlock()
	q.in <- msgs
}

func (q *fakeQueue) state() (accepted, dropped, queued []uint32) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Clone(q.accepted), slices.Clone(q.dropped), slices.Clone(q.queued)
}

type holdHarness struct {
	t      testing.TB
	q      *fakeQueue
	h      *Hold
	log    atomic.Int64
	stampE atomic.Bool
	bypass atomic.Int32
}

func newHoldHarness(t testing.TB, mode outputrule.Mode) *holdHarness {
	t.Helper()
	hh := &holdHarness{t: t, q: newFakeQueue()}
	h, err := NewHold(HoldConfig{
		Queue: hh.q,
		Stamp: func() (int64, error) {
			if hh.stampE.Load() {
				return 0, errors.New("log gone")
			}
			return hh.log.Load(), nil
		},
		Rule:           outputrule.New(HoldRuleConfig(64), mode),
		Bypass:         func() error { hh.bypass.Add(1); return nil },
		CheckInvariant: true,
		Logger:         slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	hh.h = h
	runHold(t, h)
	return hh
}

// queue queues ids with the log at size stamp and waits until they are stamped.
func (hh *holdHarness) queue(stamp int64, ids ...uint32) {
	hh.t.Helper()
	hh.log.Store(stamp)
	before := hh.h.Stats().GuestFrames
	hh.q.put(ids...)
	waitFor(hh.t, "frames stamped", func() bool { return hh.h.Stats().GuestFrames >= before+uint64(len(ids)) })
}

func (hh *holdHarness) waitAccepted(want ...uint32) {
	hh.t.Helper()
	waitFor(hh.t, fmt.Sprintf("accepted %v", want), func() bool {
		a, _, _ := hh.q.state()
		return slices.Equal(a, want)
	})
}

func TestHoldReleasesInOrderOnAck(t *testing.T) {
	hh := newHoldHarness(t, outputrule.Protected)
	hh.h.Sent(1000)
	hh.queue(100, 1, 2)
	hh.queue(200, 3)
	hh.queue(300, 4)
	hh.h.Ack(99)
	hh.h.Ack(250) // passes 1, 2 (stamp 100) and 3 (stamp 200), not 4
	hh.waitAccepted(1, 2, 3)
	if _, _, q := hh.q.state(); !slices.Equal(q, []uint32{4}) {
		t.Fatalf("still queued %v, want [4]", q)
	}
	hh.h.Ack(300)
	hh.waitAccepted(1, 2, 3, 4)
	st := hh.h.Stats()
	if st.TapFrames != 4 || st.TapBytes != 4000 || st.Invariant != 0 || st.Rule.HeldFrames != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestHoldLyingAckReleasesNothing(t *testing.T) {
	hh := newHoldHarness(t, outputrule.Protected)
	hh.h.Sent(50)
	hh.queue(100, 1)
	hh.h.Ack(100) // beyond Sent: a lie
	hh.h.Sent(100)
	if a, _, _ := hh.q.state(); len(a) != 0 {
		t.Fatalf("released %v on a lying ack", a)
	}
	if hh.h.Stats().Rule.LyingAcks != 1 {
		t.Fatal("lying ack not counted")
	}
	hh.h.Ack(100)
	hh.waitAccepted(1)
}

func TestHoldHaltDropsEverything(t *testing.T) {
	hh := newHoldHarness(t, outputrule.Protected)
	hh.h.Sent(1000)
	hh.queue(100, 1, 2)
	hh.h.SetMode(outputrule.Halted)
	_, d, q := hh.q.state()
	if !slices.Equal(d, []uint32{1, 2}) || len(q) != 0 {
		t.Fatalf("after halt dropped %v queued %v, want [1 2] and none", d, q)
	}
	hh.queue(200, 3)
	hh.h.Ack(1000)
	waitFor(t, "frame 3 dropped", func() bool { _, d, _ := hh.q.state(); return slices.Contains(d, 3) })
	if a, _, _ := hh.q.state(); len(a) != 0 {
		t.Fatalf("a halted hold released %v", a)
	}
	if hh.bypass.Load() != 0 {
		t.Fatal("halt bypassed the queue")
	}
}

func TestHoldUnprotectedReleasesAndBypasses(t *testing.T) {
	hh := newHoldHarness(t, outputrule.Protected)
	hh.h.Sent(1000)
	hh.queue(100, 1, 2)
	hh.h.SetMode(outputrule.Unprotected)
	hh.waitAccepted(1, 2)
	if hh.bypass.Load() != 1 {
		t.Fatalf("bypass called %d times, want 1", hh.bypass.Load())
	}
	// A frame queued before the bypass took effect passes at once.
	hh.queue(500, 3)
	hh.waitAccepted(1, 2, 3)
	hh.h.SetMode(outputrule.Unprotected)
	if hh.bypass.Load() != 1 {
		t.Fatal("bypass called again")
	}
}

func TestHoldUnstampedFramesDropped(t *testing.T) {
	hh := newHoldHarness(t, outputrule.Protected)
	hh.h.Sent(1000)
	hh.stampE.Store(true)
	hh.queue(0, 1)
	waitFor(t, "frame 1 dropped", func() bool { _, d, _ := hh.q.state(); return slices.Equal(d, []uint32{1}) })
	if hh.h.Stats().StampErrors != 1 {
		t.Fatal("stamp error not counted")
	}
	hh.stampE.Store(false)
	hh.queue(10, 2)
	hh.h.Ack(10)
	hh.waitAccepted(2)
}

func TestHoldConfigErrors(t *testing.T) {
	if _, err := NewHold(HoldConfig{Stamp: func() (int64, error) { return 0, nil }}); !errors.Is(err, ErrConfig) {
		t.Fatalf("no queue: %v", err)
	}
	if _, err := NewHold(HoldConfig{Queue: newFakeQueue()}); !errors.Is(err, ErrConfig) {
		t.Fatalf("no stamp: %v", err)
	}
	h, err := NewHold(HoldConfig{Queue: newFakeQueue(), Stamp: func() (int64, error) { return 0, nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.Run(ctx); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	if err := h.Run(ctx); !errors.Is(err, ErrAlreadyRunning) {
		t.Fatalf("second Run: %v", err)
	}
}

// engageHarness is a Hold that starts bypassed (an unprotected VM: no rules feed
// the queue) with fake Engage and Bypass that track whether frames are queued.
type engageHarness struct {
	*holdHarness
	mu        sync.Mutex
	installed bool
	engages   int
	bypasses  int
	engageErr error
	// inBypass, if set, runs in Bypass before the rules go (the test holds it).
	inBypass func()
}

func newEngageHarness(t *testing.T) *engageHarness {
	t.Helper()
	eh := &engageHarness{holdHarness: &holdHarness{t: t, q: newFakeQueue()}}
	h, err := NewHold(HoldConfig{
		Queue:    eh.q,
		Stamp:    func() (int64, error) { return eh.log.Load(), nil },
		Rule:     outputrule.New(HoldRuleConfig(64), outputrule.Unprotected),
		Bypassed: true,
		Engage: func() error {
			eh.mu.Lock()
			defer eh.mu.Unlock()
			if eh.engageErr != nil {
				return eh.engageErr
			}
			eh.installed = true
			eh.engages++
			return nil
		},
		Bypass: func() error {
			eh.mu.Lock()
			wait := eh.inBypass
			eh.mu.Unlock()
			if wait != nil {
				wait()
			}
			eh.mu.Lock()
			defer eh.mu.Unlock()
			eh.installed = false
			eh.bypasses++
			return nil
		},
		CheckInvariant: true,
		Logger:         slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelError + 1})),
	})
	if err != nil {
		t.Fatal(err)
	}
	eh.h = h
	runHold(t, h)
	return eh
}

func (eh *engageHarness) counts() (installed bool, engages, bypasses int) {
	eh.mu.Lock()
	defer eh.mu.Unlock()
	return eh.installed, eh.engages, eh.bypasses
}

// A Hold of an unprotected VM starts with its frames bypassing the queue;
// Protect installs the rules and holds what then enters it until acked; losing
// the backup releases and bypasses again; the next Protect engages again.
func TestHoldProtectEngagesABypassedQueue(t *testing.T) {
	eh := newEngageHarness(t)
	if in, n, _ := eh.counts(); in || n != 0 {
		t.Fatal("a bypassed hold installed its rules before Protect")
	}
	if err := eh.h.Protect(); err != nil {
		t.Fatal(err)
	}
	if in, n, _ := eh.counts(); !in || n != 1 {
		t.Fatalf("after Protect: installed %v, engaged %d times", in, n)
	}
	if m := eh.h.Stats().Rule.Mode; m != outputrule.Protected {
		t.Fatalf("mode %v after Protect", m)
	}
	// The new log's channel: sent and acked count from the new protection.
	eh.h.Sent(1000)
	eh.queue(300, 1)
	eh.queue(400, 2)
	time.Sleep(20 * time.Millisecond)
	if a, _, _ := eh.q.state(); len(a) != 0 {
		t.Fatalf("released %v before any ack", a)
	}
	eh.h.Ack(300)
	eh.waitAccepted(1)
	// Protect again while protected changes nothing.
	if err := eh.h.Protect(); err != nil {
		t.Fatal(err)
	}
	if _, n, _ := eh.counts(); n != 1 {
		t.Fatalf("engaged %d times, want 1", n)
	}
	eh.h.SetMode(outputrule.Unprotected)
	eh.waitAccepted(1, 2)
	if in, _, b := eh.counts(); in || b != 1 {
		t.Fatalf("after Unprotected: installed %v, bypassed %d times", in, b)
	}
	// Protected again (a re-protection): engaged again, held again.
	if err := eh.h.Protect(); err != nil {
		t.Fatal(err)
	}
	if in, n, _ := eh.counts(); !in || n != 2 {
		t.Fatalf("second Protect: installed %v, engaged %d times", in, n)
	}
	eh.h.Sent(2000)
	eh.queue(50, 3)
	time.Sleep(20 * time.Millisecond)
	if a, _, _ := eh.q.state(); len(a) != 2 {
		t.Fatalf("released %v: frame 3 left before the new channel's ack", a)
	}
	eh.h.Ack(50)
	eh.waitAccepted(1, 2, 3)
	if st := eh.h.Stats(); st.Invariant != 0 {
		t.Fatalf("invariant failures %d", st.Invariant)
	}
}

// A Protect whose Engage fails says so and leaves the Hold unprotected (its
// frames are not queued, so a Protected rule would claim to hold what leaves);
// a later one succeeds.
func TestHoldProtectEngageFails(t *testing.T) {
	eh := newEngageHarness(t)
	eh.mu.Lock()
	eh.engageErr = errors.New("nf_tables: operation not supported")
	eh.mu.Unlock()
	err := eh.h.Protect()
	if !errors.Is(err, ErrNotHeld) || !strings.Contains(err.Error(), "operation not supported") {
		t.Fatalf("Protect: %v, want ErrNotHeld with the cause", err)
	}
	if m := eh.h.Stats().Rule.Mode; m != outputrule.Unprotected {
		t.Fatalf("mode %v after a failed Protect", m)
	}
	eh.mu.Lock()
	eh.engageErr = nil
	eh.mu.Unlock()
	if err := eh.h.Protect(); err != nil {
		t.Fatal(err)
	}
	if in, _, _ := eh.counts(); !in {
		t.Fatal("not engaged on the second Protect")
	}
}

// A halted Hold is never protected again, and one halted while its Protect
// engaged the queue reports it.
func TestHoldProtectAfterHalt(t *testing.T) {
	eh := newEngageHarness(t)
	eh.h.SetMode(outputrule.Halted)
	if err := eh.h.Protect(); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("Protect after halt: %v", err)
	}
	if in, n, _ := eh.counts(); in || n != 0 {
		t.Fatal("a halted hold engaged its rules")
	}
	// A bypassed Hold without Engage cannot hold.
	h, err := NewHold(HoldConfig{Queue: newFakeQueue(), Stamp: func() (int64, error) { return 0, nil },
		Rule: outputrule.New(HoldRuleConfig(4), outputrule.Unprotected), Bypassed: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Protect(); !errors.Is(err, ErrNotHeld) {
		t.Fatalf("Protect without Engage: %v", err)
	}
	if m := h.Stats().Rule.Mode; m != outputrule.Unprotected {
		t.Fatalf("mode %v", m)
	}
}

// A Protect that comes while an Unprotected is removing the rules waits for it,
// and then engages them again: the rules end up installed exactly when the rule
// is Protected. Without engMu the Bypass would land after the Protect's Engage and
// leave a Protected rule whose frames bypass the queue.
func TestHoldProtectWaitsForBypass(t *testing.T) {
	eh := newEngageHarness(t)
	if err := eh.h.Protect(); err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	eh.mu.Lock()
	eh.inBypass = func() { close(entered); <-release }
	eh.mu.Unlock()
	unprotected := make(chan struct{})
	go func() { eh.h.SetMode(outputrule.Unprotected); close(unprotected) }()
	<-entered // the Unprotected is removing the rules
	protected := make(chan error, 1)
	go func() { protected <- eh.h.Protect() }()
	select {
	case err := <-protected:
		t.Fatalf("Protect returned (%v) while the rules were being removed", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-unprotected
	if err := <-protected; err != nil {
		t.Fatal(err)
	}
	in, n, b := eh.counts()
	if m := eh.h.Stats().Rule.Mode; m != outputrule.Protected || !in || n != 2 || b != 1 {
		t.Fatalf("mode %v, rules installed %v (engaged %d, bypassed %d times): want protected with the rules in", m, in, n, b)
	}
}

func TestHoldBypassedNeedsUnprotectedRule(t *testing.T) {
	_, err := NewHold(HoldConfig{Queue: newFakeQueue(), Stamp: func() (int64, error) { return 0, nil },
		Rule: outputrule.New(HoldRuleConfig(4), outputrule.Protected), Bypassed: true})
	if !errors.Is(err, ErrConfig) {
		t.Fatalf("Bypassed with a Protected rule: %v", err)
	}
	if _, err := NewHold(HoldConfig{Queue: newFakeQueue(), Stamp: func() (int64, error) { return 0, nil }, Bypassed: true}); !errors.Is(err, ErrConfig) {
		t.Fatalf("Bypassed with the default (Protected) rule: %v", err)
	}
}

// runHold runs h until the test ends, and fails the test if Run returns an error.
func runHold(t testing.TB, h *Hold) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- h.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}
