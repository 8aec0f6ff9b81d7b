package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/agent"
	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/lab"
)

// `ftvmd chaos`: one protected VM with a disk under continuous client load, and a
// series of faults (chaosKinds) at random moments. After each fault it waits for
// the VM to serve again (or for the stop the guarantees document), brings the
// failed side back, protects the VM again and goes on.
//
// Protecting again (chaosreprotect.go): a VM that runs alone after a fault (a
// failover, or a primary that carried on without its backup) is protected again
// where it runs, from a snapshot of its running state, by the agent itself or by
// `ftvmd protect`: the guest does not reboot, and a guest that rebooted all the
// same is a failed check. Only a VM that no copy runs, or whose protection in
// place failed, is restarted from its durable state: the copy that runs it (or,
// when none does, the owner of its latest epoch) is stopped, the VM is defined on
// that host with the disk it ran on (after a failover, the epoch-named disk the
// backup went live with), and protected from boot with the other host as its
// backup. Each fault says which path it took and how long it took. Every record
// acknowledged before must read back afterwards. A VM that no copy runs is
// reported as such (outcome stopped or lost), never hidden; the run then restarts
// it from boot and goes on.

// ChaosOpts selects a chaos run.
type ChaosOpts struct {
	Faults int
	Kinds  []string // kinds to draw from (all when empty); a kind named twice weighs double
	// Weights repeats a kind in the deck (WeighKinds): weight 5 draws it five
	// times per cycle.
	Weights map[string]int
	Seed    int64
	VM      string
	// MaxDuration, when set, ends the run early: no fault starts after it (the
	// fault under way finishes, the final checks run); the report says how many
	// of the planned faults ran (Planned, StoppedAt).
	MaxDuration time.Duration
	// Evidence is where the run keeps agent logs, journals, consoles and claims.
	Evidence  string
	AgentArgs []string
}

// ChaosReport is what `ftvmd chaos` prints (the last line, as JSON).
type ChaosReport struct {
	Env       Env                `json:"env"`
	Seed      int64              `json:"seed"`
	Kinds     []string           `json:"kinds"`
	DurationS float64            `json:"duration_s"`
	Faults    []ChaosFaultReport `json:"faults"`
	PerKind   []ChaosKindSummary `json:"per_kind"`
	// Records acknowledged over the whole run, and those that did not read back
	// from the VM at the end (-1: not checked, the VM did not answer; Error says why).
	RecordsAcked        int `json:"records_acked"`
	RecordsMissingAtEnd int `json:"records_missing_at_end"`
	// Guest frames seen entering the network per host, and double releases outside
	// every fault's window (while the VM was being protected again).
	FramesSeen           map[string]int `json:"frames_seen"`
	DoubleReleaseOutside int            `json:"double_release_slots_outside_faults"`
	SupersededOutside    int            `json:"released_after_superseded_outside_faults"`
	Pass                 bool           `json:"pass"`
	// RoundS: seconds per fault (its load, the fault, the re-protect, the checks);
	// ReprotectS: the re-protects' seconds per path (chaosreprotect.go).
	RoundS     Dist                   `json:"round_s"`
	ReprotectS map[ReprotectPath]Dist `json:"reprotect_s"`
	// The machine's load average (/proc/loadavg) when the run started and ended:
	// the lab shares its cores with whatever else runs.
	LoadAvgStart string `json:"loadavg_start"`
	LoadAvgEnd   string `json:"loadavg_end"`
	Evidence     string `json:"evidence,omitempty"`
	Error        string `json:"error,omitempty"` // why the run stopped early
	// Planned faults, and why fewer ran when the time limit (ChaosOpts.MaxDuration)
	// ended the run: not a failed check.
	Planned   int    `json:"planned_faults"`
	StoppedAt string `json:"stopped_at_time_limit,omitempty"`
}

// chaosRun is one run's state.
type chaosRun struct {
	s      *Session
	out    io.Writer
	vm     string
	start  time.Time
	mounts *chaosMounts
	watch  *releaseWatch
	args   []string // extra agent flags

	// The pair at this moment: the primary's host and the backup's.
	primary, backup lab.Host
	// disk is the VM's disk on each host: the image it was last defined with there,
	// or the epoch-named disk it went live with.
	disk map[string]string
	// nextRec numbers the next durable record; acked are all records acknowledged.
	nextRec int
	acked   []int
	// twoLive counts status polls in which both hosts ran a copy releasing output
	// alone (splitBrain).
	twoLive int
}

