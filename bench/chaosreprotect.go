package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/disk"
	"github.com/ftvmd/ftvmd/lab"
)

// Protecting the VM again after a fault. A fault that leaves the VM running alone
// on one host (a failover, or a primary that carried on without its backup) is
// followed by a protection of the running VM where it lives, as an operator or
// the agent itself does it (agent/protect.go: a savevm snapshot, copied to the
// other host, from which the new backup replays): the guest does not reboot and
// its clients stay connected. Two paths lead there, both product behaviour:
//
//   - the agent's automatic re-protection: a copy that runs alone after a
//     failover (or a primary that outlived its backup) probes the lost peer's
//     agent every second and protects itself again with it once the agent, found
//     down, answers again (a killed host started again): the run waits for it;
//   - the operator's `ftvmd protect <vm> --backup <peer>` on the host that runs
//     it, for every other case: the agent leaves a peer that stayed up (its own
//     copy failed: a QEMU crash, a full disk) to the operator (lifecycle
//     Machine.peerDown). A dead copy on the peer (failed, halted) is stopped first
//     so that the new backup can register.
//
// Only when no copy runs the VM, or the protection of the running VM fails, is it
// restarted from boot from its durable state (restartFromBoot).

// ReprotectPath is how the VM was protected again after a fault.
type ReprotectPath string

// Reprotect paths, as ChaosFaultReport.ReprotectPath names them.
const (
	// ReprotectUnchanged: the pair still protected the VM; nothing to do.
	ReprotectUnchanged ReprotectPath = "unchanged"
	// ReprotectAuto: the agent protected its running VM again by itself (its
	// lost peer's agent came back).
	ReprotectAuto ReprotectPath = "in-place-auto"
	// ReprotectInPlace: `ftvmd protect` of the running VM, from the chaos run.
	ReprotectInPlace ReprotectPath = "in-place"
	// ReprotectBoot: stopped and protected from boot from its durable state.
	ReprotectBoot ReprotectPath = "boot"
)

// inPlace says whether the VM kept running through its re-protection.
func (p ReprotectPath) inPlace() bool { return p == ReprotectAuto || p == ReprotectInPlace }

// reprotectStep is what the copies' states call for.
type reprotectStep int

const (
	// stepUnchanged: a protected primary with its backup replaying.
	stepUnchanged reprotectStep = iota
	// stepWaitSync: the live copy is bringing up a backup from its running state
	// already (the agent's own re-protection): wait for it.
	stepWaitSync
	// stepProtect: the live copy runs unprotected: protect it where it runs.
	stepProtect
	// stepWait: a copy is on its way to an outcome (a backup still replaying
	// after its channel ended, a backup turning into the live primary, a copy
	// stopping): look again shortly.
	stepWait
	// stepBoot: no copy can be protected in place (none runs the VM, or both
	// say they do): restart from boot.
	stepBoot
)

// reprotectPlan is what to do to protect the VM again, from the copies' states.
type reprotectPlan struct {
	step       reprotectStep
	live, peer lab.Host
	// stopPeer: the peer holds a copy that runs no more (failed, halted, handed
	// over); it is stopped so that a new backup can register there.
	stopPeer bool
	why      string // stepWait, stepBoot: why
}

