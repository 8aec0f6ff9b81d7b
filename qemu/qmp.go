package qemu

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
)

// ReplayInfo is QMP query-replay's answer. Mode is "none", "record" or
// "play"; Icount is the raw instruction count.
type ReplayInfo struct {
	Mode     string `json:"mode"`
	Filename string `json:"filename,omitempty"`
	Icount   uint64 `json:"icount"`
}

// monitor returns the connected QMP monitor and its typed view (nil before
// connect-qmp).
func (m *Machine) monitor() (qmp.Monitor, *raw.Monitor) {
	m.monMu.Lock()
	defer m.monMu.Unlock()
	return m.mon, m.raw
}

// qmpContext gives ctx the default QMP deadline when it has none.
func (m *Machine) qmpContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, m.qmpTimeout)
}

// call runs fn (one blocking go-qemu call) in a goroutine owned by the
// Machine and waits for it, ctx's deadline, or the process's exit. go-qemu's
// Run has no deadline: after a timeout the goroutine stays until QEMU
// answers or the monitor is disconnected when QEMU exits.
func (m *Machine) call(ctx context.Context, name string, fn func(qmp.Monitor, *raw.Monitor) error) error {
	m.monMu.Lock()
	mon, r, gone := m.mon, m.raw, m.procGone
	if !gone && mon != nil {
		m.calls.Add(1) // under monMu: waitProcess sets procGone before calls.Wait
	}
	m.monMu.Unlock()
	switch {
	case gone:
		return fmt.Errorf("qmp %s: %w", name, ErrExited)
	case mon == nil:
		return fmt.Errorf("qmp %s: %w", name, ErrNotStarted)
	}
	ctx, cancel := m.qmpContext(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		defer m.calls.Done()
		done <- fn(mon, r)
	}()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("qmp %s: %w", name, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qmp %s: %w", name, ctx.Err())
	case <-m.exitCh:
		return fmt.Errorf("qmp %s: %w", name, ErrExited)
	}
}

// runTyped runs a QMP command that go-qemu's generated raw API lacks and
// decodes its "return" member into ret (which may be nil).
func (m *Machine) runTyped(ctx context.Context, cmd qmp.Command, ret any) error {
	bs, err := json.Marshal(cmd)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", cmd.Execute, err)
	}
	return m.call(ctx, cmd.Execute, func(mon qmp.Monitor, _ *raw.Monitor) error {
		out, err := mon.Run(bs)
		if err != nil {
			return err
		}
		if ret == nil {
			return nil
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
		}
		if err := json.Unmarshal(out, &resp); err != nil {
			return fmt.Errorf("decode reply: %w", err)
		}
		if err := json.Unmarshal(resp.Return, ret); err != nil {
			return fmt.Errorf("decode reply: %w", err)
		}
		return nil
	})
}

// QueryReplay runs query-replay (absent from go-qemu's generated API).
func (m *Machine) QueryReplay(ctx context.Context) (ReplayInfo, error) {
	var ri ReplayInfo
	err := m.runTyped(ctx, qmp.Command{Execute: "query-replay"}, &ri)
	return ri, err
}

// Status returns the run state, e.g. "running", "paused", "shutdown".
func (m *Machine) Status(ctx context.Context) (string, error) {
	var st raw.StatusInfo
	err := m.call(ctx, "query-status", func(_ qmp.Monitor, r *raw.Monitor) (err error) {
		st, err = r.QueryStatus()
		return err
	})
	if err != nil {
		return "", err
	}
	return st.Status.String(), nil
}

// probeCall is one liveness probe's query-status, shared by every Probe that
// waits while it is out.
type probeCall struct {
	done chan struct{} // closed when QEMU answered or the monitor went away
	err  error         // written before done closes
}

