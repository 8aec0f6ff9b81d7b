package bench

import (
	"fmt"
	"math/rand"
	"slices"
	"strings"
	"time"
)

// The pure half of `ftvmd chaos`: which faults run in which order at which moments
// (from a seed), and the accounting of what each fault did. The lab half is in
// chaos.go; the fault kinds themselves, with how each is injected and healed, are
// the table in chaoskinds.go.

// Outcome is what a fault did to the VM: which copy runs it afterwards.
type Outcome string

// Outcomes, as docs/failover-guarantees.md names them per fault kind.
const (
	// OutcomeFailover: the backup went live under the next epoch.
	OutcomeFailover Outcome = "failover"
	// OutcomeCarryOn: the primary runs on, unprotected.
	OutcomeCarryOn Outcome = "carry-on"
	// OutcomeUnchanged: the same pair still runs the VM, protected.
	OutcomeUnchanged Outcome = "unchanged"
	// OutcomeEither: one of the two copies runs on (a partition: the claim decides).
	// Only an expectation, never observed.
	OutcomeEither Outcome = "failover-or-carry-on"
	// OutcomeStopped: no copy runs the VM, and the guarantees say that is what the
	// fault leads to today (a safe stop).
	OutcomeStopped Outcome = "stopped"
	// OutcomeLost: no copy runs the VM, or none serves, within the wait.
	OutcomeLost Outcome = "lost"
)

// Matches says whether an observed outcome is what the guarantees promise.
func (expect Outcome) Matches(got Outcome) bool { return expect.matches(got) }

// Alive says whether the VM runs after an outcome.
func (o Outcome) Alive() bool { return o.alive() }

// matches says whether an observed outcome is what the guarantees promise.
func (expect Outcome) matches(got Outcome) bool {
	if expect == OutcomeEither {
		return got == OutcomeFailover || got == OutcomeCarryOn
	}
	return expect == got
}

// alive says whether the VM runs after an outcome.
func (o Outcome) alive() bool {
	return o == OutcomeFailover || o == OutcomeCarryOn || o == OutcomeUnchanged
}

// ChaosFault is one planned fault.
type ChaosFault struct {
	N    int    `json:"n"` // 1-based position in the run
	Kind string `json:"kind"`
	// After: client load before the fault is injected.
	After time.Duration `json:"after_ns"`
	// Hold: how long the fault lasts before it is healed; 0 for kinds healed once
	// the VM has settled (a killed host comes back after its peer took over).
	Hold time.Duration `json:"hold_ns,omitempty"`
}

// Load before a fault: a random moment in [faultAfterMin, faultAfterMax).
const (
	faultAfterMin = 2 * time.Second
	faultAfterMax = 6 * time.Second
)

// ChaosSchedule draws n faults from kinds (all kinds when empty) with a seeded
// random source: the kinds in a random order, every kind once before any comes
// again (so n = len(kinds) runs each exactly once), each at a random moment of its
// load and with a random hold within its kind's range. A kind named more than
// once in kinds weighs more. The same seed, n and kinds give the same schedule.
func ChaosSchedule(seed int64, n int, kinds []string) ([]ChaosFault, error) {
	if n < 1 {
		return nil, fmt.Errorf("--faults must be at least 1 (got %d)", n)
	}
	if len(kinds) == 0 {
		for _, k := range chaosKinds {
			kinds = append(kinds, k.Name)
		}
	}
	table := map[string]ChaosKind{}
	for _, k := range chaosKinds {
		table[k.Name] = k
	}
	for _, k := range kinds {
		if _, ok := table[k]; !ok {
			return nil, fmt.Errorf("unknown fault kind %q (known: %s)", k, strings.Join(ChaosKindNames(), ", "))
		}
	}
	rng := rand.New(rand.NewSource(seed))
	var out []ChaosFault
	var deck []string
	for len(out) < n {
		if len(deck) == 0 {
			deck = slices.Clone(kinds)
			rng.Shuffle(len(deck), func(i, j int) { deck[i], deck[j] = deck[j], deck[i] })
		}
		k := table[deck[0]]
		deck = deck[1:]
		f := ChaosFault{N: len(out) + 1, Kind: k.Name,
			After: faultAfterMin + time.Duration(rng.Int63n(int64(faultAfterMax-faultAfterMin)))}
		if k.HoldMax > 0 {
			f.Hold = k.HoldMin
			if k.HoldMax > k.HoldMin {
				f.Hold += time.Duration(rng.Int63n(int64(k.HoldMax - k.HoldMin)))
			}
		}
		out = append(out, f)
	}
	return out, nil
}