// planReprotect decides from the two hosts' copies (copies()) how the VM is
// protected again.
func planReprotect(cs []copyState) reprotectPlan {
	var live []copyState
	for _, c := range cs {
		if c.live() {
			live = append(live, c)
		}
	}
	switch len(live) {
	case 0:
		return reprotectPlan{step: stepBoot, why: "no copy runs the VM"}
	case 1:
	default:
		return reprotectPlan{step: stepBoot, why: "both hosts say they run the VM live"}
	}
	l := live[0]
	var p copyState
	for _, c := range cs {
		if c.host.Name != l.host.Name {
			p = c
		}
	}
	plan := reprotectPlan{live: l.host, peer: other(l.host)}
	if l.st.Role != "primary" {
		// A backup that went live shows as a primary once its go-live is done.
		plan.step, plan.why = stepWait, fmt.Sprintf("the live copy on %s is a %s %s", l.host.Name, l.st.Role, l.st.State)
		return plan
	}
	switch l.st.State {
	case "protected":
		if p.ok && p.st.Role == "backup" && p.st.State == "replaying" {
			plan.step = stepUnchanged
			return plan
		}
		plan.step, plan.why = stepWait, fmt.Sprintf("the primary on %s is protected, its peer %s", l.host.Name, peerState(p))
		return plan
	case "syncing":
		plan.step = stepWaitSync
		return plan
	case "unprotected":
	default:
		plan.step, plan.why = stepBoot, fmt.Sprintf("the live copy on %s is %s", l.host.Name, l.st.State)
		return plan
	}
	switch {
	case !p.ok || p.st.State == "stopped":
		plan.step = stepProtect
	case p.st.State == "failed" || p.st.State == "halted" || p.st.State == "handed-over":
		plan.step, plan.stopPeer = stepProtect, true
	case p.transitional():
		plan.step, plan.why = stepWait, fmt.Sprintf("its peer %s", peerState(p))
	default:
		plan.step, plan.why = stepBoot, fmt.Sprintf("the primary on %s runs unprotected and its peer %s", l.host.Name, peerState(p))
	}
	return plan
}

func peerState(c copyState) string {
	if !c.ok {
		return "on " + c.host.Name + " runs no copy"
	}
	return fmt.Sprintf("on %s is a %s %s", c.host.Name, c.st.Role, c.st.State)
}

// syncOutcome reads a primary's status for the end of a protection of its
// running state that started at or after since: done once protected (ok) or
// failed (ok false, why says what failed).
func syncOutcome(st control.VMStatus, since time.Time) (done, ok bool, why string) {
	y := st.Sync
	if y == nil || y.StartedAt.Before(since) {
		return false, false, ""
	}
	switch {
	case y.Phase == "failed":
		return true, false, y.Error
	case y.Phase == "protected" && st.State == "protected":
		return true, true, ""
	case st.State != "syncing" && st.State != "protected":
		// The sync ended without protection (the VM stopped, failed or was
		// superseded meanwhile).
		return true, false, fmt.Sprintf("the primary is %s (%s), sync %s", st.State, st.Detail, y.Phase)
	}
	return false, false, ""
}

// rebootedAcross says whether the guest rebooted during a re-protection that
// kept it running, from its console counter (seconds since boot) before and
// after. A restart from boot reboots it by design: not counted.
func rebootedAcross(path ReprotectPath, before, after int) bool {
	return path.inPlace() && after < before
}

// reprotectResult is how the VM was protected again after a fault.
type reprotectResult struct {
	how  string
	path ReprotectPath
	took time.Duration
	// pauseMS: the guest's pause for the snapshot of an in-place re-protection.
	pauseMS float64
	// counterBefore, counterAfter: the guest's counter before and after an
	// in-place re-protection (-1 when it could not be read).
	counterBefore, counterAfter int
}

// planWait bounds how long the run waits for a copy on its way to an outcome
// before it restarts the VM from boot.
const planWait = 30 * time.Second

// syncWait bounds the wait for a protection of the running VM: the agent's own
// catch-up limit (3 min) after a copy of the base.
const syncWait = 5 * time.Minute

