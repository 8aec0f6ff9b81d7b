package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

// ProtectReport is one protection of a running VM under client load: the guest
// ran unprotected on host A for a while with a client connected, then `ftvmd
// protect` brought up its backup on host B from its running state.
type ProtectReport struct {
	Env Env `json:"env"`
	// UnprotectedS: how long the guest ran unprotected under load before protect.
	UnprotectedS float64 `json:"unprotected_s"`
	// PauseMS: the guest's pause for the snapshot (the agent's measure).
	PauseMS float64 `json:"pause_ms"`
	// CommandMS: `ftvmd protect` until it answered (snapshot taken, backup accepted).
	CommandMS float64 `json:"command_ms"`
	// ToProtectedMS: from the command to the primary protected; its parts.
	ToProtectedMS float64 `json:"to_protected_ms"`
	SnapshotMS    float64 `json:"snapshot_ms"`
	CopyMS        float64 `json:"copy_ms"`
	CatchUpMS     float64 `json:"catch_up_ms"`
	BaseBytes     int64   `json:"base_bytes"`
	// OutageMS: the longest gap between answered requests around the protect.
	OutageMS     float64 `json:"client_outage_ms"`
	Requests     int     `json:"requests_answered"`
	RequestsLost int     `json:"requests_lost"`
	Inconsistent int     `json:"requests_inconsistent"`
	ConnSurvived bool    `json:"tcp_connection_survived"`
	// ConsoleCompared: bytes of the backup's console found equal to the
	// primary's from the snapshot on (with failovers, summed over each
	// re-protection's too); SentinelChecked: what the backup's divergence
	// sentinel checked.
	ConsoleCompared int64  `json:"console_compared"`
	SentinelChecked int64  `json:"sentinel_checked"`
	Divergence      string `json:"divergence,omitempty"`
	// ReleasedHeld: frames the primary released under the output rule once
	// protected (its added delay shows the rule at work).
	AddedDelayP50MS float64 `json:"added_delay_p50_ms"`
	CounterBefore   int     `json:"guest_counter_before"`
	CounterAfter    int     `json:"guest_counter_after"`
	// DataPath: the primary's (relay or tap). InvariantFails: frames the
	// primary found breaking the output rule as it released them (agents run
	// with --check-invariant on the lab), over the protection and, with
	// failovers, over each survivor's re-protection.
	DataPath       string `json:"data_path"`
	InvariantFails uint64 `json:"invariant_failures"`
	// Rounds: the failovers after the protection (ProtectOpts.Failovers), each
	// followed by the survivor's own re-protection.
	Rounds []PingPongRound `json:"failovers,omitempty"`
}

// ProtectOpts configures RunProtect.
type ProtectOpts struct {
	VM string
	// Unprotected is how long the guest runs unprotected under load before
	// protect (after it is ready).
	Unprotected time.Duration
	// Defined: vm is defined on host A already and is not started (it runs).
	Running bool
	// After is how long the load goes on once the VM is protected.
	After time.Duration
	// Failovers: after the protection (and the consoles' comparison), this
	// many ping-pong rounds under the same load (FailOverAndReprotect): the
	// host running the VM is killed, the other goes live and protects it again
	// by itself once the killed host's agent is back (1 s later).
	Failovers int
}