// WeighKinds returns kinds (every kind when empty) with each kind named in weights
// repeated that many times, the deck ChaosSchedule draws from: a kind of weight w
// comes w times per cycle of the deck. A weight below 1 or for a kind that is not
// drawn from is an error.
func WeighKinds(kinds []string, weights map[string]int) ([]string, error) {
	if len(kinds) == 0 {
		kinds = ChaosKindNames()
	}
	for k, w := range weights {
		if !slices.Contains(kinds, k) {
			return nil, fmt.Errorf("--weight %s=%d: not a kind drawn from (%s)", k, w, strings.Join(kinds, ", "))
		}
		if w < 1 {
			return nil, fmt.Errorf("--weight %s=%d: a weight is at least 1", k, w)
		}
	}
	var out []string
	for _, k := range kinds {
		w := weights[k]
		if w == 0 {
			w = 1
		}
		for range w {
			out = append(out, k)
		}
	}
	return out, nil
}

// ChaosKindNames lists the fault kinds in the table's order.
func ChaosKindNames() []string {
	var names []string
	for _, k := range chaosKinds {
		names = append(names, k.Name)
	}
	return names
}

// ChaosFaultReport is what one fault did, as measured end to end.
type ChaosFaultReport struct {
	N        int     `json:"n"`
	Kind     string  `json:"kind"`
	AtS      float64 `json:"at_s"`           // since the run started
	AfterS   float64 `json:"load_before_s"`  // client load before the fault
	HoldS    float64 `json:"hold_s"`         // how long the fault lasted (0: until settled)
	Expect   Outcome `json:"expect"`         // what docs/failover-guarantees.md says
	Outcome  Outcome `json:"outcome"`        // what happened
	Primary  string  `json:"primary_before"` // host of the primary at the fault
	Owner    string  `json:"owner_after"`    // host running the VM afterwards ("" if none)
	SettledS float64 `json:"settled_s"`      // fault -> the VM served again (or stopped)

	// The request/response connection: answers, requests never answered (on a
	// connection that broke), answers that were wrong or forgot earlier requests
	// (the guest's request count went back).
	Requests     int  `json:"requests_answered"`
	RequestsLost int  `json:"requests_lost"`
	Inconsistent int  `json:"requests_inconsistent"`
	ConnSurvived bool `json:"tcp_connection_survived"`
	NewConns     int  `json:"new_connections_ok"`
	NewConnsFail int  `json:"new_connections_failed"`

	// Durable records: acknowledged during this fault's load, and how many of them
	// did not read back right after the fault (from the copy that runs the VM) and
	// after the VM was protected again.
	RecordsAcked        int `json:"records_acked"`
	RecordsMissing      int `json:"records_missing"`
	RecordsMissingAfter int `json:"records_missing_after_reprotect"`

	// The bulk transfer (get and put in turn on one connection, every byte
	// checked): bytes moved, bytes after the fault, bytes that arrived wrong.
	BulkBytes        int64  `json:"bulk_bytes"`
	BulkBytesAfter   int64  `json:"bulk_bytes_after_fault"`
	BulkCorruptBytes int64  `json:"bulk_corrupt_bytes"`
	BulkError        string `json:"bulk_error,omitempty"`
	// BulkMoving: the bulk transfer moved bytes in the half second before the
	// fault (the fault hit a transfer under way, not a pause between two).
	BulkMoving bool `json:"bulk_moving_at_fault"`

	// Output released by both copies: 100 ms slots in which guest frames entered the
	// lab's network from both hosts, and slots in which a host released frames
	// after another host had claimed a later epoch (from the fault until the VM
	// was protected again).
	DoubleRelease     int `json:"double_release_slots"`
	ReleasedSupersede int `json:"released_after_superseded"`

	Alive         bool    `json:"alive_after"`
	GuestRebooted bool    `json:"guest_rebooted"`
	OutageMS      float64 `json:"outage_ms"` // longest client gap around the fault; -1 when the VM did not come back
	Reprotect     string  `json:"reprotect"` // how protection was re-created afterwards
	// ReprotectPath: which way (unchanged, in-place-auto, in-place, boot);
	// ReprotectS: how long it took, from the fault healed and the load stopped to
	// the new backup caught up; ReprotectPauseMS: the guest's pause for the
	// snapshot of an in-place re-protect.
	ReprotectPath    ReprotectPath `json:"reprotect_path"`
	ReprotectS       float64       `json:"reprotect_s"`
	ReprotectPauseMS float64       `json:"reprotect_pause_ms,omitempty"`
	// RoundS: the whole fault, from its load's start to the VM protected again
	// and its records read back.
	RoundS   float64  `json:"round_s"`
	Problems []string `json:"problems,omitempty"`

	// window is when this fault's release accounting applies.
	from, to time.Time
}

