package bench

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

// PingPongRound is one failover of a ping-pong run and the re-protection after
// it.
type PingPongRound struct {
	Killed   string `json:"killed"`   // the host whose every process was SIGKILLed
	Survivor string `json:"survivor"` // the host that went live
	// LiveMS: from the kill to the survivor running alone.
	LiveMS float64 `json:"live_ms"`
	// What the survivor measured of its re-protection, no command given: the
	// window of vulnerability (its peer lost -> protected again) and its parts.
	WindowMS   float64 `json:"window_ms"`
	FailoverMS float64 `json:"failover_ms"`
	WaitMS     float64 `json:"wait_ms"`
	PauseMS    float64 `json:"pause_ms"`
	SnapshotMS float64 `json:"snapshot_ms"`
	CopyMS     float64 `json:"copy_ms"`
	CatchUpMS  float64 `json:"catch_up_ms"`
	// AgentBackS: the killed host's agent was started again this long after
	// the kill (the wait is the operator's, part of WaitMS).
	AgentBackS float64 `json:"agent_back_s"`
	// ConsoleFrom: the survivor's console size at its re-protection's snapshot
	// (the new backup's console replays from there).
	ConsoleFrom int64 `json:"console_from"`
}

// PingPongReport is a run of failovers back and forth under client load, each
// followed by automatic re-protection.
type PingPongReport struct {
	Env           Env             `json:"env"`
	Rounds        []PingPongRound `json:"rounds"`
	Requests      int             `json:"requests_answered"`
	RequestsLost  int             `json:"requests_lost"`
	Inconsistent  int             `json:"requests_inconsistent"`
	ConnSurvived  bool            `json:"tcp_connection_survived"`
	CounterBefore int             `json:"guest_counter_before"`
	CounterAfter  int             `json:"guest_counter_after"`
	GuestRebooted bool            `json:"guest_rebooted"`
	Owner         string          `json:"owner"`
	OwnerState    string          `json:"owner_state"`
	// Over the rounds: the window of vulnerability, the re-protection's pause
	// and the wait for the host.
	Window Dist `json:"window_ms"`
	Pause  Dist `json:"pause_ms"`
	Wait   Dist `json:"wait_ms"`
	// Records: the record load's figures (PingPongOpts.Records).
	Records *PingPongRecords `json:"records,omitempty"`
}

// PingPongRecords is the record load of a ping-pong run (PingPongOpts.Records):
// its requests are counted in the report's too.
type PingPongRecords struct {
	Acked int `json:"acked"` // records the guest acknowledged (durable)
	Lost  int `json:"lost"`  // record requests not answered
	// Missing: acknowledged records that did not read back at the end (-1:
	// not checked, the guest did not answer).
	Missing int `json:"missing"`
}

// PingPongOpts configures RunPingPong.
type PingPongOpts struct {
	VM        string
	Failovers int
	// AgentDown is how long a killed host stays down before its agent starts
	// again.
	AgentDown time.Duration
	// Records gives the guest a disk and runs a second client that writes
	// records to it (rec: O_SYNC writes, each a virtio-blk write and FLUSH)
	// beside the seq load, so that failovers and re-protections meet disk
	// requests in flight. Every acknowledged record must read back at the end.
	Records bool
	// Settle is how long the guest runs protected before the next kill
	// (default 2 s).
	Settle time.Duration
}

func (o PingPongOpts) settle() time.Duration {
	if o.Settle > 0 {
		return o.Settle
	}
	return 2 * time.Second
}

// RunPingPong protects a guest on host A, then Failovers times: SIGKILLs every
// process of the host that runs it, waits for the other to go live, starts the
// killed host's agent again and waits until the survivor is protected again by
// it with no command. Client requests run on one TCP connection throughout.
func RunPingPong(ctx context.Context, s *Session, env Env, o PingPongOpts) (PingPongReport, error) {
	rep := PingPongReport{Env: env}
	var define []string
	if o.Records {
		img, err := lab.CreateImage(lab.HostA, o.VM, "64M")
		if err != nil {
			return rep, err
		}
		define = []string{"--disk", img}
	}
	if _, err := s.StartGuest(ctx, o.VM, "", true, define...); err != nil {
		return rep, err
	}
	c, err := clientWithCounter(ctx, &rep.CounterBefore)
	if err != nil {
		return rep, err
	}
	defer c.Close()
	load := startLoadMode(ctx, c, false)
	defer func() {
		if load != nil {
			load.stop()
		}
	}()
	var recs *loader
	if o.Records {
		rc, err := lab.NewClient(ctx, time.Minute)
		if err != nil {
			return rep, err
		}
		defer rc.Close()
		recs = startLoadMode(ctx, rc, true)
		defer func() {
			if recs != nil {
				recs.stop()
			}
		}()
	}
	primary, backup := lab.HostA, lab.HostB
	for i := 0; i < o.Failovers; i++ {
		time.Sleep(o.settle())
		r, err := FailOverAndReprotect(ctx, s, primary, backup, o.VM, o.AgentDown)
		if err != nil {
			return rep, fmt.Errorf("round %d: %w", i+1, err)
		}
		s.logf("ping-pong %d: %s live %.1f s after the kill; protected again by %s, no command: window %.1f s (failover %.1f s, waiting for the host %.1f s, snapshot %.0f ms with a %.0f ms pause, copy %.1f s, catch-up %.1f s)",
			i+1, backup.Name, r.LiveMS/1000, primary.Name, r.WindowMS/1000, r.FailoverMS/1000, r.WaitMS/1000, r.SnapshotMS, r.PauseMS, r.CopyMS/1000, r.CatchUpMS/1000)
		rep.Rounds = append(rep.Rounds, r)
		primary, backup = backup, primary
	}
	time.Sleep(2 * time.Second)
	lr := load.stop()
	load = nil
	rep.Requests, rep.RequestsLost, rep.Inconsistent = lr.answered, lr.lost, lr.inconsistent
	rep.ConnSurvived = lr.err == nil
	if recs != nil {
		rr := recs.stop()
		recs = nil
		rep.Requests, rep.RequestsLost, rep.Inconsistent = rep.Requests+rr.answered, rep.RequestsLost+rr.lost, rep.Inconsistent+rr.inconsistent
		rep.ConnSurvived = rep.ConnSurvived && rr.err == nil
		rep.Records = &PingPongRecords{Acked: len(rr.acked), Lost: rr.lost, Missing: -1}
		if missing, err := readBackRecords(ctx, c, rr.acked); err == nil {
			rep.Records.Missing = len(missing)
		}
	}
	if a, err := c.Do("counter", 10*time.Second); err == nil {
		fmt.Sscanf(a, "counter %d", &rep.CounterAfter)
	}
	rep.GuestRebooted = rep.CounterAfter < rep.CounterBefore
	var win, pause, wait []float64
	for _, r := range rep.Rounds {
		win, pause, wait = append(win, r.WindowMS), append(pause, r.PauseMS), append(wait, r.WaitMS)
	}
	rep.Window, rep.Pause, rep.Wait = NewDist(win), NewDist(pause), NewDist(wait)
	rep.Owner = primary.Name
	if st, err := lab.Status(ctx, primary, o.VM); err == nil {
		rep.OwnerState = st.State
	}
	return rep, nil
}

