package bench

import (
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
)

// cp is a host's copy as copies() reads it; role "" is no copy there.
func cp(h lab.Host, role, state string) copyState {
	if role == "" {
		return copyState{host: h}
	}
	return copyState{host: h, ok: true, st: control.VMStatus{Role: role, State: state}}
}

// The states chaos runs meet after each kind of fault (the agents' status, as
// the before-run of 2026-11-30 logged them) and what the re-protect does.
func TestPlanReprotect(t *testing.T) {
	a, b := lab.HostA, lab.HostB
	for _, tc := range []struct {
		name     string
		a, b     copyState
		step     reprotectStep
		live     string
		stopPeer bool
	}{
		{"pair unchanged", cp(a, "primary", "protected"), cp(b, "backup", "replaying"), stepUnchanged, "a", false},
		{"pair unchanged, primary on b", cp(a, "backup", "replaying"), cp(b, "primary", "protected"), stepUnchanged, "b", false},
		// kill-primary-host: the killed host's agent came back empty.
		{"failover, peer host restarted", cp(a, "", ""), cp(b, "primary", "unprotected"), stepProtect, "b", false},
		// ... and the survivor's own re-protection already runs.
		{"failover, agent re-protecting", cp(a, "backup", "replaying"), cp(b, "primary", "syncing"), stepWaitSync, "b", false},
		{"agent re-protecting, peer not registered yet", cp(a, "", ""), cp(b, "primary", "syncing"), stepWaitSync, "b", false},
		// log-full, kill-primary-qemu: the old primary failed and stays registered.
		{"failover, old primary failed", cp(a, "primary", "unprotected"), cp(b, "primary", "failed"), stepProtect, "a", true},
		// kill-backup-qemu: the backup failed.
		{"carry-on, backup failed", cp(a, "primary", "unprotected"), cp(b, "backup", "failed"), stepProtect, "a", true},
		{"partition lost by the primary", cp(a, "primary", "halted"), cp(b, "primary", "unprotected"), stepProtect, "b", true},
		{"handed over", cp(a, "primary", "handed-over"), cp(b, "primary", "unprotected"), stepProtect, "b", true},
		{"peer stopped", cp(a, "primary", "unprotected"), cp(b, "backup", "stopped"), stepProtect, "a", false},
		// On the way: look again.
		{"backup still replaying after the channel ended", cp(a, "primary", "unprotected"), cp(b, "backup", "replaying"), stepWait, "a", false},
		{"peer stopping", cp(a, "primary", "unprotected"), cp(b, "backup", "stopping"), stepWait, "a", false},
		{"backup live, not a primary yet", cp(a, "", ""), cp(b, "backup", "live"), stepWait, "b", false},
		{"protected, backup not replaying", cp(a, "primary", "protected"), cp(b, "", ""), stepWait, "a", false},
		// No copy to protect in place.
		{"no copy", cp(a, "primary", "failed"), cp(b, "", ""), stepBoot, "", false},
		{"both stopped", cp(a, "primary", "halted"), cp(b, "backup", "failed"), stepBoot, "", false},
		{"both live", cp(a, "primary", "unprotected"), cp(b, "primary", "unprotected"), stepBoot, "", false},
		{"claiming", cp(a, "primary", "claiming"), cp(b, "", ""), stepBoot, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := planReprotect([]copyState{tc.a, tc.b})
			if p.step != tc.step || p.live.Name != tc.live || p.stopPeer != tc.stopPeer {
				t.Fatalf("plan %+v, want step %d on %q, stop peer %v", p, tc.step, tc.live, tc.stopPeer)
			}
			if tc.live != "" && p.peer.Name == p.live.Name {
				t.Fatalf("peer %s is the live host", p.peer.Name)
			}
			if (p.step == stepWait || p.step == stepBoot) && p.why == "" {
				t.Fatal("no reason given")
			}
		})
	}
}

func TestSyncOutcome(t *testing.T) {
	since := time.Unix(1000, 0)
	st := func(state, phase string, started time.Time) control.VMStatus {
		return control.VMStatus{State: state, Detail: "d", Sync: &control.SyncStatus{Phase: phase, StartedAt: started, Error: "boom"}}
	}
	for _, tc := range []struct {
		name     string
		st       control.VMStatus
		done, ok bool
	}{
		{"no sync yet", control.VMStatus{State: "unprotected"}, false, false},
		// A carry-on keeps the previous protection's status until a new one starts.
		{"an older protection", st("unprotected", "protected", since.Add(-time.Minute)), false, false},
		{"older, failed", st("unprotected", "failed", since.Add(-time.Second)), false, false},
		{"copying", st("syncing", "copying", since), false, false},
		{"catching up", st("syncing", "catching-up", since.Add(time.Second)), false, false},
		{"protected", st("protected", "protected", since.Add(time.Second)), true, true},
		{"failed", st("unprotected", "failed", since.Add(time.Second)), true, false},
		{"vm halted meanwhile", st("halted", "copying", since.Add(time.Second)), true, false},
	} {
		done, ok, why := syncOutcome(tc.st, since)
		if done != tc.done || ok != tc.ok {
			t.Errorf("%s: done %v ok %v, want %v %v", tc.name, done, ok, tc.done, tc.ok)
		}
		if done && !ok && why == "" {
			t.Errorf("%s: failed without a reason", tc.name)
		}
	}
}