// problem notes a failed check.
func (r *ChaosFaultReport) problem(f string, a ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(f, a...))
}

// judge turns the measurements into problems: every safety figure must be zero,
// and the VM must be alive unless the guarantees say why not.
func (r *ChaosFaultReport) judge() {
	if !r.Expect.matches(r.Outcome) {
		r.problem("outcome %s, docs/failover-guarantees.md says %s", r.Outcome, r.Expect)
	}
	if r.Outcome.alive() != r.Alive && r.Outcome.alive() {
		r.problem("the VM does not serve after the fault")
	}
	// A request never answered counts only where the VM stayed alive: a documented
	// stop ends the connection with the request under way unanswered.
	if r.RequestsLost > 0 && r.Outcome.alive() {
		r.problem("%d requests never answered", r.RequestsLost)
	}
	if r.Inconsistent > 0 {
		r.problem("%d answers inconsistent", r.Inconsistent)
	}
	if r.RecordsMissing+r.RecordsMissingAfter > 0 {
		r.problem("acknowledged records missing: %d after the fault, %d after protection again", r.RecordsMissing, r.RecordsMissingAfter)
	}
	if r.BulkCorruptBytes > 0 {
		r.problem("%d bulk bytes corrupted", r.BulkCorruptBytes)
	}
	if r.DoubleRelease > 0 || r.ReleasedSupersede > 0 {
		r.problem("two copies released output: %d slots both, %d slots after a later epoch", r.DoubleRelease, r.ReleasedSupersede)
	}
	if r.Alive && r.BulkError != "" && r.BulkCorruptBytes == 0 {
		r.problem("bulk transfer broke: %s", r.BulkError)
	}
	if r.Alive && !r.ConnSurvived {
		r.problem("the request connection did not survive")
	}
	if r.GuestRebooted {
		r.problem("the guest rebooted")
	}
}

// ChaosKindSummary adds up the faults of one kind.
type ChaosKindSummary struct {
	Kind             string          `json:"kind"`
	Faults           int             `json:"faults"`
	Expect           Outcome         `json:"expect"`
	Outcomes         map[Outcome]int `json:"outcomes"`
	RequestsLost     int             `json:"requests_lost"`
	Inconsistent     int             `json:"requests_inconsistent"`
	RecordsAcked     int             `json:"records_acked"`
	RecordsMissing   int             `json:"records_missing"`
	BulkBytes        int64           `json:"bulk_bytes"`
	BulkCorruptBytes int64           `json:"bulk_corrupt_bytes"`
	DuringBulk       int             `json:"faults_during_bulk"` // faults that hit a bulk transfer under way
	DoubleRelease    int             `json:"double_release_slots"`
	Superseded       int             `json:"released_after_superseded"`
	Alive            int             `json:"alive_after"`
	AliveExpected    int             `json:"alive_expected"`
	OutageMS         Dist            `json:"outage_ms"` // over the faults the VM stayed alive through
	// Reprotects: how many faults took each re-protect path; ReprotectS: how long
	// re-protecting took over the faults that needed it (not unchanged).
	Reprotects map[ReprotectPath]int `json:"reprotects"`
	ReprotectS Dist                  `json:"reprotect_s"`
	RoundS     Dist                  `json:"round_s"`
	Problems   int                   `json:"faults_with_problems"`
	Pass       bool                  `json:"pass"`
}