func (r *chaosRun) logf(f string, a ...any) {
	fmt.Fprintf(r.out, "%s "+f+"\n", append([]any{time.Now().UTC().Format("15:04:05.000")}, a...)...)
}

func other(h lab.Host) lab.Host {
	if h.Name == lab.HostA.Name {
		return lab.HostB
	}
	return lab.HostA
}

func hostByName(name string) (lab.Host, bool) {
	switch name {
	case lab.HostA.Name:
		return lab.HostA, true
	case lab.HostB.Name:
		return lab.HostB, true
	}
	return lab.Host{}, false
}

// startAgent starts h's agent with its own view of shared storage.
func (r *chaosRun) startAgent(ctx context.Context, h lab.Host) error {
	args := append(slices.Clone(r.args), "--shared-dir", r.mounts.viewDir(h.Name))
	return r.s.Lab.StartAgent(ctx, h, args...)
}

// RunChaos brings up the lab, protects a VM with a disk and runs the faults of the
// schedule drawn from o.Seed, reporting each. The lab goes down at the end.
func RunChaos(ctx context.Context, out io.Writer, env Env, o ChaosOpts) (rep ChaosReport, err error) {
	rep = ChaosReport{Env: env, Seed: o.Seed, FramesSeen: map[string]int{}, LoadAvgStart: loadAvg()}
	if rep.Kinds, err = WeighKinds(o.Kinds, o.Weights); err != nil {
		return rep, err
	}
	sched, err := ChaosSchedule(o.Seed, o.Faults, rep.Kinds)
	if err != nil {
		return rep, err
	}
	if o.VM == "" {
		o.VM = "chaos"
	}
	repo, err := lab.FindRepo()
	if err != nil {
		return rep, err
	}
	r := &chaosRun{out: out, vm: o.VM, start: time.Now(), args: o.AgentArgs, disk: map[string]string{}, nextRec: 1}
	l, err := lab.Up(ctx, repo, func(f string, a ...any) { r.logf("lab: "+f, a...) })
	if err != nil {
		return rep, err
	}
	r.s = &Session{Lab: l, Out: out}
	defer func() {
		// Storage first answers again (a run stopped mid-fault), the agents stop
		// while their views are still mounted, then the mounts go, then the lab.
		if r.watch != nil {
			r.watch.close()
		}
		if r.mounts != nil {
			r.mounts.resume()
			l.StopAgent(lab.HostA)
			l.StopAgent(lab.HostB)
			r.mounts.close(r.logf)
		}
		if cerr := r.s.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	hosts := []lab.Host{lab.HostA, lab.HostB}
	if r.mounts, err = setupChaosMounts(ctx, filepath.Join(lab.Root, "shared"), hosts, r.logf); err != nil {
		return rep, err
	}
	for _, h := range hosts {
		if err := r.startAgent(ctx, h); err != nil {
			return rep, err
		}
	}
	if r.watch, err = watchReleases(lab.NSNet, map[string]string{lab.HostA.Name: "port-a", lab.HostB.Name: "port-b"}, lab.GuestMAC); err != nil {
		return rep, err
	}
	img, err := lab.CreateImage(lab.HostA, o.VM, "64M")
	if err != nil {
		return rep, err
	}
	r.disk[lab.HostA.Name] = img
	if err := r.protectFrom(ctx, lab.HostA, img, false); err != nil {
		return rep, err
	}

	rep.Planned = len(sched)
	for _, f := range sched {
		if o.MaxDuration > 0 && time.Since(r.start) >= o.MaxDuration {
			rep.StoppedAt = fmt.Sprintf("time limit %s reached after %d of %d faults", o.MaxDuration, len(rep.Faults), len(sched))
			r.logf("%s", rep.StoppedAt)
			break
		}
		fr, ferr := r.round(ctx, f)
		rep.Faults = append(rep.Faults, fr)
		if ferr != nil {
			rep.Error = fmt.Sprintf("fault %d (%s): %v", f.N, f.Kind, ferr)
			r.logf("run stopped: %s", rep.Error)
			break
		}
		if ctx.Err() != nil {
			rep.Error = ctx.Err().Error()
			break
		}
	}

	// Every record acknowledged over the run must read back from the VM now.
	rep.RecordsAcked = len(r.acked)
	if missing, err := r.checkRecords(ctx, r.acked); err != nil {
		rep.RecordsMissingAtEnd = -1 // not checked: the VM does not answer
		rep.Error = strings.TrimPrefix(rep.Error+"; ", "; ") + "final record check: " + err.Error()
	} else {
		rep.RecordsMissingAtEnd = len(missing)
	}
	r.account(ctx, &rep)
	rep.PerKind = summarizeChaos(rep.Faults)
	rep.RoundS, rep.ReprotectS = faultTimes(rep.Faults)
	rep.DurationS = time.Since(r.start).Seconds()
	rep.LoadAvgEnd = loadAvg()
	rep.Pass = rep.Error == "" && rep.RecordsMissingAtEnd == 0 && rep.DoubleReleaseOutside == 0 && rep.SupersededOutside == 0
	for _, k := range rep.PerKind {
		rep.Pass = rep.Pass && k.Pass
	}
	rep.Evidence = r.keepEvidence(o.Evidence)
	if rep.Evidence != "" {
		if b, err := json.MarshalIndent(rep, "", "  "); err == nil {
			_ = os.WriteFile(filepath.Join(rep.Evidence, "report.json"), b, 0o644)
		}
	}
	return rep, nil
}

// account adds the release watch's findings to each fault (its window) and to the
// run, then judges every fault.
func (r *chaosRun) account(ctx context.Context, rep *ChaosReport) {
	var claims []epochClaim
	if st, err := disk.NewDirStore(filepath.Join(lab.Root, "shared")); err == nil {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		cs, err := st.History(cctx, r.vm)
		cancel()
		if err != nil {
			rep.Error = strings.TrimPrefix(rep.Error+"; ", "; ") + "read the epoch claims: " + err.Error()
		}
		for _, c := range cs {
			claims = append(claims, epochClaim{Epoch: c.Epoch, Owner: c.Owner, At: c.ClaimedAt})
		}
	}
	if err := r.watch.readErr(); err != nil {
		rep.Error = strings.TrimPrefix(rep.Error+"; ", "; ") + "release watch: " + err.Error()
	}
	end := time.Now().Add(time.Second)
	r.watch.with(func(l *releaseLedger) {
		for _, h := range []lab.Host{lab.HostA, lab.HostB} {
			rep.FramesSeen[h.Name] = l.frames(h.Name, r.start, end)
		}
		totalDouble, totalSup := l.doubleSlots(r.start, end), l.supersededSlots(claims, r.start, end)
		inDouble, inSup := 0, 0
		for i := range rep.Faults {
			f := &rep.Faults[i]
			f.DoubleRelease = l.doubleSlots(f.from, f.to)
			f.ReleasedSupersede = l.supersededSlots(claims, f.from, f.to)
			inDouble += f.DoubleRelease
			inSup += f.ReleasedSupersede
			// The watch must have seen the primary's output under the load before
			// the fault, or it sees nothing and its zeros prove nothing.
			if n := l.frames(f.Primary, f.from, f.from.Add(time.Duration(f.AfterS*float64(time.Second)))); n == 0 {
				f.problem("the release watch saw no output from the primary (host %s) under the load before the fault", f.Primary)
			}
		}
		rep.DoubleReleaseOutside, rep.SupersededOutside = totalDouble-inDouble, totalSup-inSup
		// The evidence for the double-release check: every slot in which both
		// hosts' frames were seen, overlapping or one after the other.
		for _, line := range l.slotsWithSeveral(r.start, end) {
			r.logf("release watch: %s", line)
		}
	})
	for i := range rep.Faults {
		rep.Faults[i].judge()
	}
}

// chaosLoad is the client load of one fault.
type chaosLoad struct {
	started       time.Time
	seqC, recC    *lab.Client
	seq, rec      *loader
	conns         *connLoad
	stopConns     context.CancelFunc
	bulk          *bulkRun
	bulkStop      chan struct{}
	cancelBulk    context.CancelFunc
	counterBefore int
}

// startLoad starts every kind of client load on the VM: requests on one long
// connection, durable records on another, a new connection every 500 ms, and bulk
// data both ways in turn on a third.
func (r *chaosRun) startLoad(ctx context.Context) (*chaosLoad, error) {
	ld := &chaosLoad{started: time.Now()}
	var err error
	if ld.seqC, err = lab.NewClient(ctx, time.Minute); err != nil {
		return nil, err
	}
	if ld.recC, err = lab.NewClient(ctx, time.Minute); err != nil {
		ld.seqC.Close()
		return nil, err
	}
	resp, err := ld.seqC.Do("counter", 10*time.Second)
	if err != nil {
		ld.seqC.Close()
		ld.recC.Close()
		return nil, fmt.Errorf("counter: %w", err)
	}
	fmt.Sscanf(resp, "counter %d", &ld.counterBefore)
	ld.seq = startLoadFrom(ctx, ld.seqC, false, 1)
	ld.rec = startLoadFrom(ctx, ld.recC, true, r.nextRec)
	cctx, cancel := context.WithCancel(ctx)
	ld.conns, ld.stopConns = startNewConns(cctx), cancel
	bctx, bcancel := context.WithCancel(ctx)
	ld.bulkStop, ld.cancelBulk = make(chan struct{}), bcancel
	stop := ld.bulkStop
	ld.bulk = startBulk(bctx, func(ctx context.Context, t LoadTarget, _ time.Duration) (Traffic, error) {
		return DriveAlternate(ctx, t, stop)
	}, 0)
	return ld, nil
}

// servedAfter says whether a client was answered at or after t.
func (ld *chaosLoad) servedAfter(t time.Time) bool {
	if ld.seq.lastAnswer.Load() >= t.UnixNano() || ld.rec.lastAnswer.Load() >= t.UnixNano() {
		return true
	}
	ld.conns.mu.Lock()
	defer ld.conns.mu.Unlock()
	return !ld.conns.lastOK.Before(t)
}

// stopLoader stops a request loader, giving the request under way grace to be
// answered before its connection is closed under it.
func stopLoader(l *loader, c *lab.Client, grace time.Duration) loadResult {
	close(l.stopc)
	select {
	case r := <-l.done:
		c.Close()
		return r
	case <-time.After(grace):
	}
	c.Close()
	return <-l.done
}

// chaosLoadResult is what the load of one fault saw.
type chaosLoadResult struct {
	seq, rec         loadResult
	connsOK, connsKO int
	connTimes        []time.Time
	bulk             Traffic
	bulkErr          error
}

// stop ends the load and collects it; requests under way get grace to be answered.
func (ld *chaosLoad) stop(grace time.Duration) chaosLoadResult {
	var res chaosLoadResult
	close(ld.bulkStop)
	done := make(chan struct{})
	go func() { // owned: waits for the bulk transfer's end, which the timer below forces
		defer close(done)
		res.bulk, res.bulkErr = ld.bulk.wait()
	}()
	res.seq = stopLoader(ld.seq, ld.seqC, grace)
	res.rec = stopLoader(ld.rec, ld.recC, grace)
	ld.stopConns()
	res.connsOK, res.connsKO = ld.conns.stop()
	ld.conns.mu.Lock()
	res.connTimes = slices.Clone(ld.conns.okTimes)
	ld.conns.mu.Unlock()
	select {
	case <-done:
	case <-time.After(3 * grace): // an 8 MiB request under way may need a few seconds
		ld.cancelBulk()
		<-done
	}
	ld.cancelBulk()
	return res
}

// copyState is one host's copy of the VM, as its agent says.
type copyState struct {
	host lab.Host
	st   control.VMStatus
	ok   bool // the agent answered and runs a copy
}

func (c copyState) live() bool {
	return c.ok && ((c.st.Role == "primary" && (c.st.State == "protected" || c.st.State == "unprotected" || c.st.State == "syncing")) || c.st.State == "live")
}

// releasesAlone: a live copy that releases the guest's output on no one's say: a
// primary alone (unprotected, or syncing a new backup) or a copy that went live. A
// protected primary releases only what its backup acknowledged, and a backup stops
// acknowledging once it claims; so a protected primary still unaware that its backup
// went live (a partition: each side sees the other silent at its own moment) can
// release only frames the new live copy's replay produced too, before its cut.
func (c copyState) releasesAlone() bool {
	return c.live() && !(c.st.Role == "primary" && c.st.State == "protected")
}

// splitBrain: the copies include two that say they run the VM live and neither is
// a protected primary gated by the other's acknowledgements: the split brain the
// epoch claim exists to prevent (the wire watch tells whether both released).
func splitBrain(cs []copyState) bool {
	n := 0
	for _, c := range cs {
		if c.releasesAlone() {
			n++
		}
	}
	return n > 1
}

// runs: the agent has a copy of the VM that has not ended (stopped, failed,
// halted or handed over).
func (c copyState) runs() bool {
	switch c.st.State {
	case "stopped", "failed", "halted", "handed-over":
		return false
	}
	return c.ok
}

// transitional: a copy on its way to an outcome (starting, claiming, going live,
// stopping, a backup that still replays and may go live; control.VMStates).
func (c copyState) transitional() bool {
	switch c.st.State {
	case "starting", "claiming", "unprotecting", "handing-over", "replaying", "going-live", "stopping":
		return c.ok
	}
	return false
}

func (r *chaosRun) copies(ctx context.Context) []copyState {
	var cs []copyState
	for _, h := range []lab.Host{lab.HostA, lab.HostB} {
		st, err := lab.Status(ctx, h, r.vm)
		cs = append(cs, copyState{host: h, st: st, ok: err == nil})
	}
	return cs
}

// settleTimeout bounds the wait for a fault's outcome.
const settleTimeout = 2 * time.Minute

// waitSettled waits until the fault has an outcome: a copy runs the VM (alone, or
// with its backup replaying) and a client was answered at or after serveFrom; or no
// copy runs it or is on its way for 5 s.
//
// A fault may take effect only after a while (a full file system fails the next
// log write): the VM unchanged counts only from unchangedFrom on.
func (r *chaosRun) waitSettled(ctx context.Context, ld *chaosLoad, serveFrom, unchangedFrom time.Time) (Outcome, string) {
	deadline := time.Now().Add(settleTimeout)
	var downSince time.Time
	for time.Now().Before(deadline) && ctx.Err() == nil {
		cs := r.copies(ctx)
		var live *copyState
		busy := false
		nLive := 0
		for i := range cs {
			if cs[i].live() {
				live = &cs[i]
				nLive++
			}
		}
		if splitBrain(cs) {
			r.twoLive++
		}
		if nLive > 1 {
			// Two copies say they run the VM live (a protected primary that has not
			// yet seen its backup go live, at least): not settled yet.
			busy = true
		}
		for _, c := range cs {
			// A backup replaying beside a protected primary is the pair, not a copy
			// on its way.
			if c.transitional() && !(c.st.State == "replaying" && live != nil && live.st.State == "protected") {
				busy = true
			}
		}
		now := time.Now()
		if live != nil && !busy && ld.servedAfter(serveFrom) {
			switch {
			case live.host.Name != r.primary.Name:
				return OutcomeFailover, live.host.Name
			case live.st.State == "unprotected":
				return OutcomeCarryOn, live.host.Name
			case live.st.State == "protected" && !now.Before(unchangedFrom):
				if o := cs[0]; o.host.Name == r.backup.Name && o.ok && o.st.Role == "backup" && o.st.State == "replaying" {
					return OutcomeUnchanged, live.host.Name
				}
				if o := cs[1]; o.host.Name == r.backup.Name && o.ok && o.st.Role == "backup" && o.st.State == "replaying" {
					return OutcomeUnchanged, live.host.Name
				}
			}
		}
		if live == nil && !busy && now.After(serveFrom) {
			if downSince.IsZero() {
				downSince = now
			}
			if now.Sub(downSince) >= 5*time.Second {
				return OutcomeStopped, ""
			}
		} else {
			downSince = time.Time{}
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	r.logf("  no outcome within %s: %s", settleTimeout, r.describeCopies(ctx))
	return OutcomeLost, ""
}

func (r *chaosRun) describeCopies(ctx context.Context) string {
	var parts []string
	for _, c := range r.copies(ctx) {
		if !c.ok {
			parts = append(parts, c.host.Name+": none")
			continue
		}
		d := c.st.Detail
		if len(d) > 160 {
			d = d[:160] + "…"
		}
		parts = append(parts, fmt.Sprintf("%s: %s %s epoch %d (%s)", c.host.Name, c.st.Role, c.st.State, c.st.Epoch, d))
	}
	return strings.Join(parts, "; ")
}

// postHeal is how long the load goes on after the fault was healed: the VM must
// serve while the failed side comes back.
const postHeal = 4 * time.Second

// unchangedAfter is how long after a fault (and its hold) the pair must still run
// the VM, protected, to count as unchanged: long enough for a fault that acts
// late (a full file system, a peer timeout) to show.
const unchangedAfter = 10 * time.Second

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// round runs one fault and protects the VM again after it. An error means the run
// cannot go on (the VM could not be protected again).
func (r *chaosRun) round(ctx context.Context, f ChaosFault) (ChaosFaultReport, error) {
	k, _ := chaosKindByName(f.Kind)
	rep := ChaosFaultReport{N: f.N, Kind: f.Kind, Expect: k.Expect, AfterS: f.After.Seconds(), HoldS: f.Hold.Seconds(),
		Primary: r.primary.Name, OutageMS: -1}
	ld, err := r.startLoad(ctx)
	if err != nil {
		rep.Outcome = OutcomeLost
		rep.problem("client load did not start: %v", err)
		return rep, err
	}
	rep.from = ld.started
	// The fault comes after f.After of load; whether the bulk transfer is moving
	// is read over the last half second of it.
	const bulkLook = 500 * time.Millisecond
	sleepCtx(ctx, f.After-bulkLook)
	bulkBefore := ld.bulk.moved()
	sleepCtx(ctx, bulkLook)
	bulkAtFault := ld.bulk.moved()
	rep.BulkMoving = bulkAtFault > bulkBefore
	t0 := time.Now()
	rep.AtS = t0.Sub(r.start).Seconds()
	r.logf("fault %d: %s (primary on %s, backup on %s, after %.1f s of load, hold %.1f s)", f.N, f.Kind, r.primary.Name, r.backup.Name, f.After.Seconds(), f.Hold.Seconds())
	heal, injErr := k.inject(ctx, r)
	healed := heal == nil
	doHeal := func() {
		if healed {
			return
		}
		healed = true
		if err := heal(ctx); err != nil {
			rep.problem("healing the fault: %v", err)
		}
	}
	defer doHeal()
	if injErr != nil {
		rep.problem("injecting the fault: %v", injErr)
	}
	if f.Hold > 0 {
		sleepCtx(ctx, f.Hold)
		doHeal()
		r.logf("  healed after %.1f s", f.Hold.Seconds())
	}
	twoLive := r.twoLive
	outcome, owner := r.waitSettled(ctx, ld, t0.Add(f.Hold), t0.Add(f.Hold+unchangedAfter))
	if n := r.twoLive - twoLive; n > 0 {
		rep.problem("both hosts said they ran the VM live, in %d status polls", n)
	}
	settled := time.Now()
	rep.Outcome, rep.Owner, rep.SettledS = outcome, owner, settled.Sub(t0).Seconds()
	r.logf("  outcome %s after %.1f s (expected %s): %s", outcome, rep.SettledS, k.Expect, r.describeCopies(ctx))
	doHeal()
	// With no copy serving, the requests under way are not answered: stop at once.
	grace := time.Second
	if outcome.alive() {
		sleepCtx(ctx, postHeal)
		grace = 10 * time.Second
	}
	res := ld.stop(grace)

	rep.Requests, rep.RequestsLost, rep.Inconsistent = res.seq.answered+res.rec.answered, res.seq.lost+res.rec.lost, res.seq.inconsistent+res.rec.inconsistent
	rep.ConnSurvived = res.seq.err == nil && res.rec.err == nil
	rep.NewConns, rep.NewConnsFail = res.connsOK, res.connsKO
	rep.RecordsAcked = len(res.rec.acked)
	r.acked = append(r.acked, res.rec.acked...)
	r.nextRec = max(r.nextRec, res.rec.lastSent+1)
	rep.BulkBytes = res.bulk.ToClientBytes + res.bulk.ToGuestBytes
	// bulkAtFault counts bytes on the wire, BulkBytes checked payload: the first
	// may run a header ahead.
	rep.BulkBytesAfter = max(0, rep.BulkBytes-bulkAtFault)
	if res.bulkErr != nil {
		rep.BulkError = res.bulkErr.Error()
		var ce *CorruptError
		if errors.As(res.bulkErr, &ce) {
			rep.BulkCorruptBytes = ce.Bytes
		}
	}

	if outcome.alive() {
		rep.OutageMS = outageAround(t0, res)
		rep.Alive, rep.GuestRebooted = r.checkAlive(ctx, ld.counterBefore)
		missing, err := r.checkRecords(ctx, res.rec.acked)
		if err != nil {
			rep.problem("reading the records back after the fault: %v", err)
			rep.RecordsMissing = len(res.rec.acked)
		} else {
			rep.RecordsMissing = len(missing)
		}
	}
	if outcome == OutcomeLost {
		rep.problem("no outcome within %s of the fault", settleTimeout)
	}

	rp, perr := r.reprotect(ctx, t0)
	rep.Reprotect, rep.ReprotectPath, rep.ReprotectS, rep.ReprotectPauseMS = rp.how, rp.path, rp.took.Seconds(), rp.pauseMS
	if perr != nil {
		rep.problem("protecting the VM again: %v", perr)
		rep.to = time.Now()
		rep.RoundS = rep.to.Sub(rep.from).Seconds()
		return rep, perr
	}
	// A guest protected again where it runs must not have rebooted meanwhile (one
	// restarted from boot did, by the run's doing).
	if rp.path.inPlace() {
		switch {
		case rp.counterBefore < 0 || rp.counterAfter < 0:
			rep.problem("the guest's counter could not be read around the in-place re-protect (%d, %d)", rp.counterBefore, rp.counterAfter)
		case rebootedAcross(rp.path, rp.counterBefore, rp.counterAfter):
			rep.GuestRebooted = true
			rep.problem("the guest rebooted during the in-place re-protect (counter %d, then %d)", rp.counterBefore, rp.counterAfter)
		}
	}
	missing, err := r.checkRecords(ctx, res.rec.acked)
	if err != nil {
		rep.problem("reading the records back after protecting again: %v", err)
		rep.RecordsMissingAfter = len(res.rec.acked)
	} else {
		rep.RecordsMissingAfter = len(missing)
	}
	rep.to = time.Now()
	rep.RoundS = rep.to.Sub(rep.from).Seconds()
	r.logf("  %s", FaultLine(rep))
	return rep, nil
}

// outageAround is the longest time clients went unanswered around a fault at t0:
// the longest gap between answers on the request connection when it survived,
// otherwise the time until a new connection was first answered after the fault.
func outageAround(t0 time.Time, res chaosLoadResult) float64 {
	if res.seq.err == nil {
		return ms(res.seq.maxGapAround(t0))
	}
	for _, t := range res.connTimes {
		if t.After(t0) {
			return ms(t.Sub(t0))
		}
	}
	return -1
}

// checkAlive says whether the VM answers a new connection and whether its guest
// rebooted (its console counter went back).
func (r *chaosRun) checkAlive(ctx context.Context, counterBefore int) (alive, rebooted bool) {
	c, err := lab.NewClient(ctx, 30*time.Second)
	if err != nil {
		return false, false
	}
	defer c.Close()
	if resp, err := c.Do("ping", 20*time.Second); err != nil || resp != "pong" {
		return false, false
	}
	resp, err := c.Do("counter", 20*time.Second)
	var n int
	if err == nil {
		fmt.Sscanf(resp, "counter %d", &n)
	}
	return true, err == nil && n < counterBefore
}

// checkRecords reads records back (pipelined, 64 at a time) and returns those that
// do not hold what the client wrote.
func (r *chaosRun) checkRecords(ctx context.Context, nums []int) ([]int, error) {
	if len(nums) == 0 {
		return nil, nil
	}
	c, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	var missing []int
	for i := 0; i < len(nums); i += 64 {
		batch := nums[i:min(i+64, len(nums))]
		var req strings.Builder
		for _, n := range batch {
			fmt.Fprintf(&req, "recget %d\n", n)
		}
		_ = c.Conn.SetDeadline(time.Now().Add(time.Minute))
		if _, err := io.WriteString(c.Conn, req.String()); err != nil {
			return nil, err
		}
		for _, n := range batch {
			resp, err := c.ReadLine()
			if err != nil {
				return nil, err
			}
			if resp != fmt.Sprintf("rec %d x%d", n, n) {
				missing = append(missing, n)
				r.logf("  acknowledged record %d reads back as %q", n, resp)
			}
		}
	}
	return missing, nil
}

// waitNoCopies waits until neither agent runs a copy of the VM.
func (r *chaosRun) waitNoCopies(ctx context.Context, timeout time.Duration) error {
	return r.waitNoCopyOn(ctx, timeout, lab.HostA, lab.HostB)
}

// waitNoCopyOn waits until the agents of hosts run no copy of the VM.
func (r *chaosRun) waitNoCopyOn(ctx context.Context, timeout time.Duration, hosts ...lab.Host) error {
	deadline := time.Now().Add(timeout)
	for {
		running := false
		for _, c := range r.copies(ctx) {
			if slices.ContainsFunc(hosts, func(h lab.Host) bool { return h.Name == c.host.Name }) && c.runs() {
				running = true
			}
		}
		if !running {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("a copy of the VM still runs %s after stop: %s", timeout, r.describeCopies(ctx))
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
}

// loadAvg is the machine's 1, 5 and 15 minute load averages.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// protectFrom defines the VM on h with diskPath and protects it from boot with the
// other host as its backup, then waits for the guest and the backup.
func (r *chaosRun) protectFrom(ctx context.Context, h lab.Host, diskPath string, force bool) error {
	if err := r.s.Lab.DefineGuest(ctx, h, r.vm, "", "--disk", diskPath); err != nil {
		return err
	}
	args := []string{"protect", r.vm, "--backup", other(h).Peer()}
	if force {
		args = append(args, "--force")
	}
	t0 := time.Now()
	if _, err := r.s.Lab.Run(ctx, h.Name, args...); err != nil {
		return err
	}
	if err := lab.WaitConsole(ctx, lab.Console(h, r.vm, "primary"), "ftguest ready", 5*time.Minute); err != nil {
		return err
	}
	if err := r.s.WaitCaughtUpOn(ctx, h, r.vm, 3*time.Minute); err != nil {
		return err
	}
	r.primary, r.backup = h, other(h)
	r.disk[h.Name] = diskPath
	r.logf("protected: primary on %s (disk %s), backup on %s, %.1f s from protect", h.Name, diskPath, other(h).Name, time.Since(t0).Seconds())
	return nil
}

// FaultLine is one fault in words.
func FaultLine(f ChaosFaultReport) string {
	verdict := "ok"
	if len(f.Problems) > 0 {
		verdict = "PROBLEMS: " + strings.Join(f.Problems, "; ")
	}
	moving := "idle"
	if f.BulkMoving {
		moving = "moving"
	}
	return fmt.Sprintf("fault %d %s: outcome %s (expected %s), owner %q, outage %.0f ms, requests %d (lost %d, inconsistent %d), records %d acked (missing %d/%d), bulk %s at the fault, %.1f MiB (%.1f after, corrupt %d), double release %d/%d, alive %v, rebooted %v, re-protect %s in %.1f s, fault %.1f s; %s",
		f.N, f.Kind, f.Outcome, f.Expect, f.Owner, f.OutageMS, f.Requests, f.RequestsLost, f.Inconsistent,
		f.RecordsAcked, f.RecordsMissing, f.RecordsMissingAfter, moving, float64(f.BulkBytes)/(1<<20), float64(f.BulkBytesAfter)/(1<<20),
		f.BulkCorruptBytes, f.DoubleRelease, f.ReleasedSupersede, f.Alive, f.GuestRebooted, f.ReprotectPath, f.ReprotectS, f.RoundS, verdict)
}

// keepEvidence copies what a diagnosis needs into dir (a fresh directory under
// /var/tmp/ftvmd-chaos when dir is empty): agent logs, journals, consoles, the
// epoch claims (RunChaos adds the report). It returns the directory.
func (r *chaosRun) keepEvidence(dir string) string {
	if dir == "" {
		dir = filepath.Join(chaosImageDir, "evidence-"+r.start.UTC().Format("20060102T150405Z"))
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		r.logf("evidence: %v", err)
		return ""
	}
	// -L: copy what a symlink points to. A VM that went live in place has its
	// primary run directory as a link to the backup's, whose files a later
	// fault replaces: evidence kept as links would then show the wrong run.
	cp := func(src, dst string) {
		if out, err := exec.Command("cp", "-RL", "--preserve=mode,timestamps", src, filepath.Join(dir, dst)).CombinedOutput(); err != nil {
			r.logf("evidence: cp %s: %v: %s", src, err, strings.TrimSpace(string(out)))
		}
	}
	for _, h := range []lab.Host{lab.HostA, lab.HostB} {
		cp(lab.AgentLog(h), "agent-"+h.Name+".log")
		js, _ := filepath.Glob(filepath.Join(h.Dir, agent.JournalFile+"*")) // and its rotated file
		for _, j := range js {
			cp(j, h.Name+"-"+filepath.Base(j))
		}
		consoles, _ := filepath.Glob(filepath.Join(r.mounts.runDir(h.Name), "*", "console.log"))
		for _, c := range consoles {
			cp(c, h.Name+"-"+filepath.Base(filepath.Dir(c))+"-console.log")
		}
	}
	cp(filepath.Join(lab.Root, "shared"), "shared")
	return dir
}