// reprotect brings the VM back to a protected pair: unchanged if it still is one;
// otherwise protected again where it runs, or restarted from boot from its durable
// state when that cannot be done (the comment at the top of this file). since is
// the fault: an automatic re-protection counts only if it started after it.
func (r *chaosRun) reprotect(ctx context.Context, since time.Time) (res reprotectResult, err error) {
	t0 := time.Now()
	res.counterBefore, res.counterAfter = -1, -1
	defer func() { res.took = time.Since(t0) }()
	var notes []string
	for _, h := range []lab.Host{lab.HostA, lab.HostB} {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := control.Call(cctx, h.Socket, control.Request{Op: control.OpPing})
		cancel()
		if err != nil {
			if r.s.Lab.AgentPID(h) != 0 {
				_ = r.s.Lab.SignalAgent(h, os.Kill, 5*time.Second)
			}
			if err := r.startAgent(ctx, h); err != nil {
				res.how = strings.Join(notes, "; ")
				return res, fmt.Errorf("agent %s does not answer and does not start: %w", h.Name, err)
			}
			notes = append(notes, "agent "+h.Name+" was down: started")
		}
	}
	deadline := time.Now().Add(planWait)
	var cs []copyState
	var plan reprotectPlan
	for {
		cs = r.copies(ctx)
		plan = planReprotect(cs)
		if plan.step != stepWait || ctx.Err() != nil {
			break
		}
		if time.Now().After(deadline) {
			plan = reprotectPlan{step: stepBoot, why: fmt.Sprintf("no outcome within %s: %s", planWait, plan.why)}
			break
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
	switch plan.step {
	case stepUnchanged:
		if err := r.s.WaitCaughtUpOn(ctx, plan.live, r.vm, 3*time.Minute); err != nil {
			res.how, res.path = "still protected", ReprotectUnchanged
			return res, err
		}
		r.primary, r.backup = plan.live, plan.peer
		res.how, res.path = strings.Join(append(notes, "still protected, primary on "+plan.live.Name), "; "), ReprotectUnchanged
		return res, nil
	case stepWaitSync, stepProtect:
		res.counterBefore = r.guestCounter(ctx)
		how, path, pause, err := r.protectInPlace(ctx, plan, since)
		if err == nil {
			res.counterAfter = r.guestCounter(ctx)
			res.how, res.path, res.pauseMS = strings.Join(append(notes, how), "; "), path, pause
			return res, nil
		}
		r.logf("  in-place re-protect failed, restarting from boot: %v", err)
		notes = append(notes, fmt.Sprintf("in place on %s failed (%v)", plan.live.Name, err))
		cs = r.copies(ctx)
	default:
		notes = append(notes, "not in place: "+plan.why)
	}
	how, err := r.restartFromBoot(ctx, cs)
	res.how, res.path = strings.Join(append(notes, how), "; "), ReprotectBoot
	return res, err
}

// protectInPlace protects the VM again where it runs (plan.live), with the other
// host as its backup: it waits for the agent's own re-protection when one is
// under way, or asks for one with `ftvmd protect` (the operator's command). It
// returns what it did, which path it was and the guest's pause for the snapshot.
func (r *chaosRun) protectInPlace(ctx context.Context, plan reprotectPlan, since time.Time) (string, ReprotectPath, float64, error) {
	if plan.stopPeer {
		// A dead copy keeps its name registered on the peer: stop it so that
		// the new backup can register there.
		if _, err := r.s.Lab.Run(ctx, plan.peer.Name, "stop", r.vm); err != nil {
			r.logf("  stop the dead copy on %s: %v", plan.peer.Name, err)
		}
		if err := r.waitNoCopyOn(ctx, 30*time.Second, plan.peer); err != nil {
			return "", "", 0, err
		}
	}
	from := since
	if plan.step == stepProtect {
		from = time.Now()
		if _, err := r.s.Lab.Run(ctx, plan.live.Name, "protect", r.vm, "--backup", plan.peer.Peer()); err != nil {
			// The agent may have started its own re-protection meanwhile: it
			// refuses the command then, and the run waits for that one.
			st, serr := lab.Status(ctx, plan.live, r.vm)
			if serr != nil || st.State != "syncing" {
				return "", "", 0, err
			}
			from = since
		}
	}
	var why string
	var ok bool
	st, err := pollTolerant(ctx, plan.live, r.vm, syncWait, func(st control.VMStatus) bool {
		var done bool
		done, ok, why = syncOutcome(st, from)
		return done
	})
	if errors.Is(err, errPollTimeout) {
		return "", "", 0, fmt.Errorf("not protected %s after it started: %s (%s), sync %+v", syncWait, st.State, st.Detail, st.Sync)
	}
	if err != nil {
		return "", "", 0, err
	}
	if !ok {
		return "", "", 0, fmt.Errorf("protection of the running VM failed: %s", why)
	}
	if err := r.s.WaitCaughtUpOn(ctx, plan.live, r.vm, 3*time.Minute); err != nil {
		return "", "", 0, err
	}
	r.primary, r.backup = plan.live, plan.peer
	if st.Disk != "" {
		r.disk[plan.live.Name] = st.Disk
	}
	y := st.Sync
	path, by := ReprotectInPlace, "ftvmd protect"
	if y.Auto {
		path, by = ReprotectAuto, "the agent itself"
	}
	how := fmt.Sprintf("protected in place on %s by %s, backup on %s: guest paused %.0f ms, snapshot %.0f ms, copy %.1f s (%.1f MiB), catch-up %.1f s",
		plan.live.Name, by, plan.peer.Name, y.PauseMS, y.SnapshotMS, y.CopyMS/1000, float64(y.BaseBytes)/(1<<20), y.CatchUpMS/1000)
	if plan.stopPeer {
		how += " (its dead copy on " + plan.peer.Name + " stopped first)"
	}
	r.logf("  %s", how)
	return how, path, y.PauseMS, nil
}

// guestCounter is the guest's console counter (seconds since its boot), or -1
// when it cannot be read.
func (r *chaosRun) guestCounter(ctx context.Context) int {
	c, err := lab.NewClient(ctx, 30*time.Second)
	if err != nil {
		return -1
	}
	defer c.Close()
	resp, err := c.Do("counter", 20*time.Second)
	var n int
	if err != nil {
		return -1
	}
	if _, err := fmt.Sscanf(resp, "counter %d", &n); err != nil {
		return -1
	}
	return n
}

// restartFromBoot stops every copy and protects the VM from boot from its durable
// state: on the host of the copy that runs it, or when none does on the owner of
// its latest epoch, with the disk it ran on.
func (r *chaosRun) restartFromBoot(ctx context.Context, cs []copyState) (string, error) {
	var notes []string
	// Where the VM's durable state is: the copy that runs it, or the owner of its
	// latest epoch.
	var owner lab.Host
	var diskPath string
	for _, c := range cs {
		if c.live() {
			owner, diskPath = c.host, c.st.Disk
		}
	}
	if owner.Name == "" {
		st, err := disk.NewDirStore(filepath.Join(lab.Root, "shared"))
		if err != nil {
			return "", err
		}
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		claim, err := st.Current(cctx, r.vm)
		cancel()
		if err != nil {
			return "", fmt.Errorf("no copy runs the VM and its latest epoch cannot be read: %w", err)
		}
		h, ok := hostByName(claim.Owner)
		if !ok {
			return "", fmt.Errorf("no copy runs the VM and its latest epoch %d has owner %q", claim.Epoch, claim.Owner)
		}
		owner = h
		// A backup that went live runs on the epoch-named disk of that epoch.
		if p := filepath.Join(h.Dir, "disks", fmt.Sprintf("%s.epoch-%020d.qcow2", r.vm, claim.Epoch)); fileExists(p) {
			diskPath = p
		}
		notes = append(notes, fmt.Sprintf("no copy ran the VM: restarted from the owner of epoch %d", claim.Epoch))
	}
	if diskPath == "" {
		diskPath = r.disk[owner.Name]
	}
	if diskPath == "" {
		return strings.Join(notes, "; "), fmt.Errorf("no disk known for the VM on host %s", owner.Name)
	}
	for _, h := range []lab.Host{owner, other(owner)} { // the live copy first
		_, _ = r.s.Lab.Run(ctx, h.Name, "stop", r.vm)
	}
	if err := r.waitNoCopies(ctx, 30*time.Second); err != nil {
		return strings.Join(notes, "; "), err
	}
	forced := false
	if err := r.protectFrom(ctx, owner, diskPath, false); err != nil {
		if !strings.Contains(err.Error(), "owns vm") {
			return strings.Join(notes, "; "), err
		}
		notes = append(notes, "forced: "+err.Error())
		forced = true
		if err := r.protectFrom(ctx, owner, diskPath, true); err != nil {
			return strings.Join(notes, "; "), err
		}
	}
	how := fmt.Sprintf("restarted from boot on %s from %s", owner.Name, diskPath)
	if forced {
		how += " (--force)"
	}
	return strings.Join(append(notes, how), "; "), nil
}