// summarizeChaos adds up the faults per kind, kinds in the table's order. A
// request lost counts only where the VM stayed alive (as judge does).
func summarizeChaos(faults []ChaosFaultReport) []ChaosKindSummary {
	by := map[string]*ChaosKindSummary{}
	outages, reprotects, rounds := map[string][]float64{}, map[string][]float64{}, map[string][]float64{}
	for _, f := range faults {
		s := by[f.Kind]
		if s == nil {
			s = &ChaosKindSummary{Kind: f.Kind, Expect: f.Expect, Outcomes: map[Outcome]int{}, Reprotects: map[ReprotectPath]int{}}
			by[f.Kind] = s
		}
		s.Faults++
		if f.ReprotectPath != "" {
			s.Reprotects[f.ReprotectPath]++
		}
		if f.ReprotectPath != "" && f.ReprotectPath != ReprotectUnchanged {
			reprotects[f.Kind] = append(reprotects[f.Kind], f.ReprotectS)
		}
		rounds[f.Kind] = append(rounds[f.Kind], f.RoundS)
		s.Outcomes[f.Outcome]++
		if f.Outcome.alive() {
			s.RequestsLost += f.RequestsLost
		}
		s.Inconsistent += f.Inconsistent
		s.RecordsAcked += f.RecordsAcked
		s.RecordsMissing += f.RecordsMissing + f.RecordsMissingAfter
		s.BulkBytes += f.BulkBytes
		s.BulkCorruptBytes += f.BulkCorruptBytes
		if f.BulkMoving {
			s.DuringBulk++
		}
		s.DoubleRelease += f.DoubleRelease
		s.Superseded += f.ReleasedSupersede
		if f.Alive {
			s.Alive++
			if f.OutageMS >= 0 {
				outages[f.Kind] = append(outages[f.Kind], f.OutageMS)
			}
		}
		if f.Expect.alive() || f.Expect == OutcomeEither {
			s.AliveExpected++
		}
		if len(f.Problems) > 0 {
			s.Problems++
		}
	}
	var out []ChaosKindSummary
	names := ChaosKindNames()
	for _, f := range faults { // kinds not in the table (none today) keep run order
		if !slices.Contains(names, f.Kind) {
			names = append(names, f.Kind)
		}
	}
	for _, k := range names {
		s := by[k]
		if s == nil {
			continue
		}
		s.OutageMS = NewDist(outages[k])
		s.ReprotectS, s.RoundS = NewDist(reprotects[k]), NewDist(rounds[k])
		s.Pass = s.Problems == 0
		out = append(out, *s)
	}
	return out
}

// faultTimes is the seconds per fault over a run, and the re-protects' seconds
// per path.
func faultTimes(faults []ChaosFaultReport) (Dist, map[ReprotectPath]Dist) {
	var rounds []float64
	by := map[ReprotectPath][]float64{}
	for _, f := range faults {
		rounds = append(rounds, f.RoundS)
		if f.ReprotectPath != "" {
			by[f.ReprotectPath] = append(by[f.ReprotectPath], f.ReprotectS)
		}
	}
	out := map[ReprotectPath]Dist{}
	for p, xs := range by {
		out[p] = NewDist(xs)
	}
	return NewDist(rounds), out
}

// releaseSlot is how finely the release ledger tells instants apart.
const releaseSlot = 100 * time.Millisecond

// slotStat is one host's guest frames in one slot.
type slotStat struct {
	frames      int
	first, last time.Time
}

// releaseLedger records, per host, when guest frames entered the network from that
// host: released output. Two hosts in one slot, or a host releasing after another
// host claimed a later epoch, is the double release the epoch claim must prevent.
type releaseLedger struct {
	hosts map[string]map[int64]*slotStat
}

func newReleaseLedger() *releaseLedger {
	return &releaseLedger{hosts: map[string]map[int64]*slotStat{}}
}

