package qemu

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// fakeStatus answers query-status from a value the test sets.
type fakeStatus struct {
	state atomic.Value // string
	calls atomic.Int32
	fail  atomic.Int32 // this many calls fail first
}

func (f *fakeStatus) status(context.Context) (string, error) {
	f.calls.Add(1)
	if f.fail.Load() > 0 {
		f.fail.Add(-1)
		return "", errors.New("qmp query-status: context deadline exceeded")
	}
	return f.state.Load().(string), nil
}

func waitAsync(w *runWatch, ctx context.Context, exited chan struct{}, f *fakeStatus) <-chan error {
	done := make(chan error, 1)
	go func() { done <- w.wait(ctx, exited, f.status) }()
	return done
}

func expectPending(t *testing.T, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		t.Fatalf("wait returned %v, want it still waiting", err)
	case <-time.After(50 * time.Millisecond):
	}
}

func expectDone(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatal("wait did not return")
		return nil
	}
}

func TestRunWatchLogWriteError(t *testing.T) {
	w := newRunWatch()
	f := &fakeStatus{}
	f.state.Store("running")
	done := waitAsync(w, context.Background(), make(chan struct{}), f)
	expectPending(t, done)

	w.handle(qmp.Event{Event: "RTC_CHANGE"}) // not ours: ignored
	expectPending(t, done)
	w.handle(qmp.Event{Event: EventReplayWriteError, Data: map[string]any{
		"filename": "/run/vm/log.rr", "error": "No space left on device", "nospace": true}})
	err := expectDone(t, done)
	var le *LogWriteError
	if !errors.As(err, &le) || le.Reason != "No space left on device" || !le.NoSpace || le.File != "/run/vm/log.rr" {
		t.Fatalf("wait = %#v, want the log write error", err)
	}
	// Later events do not replace the first failure.
	w.handle(qmp.Event{Event: EventReplayWriteError, Data: map[string]any{"error": "Input/output error"}})
	if err := w.wait(context.Background(), make(chan struct{}), f.status); !errors.As(err, &le) || le.Reason != "No space left on device" {
		t.Fatalf("second wait = %v", err)
	}
}

func TestRunWatchStops(t *testing.T) {
	w := newRunWatch()
	f := &fakeStatus{}
	f.state.Store("paused")
	done := waitAsync(w, context.Background(), make(chan struct{}), f)

	// A pause for another reason (QMP stop for a handover) is no failure.
	w.handle(qmp.Event{Event: EventStop})
	expectPending(t, done)
	if f.calls.Load() != 1 {
		t.Fatalf("status read %d times after one STOP, want 1", f.calls.Load())
	}
	// query-status fails twice, then reports io-error: a disk, not the log.
	f.state.Store(RunStateIOError)
	f.fail.Store(2)
	w.handle(qmp.Event{Event: EventStop})
	if err := expectDone(t, done); !errors.Is(err, ErrIOError) {
		t.Fatalf("wait = %v, want ErrIOError", err)
	}
	if f.calls.Load() != 4 {
		t.Fatalf("status read %d times, want 4 (1 + 2 failures + 1)", f.calls.Load())
	}
}

func TestRunWatchStopBeforeWait(t *testing.T) {
	// The STOP arrives before anyone waits: it is kept.
	w := newRunWatch()
	f := &fakeStatus{}
	f.state.Store(RunStateIOError)
	w.handle(qmp.Event{Event: EventStop})
	w.handle(qmp.Event{Event: EventStop}) // never blocks the event reader
	if err := w.wait(context.Background(), make(chan struct{}), f.status); !errors.Is(err, ErrIOError) {
		t.Fatalf("wait = %v, want ErrIOError", err)
	}
}

func TestRunWatchEnds(t *testing.T) {
	w := newRunWatch()
	f := &fakeStatus{}
	f.state.Store("running")
	exited := make(chan struct{})
	done := waitAsync(w, context.Background(), exited, f)
	close(exited)
	if err := expectDone(t, done); !errors.Is(err, ErrExited) {
		t.Fatalf("wait = %v, want ErrExited", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done = waitAsync(w, ctx, make(chan struct{}), f)
	cancel()
	if err := expectDone(t, done); !errors.Is(err, context.Canceled) {
		t.Fatalf("wait = %v, want context.Canceled", err)
	}
}