// RunProtect runs a guest unprotected on host A under client load (sequence
// requests on one TCP connection), protects it from its running state with a
// backup on host B, and judges: no request lost, the pause, the time to
// protected, and the two consoles identical from the snapshot on.
func RunProtect(ctx context.Context, s *Session, env Env, o ProtectOpts) (ProtectReport, error) {
	rep := ProtectReport{Env: env, UnprotectedS: o.Unprotected.Seconds()}
	if !o.Running {
		if _, err := s.StartGuest(ctx, o.VM, "", false); err != nil {
			return rep, err
		}
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
	select {
	case <-ctx.Done():
		return rep, ctx.Err()
	case <-time.After(o.Unprotected):
	}
	st, err := ProtectRunningVM(ctx, s, lab.HostA, lab.HostB, o.VM, &rep)
	if err != nil {
		return rep, err
	}
	after := o.After
	if after == 0 {
		after = 5 * time.Second
	}
	time.Sleep(after)
	if o.Failovers > 0 {
		// The consoles of this protection, before a failover moves the VM.
		if err := judgeProtected(ctx, lab.HostA, lab.HostB, o.VM, st, &rep); err != nil {
			return rep, err
		}
		// Each copy that runs the VM counts its own invariant failures: read
		// each one's just before its host is killed, and the last one's at the end.
		fails := func(h lab.Host) uint64 {
			pst, err := lab.Status(ctx, h, o.VM)
			if err != nil {
				s.logf("status of %s on %s: %v", o.VM, h.Name, err)
				return 0
			}
			return pst.InvariantFails
		}
		var sum uint64
		primary, backup := lab.HostA, lab.HostB
		for i := 0; i < o.Failovers; i++ {
			time.Sleep(2 * time.Second)
			sum += fails(primary)
			r, err := FailOverAndReprotect(ctx, s, primary, backup, o.VM, time.Second)
			rep.Rounds = append(rep.Rounds, r)
			if err != nil {
				return rep, fmt.Errorf("failover %d: %w", i+1, err)
			}
			// The survivor's new backup replays from its snapshot: the same
			// console from there on.
			var cmp ProtectReport
			if err := CompareConsoles(ctx, backup, primary, o.VM, r.ConsoleFrom, &cmp); err != nil {
				return rep, fmt.Errorf("failover %d: %w", i+1, err)
			}
			rep.ConsoleCompared += cmp.ConsoleCompared
			if cmp.Divergence != "" && rep.Divergence == "" {
				rep.Divergence = cmp.Divergence
			}
			s.logf("failover %d: %s live %.1f s after the kill; protected again by %s, no command: window %.1f s; console identical for %d bytes from its snapshot",
				i+1, backup.Name, r.LiveMS/1000, primary.Name, r.WindowMS/1000, cmp.ConsoleCompared)
			primary, backup = backup, primary
		}
		time.Sleep(2 * time.Second)
		rep.InvariantFails = sum + fails(primary)
	}
	lr := load.stop()
	load = nil
	rep.Requests, rep.RequestsLost, rep.Inconsistent = lr.answered, lr.lost, lr.inconsistent
	rep.ConnSurvived = lr.err == nil
	rep.OutageMS = ms(lr.maxGapAround(st.Sync.StartedAt))
	if a, err := c.Do("counter", 10*time.Second); err == nil {
		fmt.Sscanf(a, "counter %d", &rep.CounterAfter)
	}
	if o.Failovers > 0 {
		return rep, nil
	}
	if err := judgeProtected(ctx, lab.HostA, lab.HostB, o.VM, st, &rep); err != nil {
		return rep, err
	}
	return rep, nil
}

// judgeProtected reads what the primary's output rule did once protected (the
// added delay, invariant failures, its data path) and compares the consoles from
// the snapshot on.
func judgeProtected(ctx context.Context, primary, backup lab.Host, vm string, st control.VMStatus, rep *ProtectReport) error {
	if pst, err := lab.Status(ctx, primary, vm); err == nil {
		rep.AddedDelayP50MS, rep.DataPath, rep.InvariantFails = pst.AddedDelayP50MS, pst.DataPath, pst.InvariantFails
	}
	return CompareConsoles(ctx, primary, backup, vm, st.Sync.ConsoleFrom, rep)
}

// ProtectRunningVM protects vm, running unprotected on primary, with a backup on
// backup, and waits until it is protected; it fills rep's timings.
func ProtectRunningVM(ctx context.Context, s *Session, primary, backup lab.Host, vm string, rep *ProtectReport) (control.VMStatus, error) {
	t0 := time.Now()
	out, err := s.Lab.Run(ctx, primary.Name, "protect", vm, "--backup", backup.Peer())
	if err != nil {
		return control.VMStatus{}, fmt.Errorf("protect %s while it runs: %w", vm, err)
	}
	rep.CommandMS = ms(time.Since(t0))
	s.logf("%s", strings.TrimSpace(out))
	st, err := pollStatus(ctx, primary, vm, 3*time.Minute, func(st control.VMStatus, _ time.Time) bool {
		return st.Sync != nil && (st.Sync.Phase == "protected" || st.Sync.Phase == "failed")
	})
	if errors.Is(err, errPollTimeout) {
		return st, fmt.Errorf("%s not protected 3 minutes after protect: %s %s, sync %+v", vm, st.State, st.Detail, st.Sync)
	}
	if err != nil {
		return st, err
	}
	if st.Sync.Phase != "protected" || st.State != "protected" {
		return st, fmt.Errorf("protect %s while it runs: %s (%s), sync %+v", vm, st.State, st.Detail, st.Sync)
	}
	rep.ToProtectedMS = ms(st.Sync.ProtectedAt.Sub(t0))
	rep.PauseMS, rep.SnapshotMS, rep.CopyMS, rep.CatchUpMS, rep.BaseBytes = st.Sync.PauseMS, st.Sync.SnapshotMS, st.Sync.CopyMS, st.Sync.CatchUpMS, st.Sync.BaseBytes
	s.logf("%s protected from its running state on %s with backup on %s: pause %.0f ms, snapshot %.0f ms, copy %.0f ms (%d bytes), catch-up %.0f ms, %.1f s after the command",
		vm, primary.Name, backup.Name, rep.PauseMS, rep.SnapshotMS, rep.CopyMS, rep.BaseBytes, rep.CatchUpMS, rep.ToProtectedMS/1000)
	return st, nil
}

// CompareConsoles waits until the backup on backup has replayed a few seconds of
// console after the snapshot, and checks it byte for byte against the primary's
// from consoleFrom on; it also reads what the backup's divergence sentinel
// checked.
func CompareConsoles(ctx context.Context, primary, backup lab.Host, vm string, consoleFrom int64, rep *ProtectReport) error {
	deadline := time.Now().Add(time.Minute)
	for {
		pc, err := os.ReadFile(lab.Console(primary, vm, "primary"))
		if err != nil {
			return err
		}
		bc, err := os.ReadFile(lab.Console(backup, vm, "backup"))
		if err != nil {
			return err
		}
		if int64(len(pc)) < consoleFrom {
			return fmt.Errorf("primary console %d bytes, the snapshot was at %d", len(pc), consoleFrom)
		}
		want := pc[consoleFrom:]
		n := min(len(bc), len(want))
		if !bytes.Equal(bc[:n], want[:n]) {
			i := 0
			for i < n && bc[i] == want[i] {
				i++
			}
			return fmt.Errorf("consoles differ at byte %d after the snapshot: backup %q, primary %q", i, bc[i:min(n, i+80)], want[i:min(n, i+80)])
		}
		rep.ConsoleCompared = int64(n)
		if bst, err := lab.Status(ctx, backup, vm); err == nil {
			rep.SentinelChecked, rep.Divergence = bst.ConsoleChecked, bst.Divergence
		}
		if n > 0 && bytes.Count(bc[:n], []byte("ftguest counter")) >= 2 && rep.SentinelChecked > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the backup's console holds %d bytes of the primary's %d after the snapshot (sentinel checked %d)", len(bc), len(want), rep.SentinelChecked)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// ProtectRunsResult is `ftvmd bench protect`: one guest under client load,
// protected from its running state, unprotected and protected again Runs times.
type ProtectRunsResult struct {
	Env          Env             `json:"env"`
	Runs         []ProtectReport `json:"runs"`
	PauseMS      Dist            `json:"pause_ms"`
	ToProtectedS Dist            `json:"to_protected_s"`
	CopyS        Dist            `json:"copy_s"`
	CatchUpS     Dist            `json:"catch_up_s"`
	OutageMS     Dist            `json:"client_outage_ms"`
	Requests     int             `json:"requests_answered"`
	RequestsLost int             `json:"requests_lost"`
	Inconsistent int             `json:"requests_inconsistent"`
	ConnSurvived bool            `json:"tcp_connection_survived"`
	LoadAvg      [2]string       `json:"load_avg_start_end"`
}

// ProtectRuns measures protecting a running VM runs times in one lab: the guest
// runs unprotected under client load; each run protects it (ftvmd protect on the
// running VM), waits until protected and a few seconds more, and unprotects it.
func ProtectRuns(ctx context.Context, s *Session, env Env, vm string, runs int) (ProtectRunsResult, error) {
	res := ProtectRunsResult{Env: env}
	res.LoadAvg[0] = loadAvg()
	if _, err := s.StartGuest(ctx, vm, "", false); err != nil {
		return res, err
	}
	c, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		return res, err
	}
	defer c.Close()
	load := startLoadMode(ctx, c, false)
	defer func() {
		if load != nil {
			load.stop()
		}
	}()
	var pause, prot, cp, cu []float64
	var starts []time.Time
	for i := 0; i < runs; i++ {
		time.Sleep(3 * time.Second)
		var rep ProtectReport
		st, err := ProtectRunningVM(ctx, s, lab.HostA, lab.HostB, vm, &rep)
		if err != nil {
			return res, fmt.Errorf("run %d: %w", i+1, err)
		}
		starts = append(starts, st.Sync.StartedAt)
		time.Sleep(3 * time.Second)
		if err := CompareConsoles(ctx, lab.HostA, lab.HostB, vm, st.Sync.ConsoleFrom, &rep); err != nil {
			return res, fmt.Errorf("run %d: %w", i+1, err)
		}
		if _, err := s.Lab.Run(ctx, "a", "unprotect", vm); err != nil {
			return res, fmt.Errorf("run %d: unprotect: %w", i+1, err)
		}
		res.Runs = append(res.Runs, rep)
		pause, prot = append(pause, rep.PauseMS), append(prot, rep.ToProtectedMS/1000)
		cp, cu = append(cp, rep.CopyMS/1000), append(cu, rep.CatchUpMS/1000)
		// The backup sees the channel end and stops; the next run needs its name free.
		time.Sleep(2 * time.Second)
	}
	lr := load.stop()
	load = nil
	res.Requests, res.RequestsLost, res.Inconsistent, res.ConnSurvived = lr.answered, lr.lost, lr.inconsistent, lr.err == nil
	var outages []float64
	for i, t := range starts {
		// The longest gap between answers from 1 s before this run's snapshot to
		// 5 s after (the next run starts later).
		var longest time.Duration
		for j := 1; j < len(lr.times); j++ {
			if lr.times[j].Before(t.Add(-time.Second)) || lr.times[j-1].After(t.Add(5*time.Second)) {
				continue
			}
			longest = max(longest, lr.times[j].Sub(lr.times[j-1]))
		}
		outages = append(outages, ms(longest))
		res.Runs[i].OutageMS = outages[i]
	}
	res.PauseMS, res.ToProtectedS, res.CopyS, res.CatchUpS, res.OutageMS = NewDist(pause), NewDist(prot), NewDist(cp), NewDist(cu), NewDist(outages)
	res.LoadAvg[1] = loadAvg()
	return res, nil
}