func slotOf(t time.Time) int64 { return t.UnixNano() / int64(releaseSlot) }

// add records one frame released by host at t.
func (l *releaseLedger) add(host string, t time.Time) {
	m := l.hosts[host]
	if m == nil {
		m = map[int64]*slotStat{}
		l.hosts[host] = m
	}
	s := m[slotOf(t)]
	if s == nil {
		m[slotOf(t)] = &slotStat{frames: 1, first: t, last: t}
		return
	}
	s.frames++
	if t.Before(s.first) {
		s.first = t
	}
	if t.After(s.last) {
		s.last = t
	}
}

// frames counts host's frames in [from, to).
func (l *releaseLedger) frames(host string, from, to time.Time) int {
	n := 0
	for slot, s := range l.hosts[host] {
		if slot >= slotOf(from) && slot < slotOf(to) {
			n += s.frames
		}
	}
	return n
}

// doubleSlots counts the slots in [from, to) in which two hosts released at the
// same time: each one's frames in the slot span a stretch (first to last) that
// overlaps the other's. A copy whose last frame came before another copy's first,
// within the same 100 ms, is a handover (a failover that goes live in ~100 ms),
// not two copies running (the chaos run of 2026-11-30 07:54: A's last acknowledged
// frames and B's first after going live in place fell in one slot); a copy that
// released after another host claimed a later epoch is supersededSlots' to find.
func (l *releaseLedger) doubleSlots(from, to time.Time) int {
	bySlot := map[int64][]*slotStat{}
	for _, m := range l.hosts {
		for slot, st := range m {
			if slot >= slotOf(from) && slot < slotOf(to) {
				bySlot[slot] = append(bySlot[slot], st)
			}
		}
	}
	n := 0
	for _, sts := range bySlot {
	pairs:
		for i := range sts {
			for j := i + 1; j < len(sts); j++ {
				if !sts[i].first.After(sts[j].last) && !sts[j].first.After(sts[i].last) {
					n++
					break pairs
				}
			}
		}
	}
	return n
}

// slotsWithSeveral describes the slots in [from, to) in which more than one host
// released (whether or not their frames overlapped), each host's first and last
// frame in it: the evidence behind doubleSlots.
func (l *releaseLedger) slotsWithSeveral(from, to time.Time) []string {
	by := map[int64][]string{}
	for h, m := range l.hosts {
		for slot, st := range m {
			if slot >= slotOf(from) && slot < slotOf(to) {
				by[slot] = append(by[slot], fmt.Sprintf("%s %d frames %s-%s", h, st.frames,
					st.first.UTC().Format("15:04:05.000000"), st.last.UTC().Format("15:04:05.000000")))
			}
		}
	}
	var out []string
	for slot, hs := range by {
		if len(hs) > 1 {
			slices.Sort(hs)
			out = append(out, fmt.Sprintf("slot %s: %s", time.Unix(0, slot*int64(releaseSlot)).UTC().Format("15:04:05.0"), strings.Join(hs, ", ")))
		}
	}
	slices.Sort(out)
	return out
}

// epochClaim is one won epoch: who and when (the claim file's owner and time).
type epochClaim struct {
	Epoch uint64
	Owner string
	At    time.Time
}

// supersededSlots counts the slots in [from, to) in which a host released a frame
// while the latest epoch claimed before that frame was another host's: output from
// a copy that no longer owned the VM. A slot is judged by its last frame (a host
// that won a later epoch within the same 100 ms is not told apart).
func (l *releaseLedger) supersededSlots(claims []epochClaim, from, to time.Time) int {
	sorted := slices.Clone(claims)
	slices.SortFunc(sorted, func(a, b epochClaim) int { return a.At.Compare(b.At) })
	n := 0
	for host, m := range l.hosts {
		for slot, s := range m {
			if slot < slotOf(from) || slot >= slotOf(to) {
				continue
			}
			owner := ""
			for _, c := range sorted {
				if c.At.After(s.last) {
					break
				}
				owner = c.Owner
			}
			if owner != "" && owner != host {
				n++
			}
		}
	}
	return n
}