// A guest kept running through its re-protect counts as rebooted only if its
// counter went back; a restart from boot is the run's own doing.
func TestRebootedAcross(t *testing.T) {
	for _, tc := range []struct {
		path          ReprotectPath
		before, after int
		want          bool
	}{
		{ReprotectInPlace, 100, 112, false},
		{ReprotectAuto, 100, 100, false},
		{ReprotectInPlace, 100, 3, true},
		{ReprotectAuto, 100, 99, true},
		{ReprotectBoot, 100, 3, false},
		{ReprotectUnchanged, 100, 3, false},
	} {
		if got := rebootedAcross(tc.path, tc.before, tc.after); got != tc.want {
			t.Errorf("%s %d -> %d: rebooted %v, want %v", tc.path, tc.before, tc.after, got, tc.want)
		}
	}
}

func TestFaultTimesAndReprotectSummary(t *testing.T) {
	f := func(kind string, path ReprotectPath, reprotectS, roundS float64) ChaosFaultReport {
		r := cleanFault(kind, OutcomeFailover, OutcomeFailover, 100)
		r.ReprotectPath, r.ReprotectS, r.RoundS = path, reprotectS, roundS
		return r
	}
	faults := []ChaosFaultReport{
		f("kill-primary-host", ReprotectAuto, 4, 14),
		f("kill-primary-host", ReprotectInPlace, 6, 16),
		f("kill-primary-host", ReprotectBoot, 60, 75),
		f("pause-primary-qemu", ReprotectUnchanged, 0.5, 17),
	}
	faults[3].Expect, faults[3].Outcome = OutcomeUnchanged, OutcomeUnchanged
	round, by := faultTimes(faults)
	if round.N != 4 || round.Max != 75 {
		t.Fatalf("rounds %+v", round)
	}
	if len(by) != 4 || by[ReprotectBoot].N != 1 || by[ReprotectBoot].P50 != 60 || by[ReprotectAuto].P50 != 4 || by[ReprotectUnchanged].N != 1 {
		t.Fatalf("re-protect times by path %+v", by)
	}
	sum := summarizeChaos(faults)
	kp, pp := sum[0], sum[1]
	if kp.Reprotects[ReprotectAuto] != 1 || kp.Reprotects[ReprotectInPlace] != 1 || kp.Reprotects[ReprotectBoot] != 1 {
		t.Fatalf("kill-primary-host re-protects %v", kp.Reprotects)
	}
	if kp.ReprotectS.N != 3 || kp.ReprotectS.Max != 60 || kp.RoundS.N != 3 {
		t.Fatalf("kill-primary-host times %+v %+v", kp.ReprotectS, kp.RoundS)
	}
	// Nothing was re-protected: no re-protect time.
	if pp.Reprotects[ReprotectUnchanged] != 1 || pp.ReprotectS.N != 0 || pp.RoundS.N != 1 {
		t.Fatalf("pause-primary-qemu %+v", pp)
	}
	line := FaultLine(faults[0])
	if !strings.Contains(line, "re-protect in-place-auto in 4.0 s") || !strings.Contains(line, "rebooted false") {
		t.Fatalf("fault line %q", line)
	}
}

// TestSplitBrain: two copies releasing output on their own are a split brain; a
// protected primary beside the copy that went live is not (it releases only what
// that copy acknowledged before it claimed), nor is the pair itself.
func TestSplitBrain(t *testing.T) {
	c := func(h lab.Host, role, state string) copyState {
		return copyState{host: h, ok: true, st: control.VMStatus{Role: role, State: state}}
	}
	a, b := lab.HostA, lab.HostB
	for _, tc := range []struct {
		name string
		cs   []copyState
		want bool
	}{
		{"the pair", []copyState{c(a, "primary", "protected"), c(b, "backup", "replaying")}, false},
		{"stale protected primary beside the new live copy", []copyState{c(a, "primary", "protected"), c(b, "primary", "unprotected")}, false},
		{"stale protected primary beside a backup going live", []copyState{c(a, "primary", "protected"), c(b, "backup", "live")}, false},
		{"two unprotected primaries", []copyState{c(a, "primary", "unprotected"), c(b, "primary", "unprotected")}, true},
		{"unprotected primary and a backup live", []copyState{c(a, "primary", "unprotected"), c(b, "backup", "live")}, true},
		{"syncing primary and a live copy", []copyState{c(a, "primary", "syncing"), c(b, "primary", "unprotected")}, true},
		{"one copy halted", []copyState{c(a, "primary", "halted"), c(b, "primary", "unprotected")}, false},
		{"an agent that did not answer", []copyState{{host: a}, c(b, "primary", "unprotected")}, false},
	} {
		if got := splitBrain(tc.cs); got != tc.want {
			t.Errorf("%s: splitBrain %v, want %v", tc.name, got, tc.want)
		}
	}
}