// Probe asks QEMU whether it answers (query-status) and waits for the answer, ctx's
// end, or the process's exit. It is the liveness probe: at most one probe command
// is out at a time. go-qemu cannot take a command back, so a probe that outlives
// ctx stays out until QEMU answers it (or exits); a later Probe waits for that same
// command rather than queue another behind it, so that a QEMU wedged for hours
// holds one goroutine, not one per probe. The answer to the probe in flight
// answers every Probe waiting on it.
//
// The monitor runs one command at a time: a probe sent while a long command (a
// savevm) runs is answered after it. How long a probe may wait is the caller's
// judgement (see the agent's qemuWatch), not a fault here.
func (m *Machine) Probe(ctx context.Context) error {
	m.probeMu.Lock()
	pc := m.probe
	if pc == nil {
		m.monMu.Lock()
		r, gone := m.raw, m.procGone
		if !gone && r != nil {
			m.calls.Add(1) // under monMu: waitProcess sets procGone before calls.Wait
		}
		m.monMu.Unlock()
		switch {
		case gone:
			m.probeMu.Unlock()
			return fmt.Errorf("qmp query-status: %w", ErrExited)
		case r == nil:
			m.probeMu.Unlock()
			return fmt.Errorf("qmp query-status: %w", ErrNotStarted)
		}
		pc = &probeCall{done: make(chan struct{})}
		m.probe = pc
		// Owned by the Machine (calls): it ends when QEMU answers or waitProcess
		// disconnects the monitor.
		go func() {
			defer m.calls.Done()
			_, err := r.QueryStatus()
			m.probeMu.Lock()
			pc.err = err
			m.probe = nil
			m.probeMu.Unlock()
			close(pc.done)
		}()
	}
	m.probeMu.Unlock()
	select {
	case <-pc.done:
		if pc.err != nil {
			return fmt.Errorf("qmp query-status: %w", pc.err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qmp query-status: %w", ctx.Err())
	case <-m.exitCh:
		return fmt.Errorf("qmp query-status: %w", ErrExited)
	}
}

// Cont resumes the guest.
func (m *Machine) Cont(ctx context.Context) error {
	return m.call(ctx, "cont", func(_ qmp.Monitor, r *raw.Monitor) error { return r.Cont() })
}

// Pause stops the guest's vCPU (QMP stop).
func (m *Machine) Pause(ctx context.Context) error {
	return m.call(ctx, "stop", func(_ qmp.Monitor, r *raw.Monitor) error { return r.Stop() })
}

// HMP runs a human monitor command (e.g. "savevm tag") and returns its text.
// Note that HMP reports many failures in the text, not as a QMP error.
func (m *Machine) HMP(ctx context.Context, cmdline string) (string, error) {
	var out string
	err := m.call(ctx, "human-monitor-command", func(_ qmp.Monitor, r *raw.Monitor) (err error) {
		out, err = r.HumanMonitorCommand(cmdline, nil)
		return err
	})
	return out, err
}

// announceArgs are announce-self's arguments; QEMU 7.2 requires all four
// (the values are QEMU's own -global defaults, in milliseconds).
type announceArgs struct {
	Initial int64 `json:"initial"`
	Max     int64 `json:"max"`
	Rounds  int64 `json:"rounds"`
	Step    int64 `json:"step"`
}

// AnnounceSelf makes the guest NIC send gratuitous announcements so that
// switches learn the MAC's new port (absent from go-qemu's generated API).
func (m *Machine) AnnounceSelf(ctx context.Context) error {
	args := announceArgs{Initial: 50, Max: 550, Rounds: 5, Step: 100}
	return m.runTyped(ctx, qmp.Command{Execute: "announce-self", Args: args}, nil)
}

// Quit asks QEMU to exit (QMP quit). QEMU may close the socket before it
// answers; Stop waits for the exit itself.
func (m *Machine) Quit(ctx context.Context) error {
	return m.call(ctx, "quit", func(_ qmp.Monitor, r *raw.Monitor) error { return r.Quit() })
}

// replayNotAtEnd is in x-replay-go-live's refusal while the replay has events
// left before the end of its log (replay/replay.c of ftvmd's engine).
const replayNotAtEnd = "has not reached the end of its log"

// goLiveArgs are x-replay-go-live's arguments.
type goLiveArgs struct {
	RRFile string `json:"rrfile"`
	Icount uint64 `json:"icount"`
}

// GoLiveInPlace runs x-replay-go-live (Engine.InPlaceGoLive): the replaying
// QEMU, parked before the EVENT_END that ends its log at instruction icount,
// carries on as a recording VM, writing its new log to rrfile. A replay that
// has not consumed its log up to EVENT_END yet refuses with ErrNotAtLogEnd,
// and may be asked again. On success the Machine's Config says ModeRecord,
// RRFile rrfile, LogStream.
func (m *Machine) GoLiveInPlace(ctx context.Context, rrfile string, icount uint64) error {
	err := m.runTyped(ctx, qmp.Command{Execute: "x-replay-go-live", Args: goLiveArgs{RRFile: rrfile, Icount: icount}}, nil)
	if err != nil {
		if strings.Contains(err.Error(), replayNotAtEnd) {
			return fmt.Errorf("%w: %w", ErrNotAtLogEnd, err)
		}
		return err
	}
	m.cfgMu.Lock()
	m.cfg.Mode, m.cfg.RRFile, m.cfg.LogStream = ModeRecord, rrfile, true
	m.cfg.RRSnapshot, m.cfg.LoadVM = "", ""
	m.cfgMu.Unlock()
	return nil
}
