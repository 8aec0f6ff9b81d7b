package bench

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/journal"
	"github.com/ftvmd/ftvmd/lab"
)

// SpareReport is RunSpare's: a VM protected on hosts a and b with every lab host
// among its backup hosts; a killed and kept down, b protected again on the
// spare host d with no command, then b killed and d live. Client requests run on
// one TCP connection throughout.
type SpareReport struct {
	Env         Env      `json:"env"`
	BackupHosts []string `json:"backup_hosts"`
	// LiveOnBMS: from a's kill to b running the VM alone.
	LiveOnBMS float64 `json:"live_on_b_ms"`
	// b's re-protection, as b measured it: the backup it chose (Sync.Backup),
	// the window of vulnerability (a's kill to protected again) and its parts.
	Backup     string  `json:"backup"`
	WindowMS   float64 `json:"window_ms"`
	WaitMS     float64 `json:"wait_ms"`
	PauseMS    float64 `json:"pause_ms"`
	SnapshotMS float64 `json:"snapshot_ms"`
	CopyMS     float64 `json:"copy_ms"`
	CatchUpMS  float64 `json:"catch_up_ms"`
	// SyncBackups: every backup b's status named for a protection started after
	// a's kill, in the order seen (b's protections that failed included).
	SyncBackups []string `json:"sync_backups"`
	// ProtectPeers: the hosts (by certificate name) of b's journalled protect
	// events after a's kill; ReprotectionsB is b's re-protections counter.
	ProtectPeers   []string `json:"protect_peers"`
	ReprotectionsB uint64   `json:"reprotections_b"`
	// SpareRole/SpareState: d's copy once b was protected again; SpareEmitted:
	// frames its replay tried to send (must be 0).
	SpareRole    string `json:"spare_role"`
	SpareState   string `json:"spare_state"`
	SpareEmitted uint64 `json:"spare_emitted_frames"`
	// ConsoleCompared: bytes of d's replayed console found equal to b's from
	// the re-protection's snapshot on; Divergence what d's sentinel saw.
	ConsoleCompared int64  `json:"console_compared"`
	Divergence      string `json:"divergence,omitempty"`
	// LiveOnDMS: from b's kill to d running the VM alone.
	LiveOnDMS float64 `json:"live_on_d_ms"`
	// DProtectPeers: protect events on d after it went live (it must find no
	// one: a and b are down, and it must not pick itself).
	DProtectPeers []string `json:"d_protect_peers"`
	Owner         string   `json:"owner"`
	OwnerState    string   `json:"owner_state"`
	OwnerDetail   string   `json:"owner_detail,omitempty"`
	// ADown: no process ran on host a at the end (it was kept down).
	ADown bool `json:"a_down"`
	// InvariantFails: frames released against the output rule, summed over
	// the live copies (a, b, then d), each read just before its host died.
	InvariantFails uint64 `json:"invariant_failures"`
	Requests       int    `json:"requests_answered"`
	RequestsLost   int    `json:"requests_lost"`
	Inconsistent   int    `json:"requests_inconsistent"`
	ConnSurvived   bool   `json:"tcp_connection_survived"`
	CounterBefore  int    `json:"guest_counter_before"`
	CounterAfter   int    `json:"guest_counter_after"`
	GuestRebooted  bool   `json:"guest_rebooted"`
}

// SpareOpts configures RunSpare.
type SpareOpts struct {
	VM string
	// Settle is how long d runs alone before the end, time enough for its
	// re-protection rounds to probe every backup host (itself included).
	Settle time.Duration
}