// FailOverAndReprotect is one round of a ping-pong: it SIGKILLs every process of
// primary (the host running vm, protected with a backup on backup), waits for
// backup to go live, starts primary's agent again agentDown later, and waits until
// backup protected the VM again with it by itself (no command).
func FailOverAndReprotect(ctx context.Context, s *Session, primary, backup lab.Host, vm string, agentDown time.Duration) (PingPongRound, error) {
	r := PingPongRound{Killed: primary.Name, Survivor: backup.Name}
	tKill := time.Now()
	if err := killHost(primary.NS); err != nil {
		return r, err
	}
	s.logf("killed host %s", primary.Name)
	st, err := pollTolerant(ctx, backup, vm, 2*time.Minute, goneLive)
	if err != nil {
		return r, fmt.Errorf("%s did not go live: %s %s: %w", backup.Name, st.State, st.Detail, err)
	}
	r.LiveMS = ms(time.Since(tKill))
	time.Sleep(agentDown)
	waitNoProcs(primary.NS, 10*time.Second)
	if err := s.Lab.StartAgent(ctx, primary, s.agentArgs...); err != nil {
		return r, fmt.Errorf("start %s's agent again: %w", primary.Name, err)
	}
	r.AgentBackS = time.Since(tKill).Seconds()
	st, err = pollTolerant(ctx, backup, vm, 3*time.Minute, reprotectedSince(tKill))
	if errors.Is(err, errPollTimeout) {
		return r, fmt.Errorf("%s not protected again by %s: %s %s, sync %+v", backup.Name, primary.Name, st.State, st.Detail, st.Sync)
	}
	if err != nil {
		return r, err
	}
	y := st.Sync
	r.WindowMS, r.FailoverMS, r.WaitMS, r.PauseMS = y.WindowMS, y.FailoverMS, y.WaitMS, y.PauseMS
	r.SnapshotMS, r.CopyMS, r.CatchUpMS, r.ConsoleFrom = y.SnapshotMS, y.CopyMS, y.CatchUpMS, y.ConsoleFrom
	return r, nil
}

// goneLive: the copy runs the VM as the live primary (alone, syncing a new
// backup, or protected again).
func goneLive(st control.VMStatus) bool {
	return st.Role == "primary" && (st.State == "unprotected" || st.State == "syncing" || st.State == "protected")
}

// reprotectedSince: the copy is protected by an automatic re-protection that
// finished after t.
func reprotectedSince(t time.Time) func(control.VMStatus) bool {
	return func(st control.VMStatus) bool {
		return st.State == "protected" && st.Sync != nil && st.Sync.Phase == "protected" && st.Sync.Auto && st.Sync.ProtectedAt.After(t)
	}
}

// pollTolerant polls vm's status on h every 100 ms until done or timeout, taking
// a status that cannot be read (a backup is unregistered for a moment while it
// goes live) for not done yet.
func pollTolerant(ctx context.Context, h lab.Host, vm string, timeout time.Duration, done func(control.VMStatus) bool) (control.VMStatus, error) {
	deadline := time.Now().Add(timeout)
	var last control.VMStatus
	for {
		st, err := lab.Status(ctx, h, vm)
		if err == nil {
			last = st
			if done(st) {
				return st, nil
			}
		}
		if time.Now().After(deadline) {
			return last, errPollTimeout
		}
		select {
		case <-ctx.Done():
			return last, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// readBackRecords asks the guest for each acknowledged record on c and returns
// those that do not read back as written.
func readBackRecords(ctx context.Context, c *lab.Client, nums []int) ([]int, error) {
	var missing []int
	for _, n := range nums {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		resp, err := c.Do(fmt.Sprintf("recget %d", n), 10*time.Second)
		if err != nil {
			return nil, err
		}
		if resp != fmt.Sprintf("rec %d x%d", n, n) {
			missing = append(missing, n)
		}
	}
	return missing, nil
}
