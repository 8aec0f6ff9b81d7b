package qemu

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
)

// QMP events the Machine acts on.
const (
	// EventStop is QEMU's STOP: the VM stopped (run state in query-status).
	EventStop = "STOP"
	// EventReplayWriteError is ftvmd's engine's REPLAY_WRITE_ERROR (Engine.LogStream):
	// the rr log could not be written.
	EventReplayWriteError = "REPLAY_WRITE_ERROR"
)

// RunStateIOError is the run state of a VM that QEMU stopped on an I/O error.
const RunStateIOError = "io-error"

// LogWriteError is QEMU's report that it could not write the rr log (QMP event
// REPLAY_WRITE_ERROR). The engine then writes nothing more, so the file holds
// the events recorded before the failure; it stops the VM (run state io-error,
// which cont refuses) and drops every frame the guest transmits from then on.
type LogWriteError struct {
	File    string
	Reason  string // strerror, e.g. "No space left on device"
	NoSpace bool
}

func (e *LogWriteError) Error() string {
	return fmt.Sprintf("rr log %s: write failed: %s", e.File, e.Reason)
}

// ErrIOError is returned by WaitIOError when the VM stopped with run state
// io-error and QEMU did not report the rr log as the cause: a disk write failed
// (werror=enospc, the default), or an engine without REPLAY_WRITE_ERROR.
var ErrIOError = errors.New("qemu stopped the vm on an I/O error")

// runWatch follows QMP events for WaitIOError. handle runs on go-qemu's event
// goroutine, which also carries command replies, so it never blocks.
type runWatch struct {
	stops  chan struct{} // cap 1: a STOP or REPLAY_WRITE_ERROR came
	logErr atomic.Pointer[LogWriteError]
}

func newRunWatch() *runWatch { return &runWatch{stops: make(chan struct{}, 1)} }

func (w *runWatch) handle(e qmp.Event) {
	switch e.Event {
	case EventReplayWriteError:
		le := &LogWriteError{}
		le.File, _ = e.Data["filename"].(string)
		le.Reason, _ = e.Data["error"].(string)
		le.NoSpace, _ = e.Data["nospace"].(bool)
		if le.Reason == "" {
			le.Reason = "unknown error"
		}
		w.logErr.CompareAndSwap(nil, le)
	case EventStop:
	default:
		return
	}
	select {
	case w.stops <- struct{}{}:
	default: // one pending wake-up is enough: wait reads the state anew
	}
}

// wait blocks until the log failed or the VM is in run state io-error, ctx
// ends, or exited closes. status reads the run state.
func (w *runWatch) wait(ctx context.Context, exited <-chan struct{}, status func(context.Context) (string, error)) error {
	for {
		if le := w.logErr.Load(); le != nil {
			return le
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-exited:
			return ErrExited
		case <-w.stops:
		}
		for { // read the run state until QEMU answers
			if le := w.logErr.Load(); le != nil {
				return le
			}
			st, err := status(ctx)
			if err == nil {
				if st != RunStateIOError {
					break // paused for another reason: wait for the next stop
				}
				// REPLAY_WRITE_ERROR comes before the STOP it causes; without
				// it the cause is something else.
				if le := w.logErr.Load(); le != nil {
					return le
				}
				return ErrIOError
			}
			if ctx.Err() != nil || errors.Is(err, ErrExited) {
				return err
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-exited:
				return ErrExited
			case <-time.After(statusRetry):
			}
		}
	}
}

// statusRetry is how soon wait asks again when query-status failed.
const statusRetry = 100 * time.Millisecond

// pumpEvents hands QMP events to the watch until the monitor disconnects
// (QEMU exits). go-qemu's reader blocks on an unread event, command replies
// included, so this goroutine must always drain the channel.
func (m *Machine) pumpEvents(evs <-chan qmp.Event) {
	for e := range evs {
		if e.Event == EventReplayWriteError {
			m.log.Error("qemu could not write the rr log", "data", e.Data)
		}
		m.watch.handle(e)
	}
}

// WaitIOError blocks until QEMU stops the VM on an I/O error and returns why: a
// *LogWriteError when the rr log could not be written (ftvmd's engine reports it
// with the event REPLAY_WRITE_ERROR, Engine.LogStream), otherwise ErrIOError. It
// returns ctx's error when ctx ends, and ErrExited when QEMU exits. A VM paused
// for other reasons (QMP stop) does not end the wait. One caller at a time.
func (m *Machine) WaitIOError(ctx context.Context) error {
	return m.watch.wait(ctx, m.exitCh, func(ctx context.Context) (string, error) {
		qctx, cancel := m.qmpContext(ctx)
		defer cancel()
		return m.Status(qctx)
	})
}