// RunSpare starts an agent on the spare host d, defines vm on a with the agent
// addresses of a, b and d as its backup hosts (one list for every host: a copy
// must skip itself, and a host that stays down), protects it on b, and under
// client load: SIGKILLs every process of a and keeps it down; waits for b to go
// live and, with no command, to protect the VM again with its backup on d; then
// SIGKILLs every process of b and waits for d to go live. It returns what it saw;
// the caller judges. An error means a step did not happen in time.
func RunSpare(ctx context.Context, s *Session, env Env, o SpareOpts) (SpareReport, error) {
	a, b, d := lab.HostA, lab.HostB, lab.HostD
	rep := SpareReport{Env: env, BackupHosts: []string{a.Peer(), b.Peer(), d.Peer()}}
	if err := s.Lab.StartAgent(ctx, d, s.agentArgs...); err != nil {
		return rep, err
	}
	var define []string
	for _, h := range rep.BackupHosts {
		define = append(define, "--backup-host", h)
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
	invariant := func(h lab.Host) uint64 {
		st, err := lab.Status(ctx, h, o.VM)
		if err != nil {
			s.logf("status of %s on %s: %v", o.VM, h.Name, err)
			return 0
		}
		return st.InvariantFails
	}

	time.Sleep(2 * time.Second)
	rep.InvariantFails += invariant(a)
	tKillA := time.Now()
	if err := killHost(a.NS); err != nil {
		return rep, err
	}
	s.logf("killed host a (kept down)")
	st, err := pollTolerant(ctx, b, o.VM, 2*time.Minute, goneLive)
	if err != nil {
		return rep, fmt.Errorf("b did not go live after a's kill: %s %s: %w", st.State, st.Detail, err)
	}
	rep.LiveOnBMS = ms(time.Since(tKillA))
	reprotected := reprotectedSince(tKillA)
	st, err = pollTolerant(ctx, b, o.VM, 2*time.Minute, func(st control.VMStatus) bool {
		if y := st.Sync; y != nil && y.StartedAt.After(tKillA) {
			if n := len(rep.SyncBackups); n == 0 || rep.SyncBackups[n-1] != y.Backup {
				rep.SyncBackups = append(rep.SyncBackups, y.Backup)
			}
		}
		return reprotected(st)
	})
	if errors.Is(err, errPollTimeout) {
		return rep, fmt.Errorf("b not protected again on a spare 2 minutes after a's kill: %s %s, sync %+v", st.State, st.Detail, st.Sync)
	}
	if err != nil {
		return rep, err
	}
	y := st.Sync
	rep.Backup, rep.WindowMS, rep.WaitMS, rep.PauseMS = y.Backup, y.WindowMS, y.WaitMS, y.PauseMS
	rep.SnapshotMS, rep.CopyMS, rep.CatchUpMS = y.SnapshotMS, y.CopyMS, y.CatchUpMS
	s.logf("b protected again by itself with backup %s: window %.1f s (waiting for a host %.1f s, pause %.0f ms, copy %.1f s, catch-up %.1f s)",
		y.Backup, y.WindowMS/1000, y.WaitMS/1000, y.PauseMS, y.CopyMS/1000, y.CatchUpMS/1000)
	if rep.ProtectPeers, err = protectPeers(ctx, b, o.VM, tKillA); err != nil {
		return rep, err
	}
	if rep.ReprotectionsB, err = reprotections(ctx, b, o.VM); err != nil {
		return rep, err
	}
	if dst, err := lab.Status(ctx, d, o.VM); err == nil {
		rep.SpareRole, rep.SpareState = dst.Role, dst.State
	} else {
		s.logf("status of %s on d: %v", o.VM, err)
	}
	var cmp ProtectReport
	if err := CompareConsoles(ctx, b, d, o.VM, y.ConsoleFrom, &cmp); err != nil {
		return rep, fmt.Errorf("b's console against d's replay: %w", err)
	}
	rep.ConsoleCompared, rep.Divergence = cmp.ConsoleCompared, cmp.Divergence
	if dst, err := lab.Status(ctx, d, o.VM); err == nil {
		rep.SpareEmitted = dst.EmittedFrames
	}

	time.Sleep(2 * time.Second)
	rep.InvariantFails += invariant(b)
	tKillB := time.Now()
	if err := killHost(b.NS); err != nil {
		return rep, err
	}
	s.logf("killed host b")
	st, err = pollTolerant(ctx, d, o.VM, 2*time.Minute, goneLive)
	if err != nil {
		return rep, fmt.Errorf("d did not go live after b's kill: %s %s: %w", st.State, st.Detail, err)
	}
	rep.LiveOnDMS = ms(time.Since(tKillB))
	s.logf("d live %.1f s after b's kill", rep.LiveOnDMS/1000)
	select {
	case <-ctx.Done():
		return rep, ctx.Err()
	case <-time.After(o.Settle):
	}
	lr := load.stop()
	load = nil
	rep.Requests, rep.RequestsLost, rep.Inconsistent = lr.answered, lr.lost, lr.inconsistent
	rep.ConnSurvived = lr.err == nil
	if ans, err := c.Do("counter", 10*time.Second); err == nil {
		fmt.Sscanf(ans, "counter %d", &rep.CounterAfter)
	}
	rep.GuestRebooted = rep.CounterAfter < rep.CounterBefore
	rep.Owner = d.Name
	if st, err := lab.Status(ctx, d, o.VM); err == nil {
		rep.OwnerState, rep.OwnerDetail = st.State, st.Detail
		rep.InvariantFails += st.InvariantFails
	} else {
		return rep, fmt.Errorf("status of %s on d at the end: %w", o.VM, err)
	}
	if rep.DProtectPeers, err = protectPeers(ctx, d, o.VM, tKillB); err != nil {
		return rep, err
	}
	out, err := exec.Command("ip", "netns", "pids", a.NS).Output()
	rep.ADown = err == nil && strings.TrimSpace(string(out)) == ""
	return rep, nil
}

// protectPeers reads h's journal for vm: the peers of its protect events since
// since (a protect names its backup's host by its certificate name).
func protectPeers(ctx context.Context, h lab.Host, vm string, since time.Time) ([]string, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := control.Call(cctx, h.Socket, control.Request{Op: control.OpEvents, VM: vm, Limit: control.MaxEventLimit})
	if err != nil {
		return nil, fmt.Errorf("events of %s on %s: %w", vm, h.Name, err)
	}
	peers := []string{}
	for _, e := range resp.Events {
		if e.Kind == journal.KindProtect && !e.Time.Before(since) {
			peers = append(peers, e.Peer)
		}
	}
	return peers, nil
}

// reprotections is h's re-protections counter for vm.
func reprotections(ctx context.Context, h lab.Host, vm string) (uint64, error) {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := control.Call(cctx, h.Socket, control.Request{Op: control.OpStatus})
	if err != nil {
		return 0, fmt.Errorf("status of %s: %w", h.Name, err)
	}
	i := slices.IndexFunc(resp.Counters, func(c control.VMCounters) bool { return c.Name == vm })
	if i < 0 {
		return 0, fmt.Errorf("%s counts nothing for %s", h.Name, vm)
	}
	return resp.Counters[i].Reprotections, nil
}
