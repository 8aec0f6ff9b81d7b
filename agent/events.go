package agent

import (
	"sort"
	"sync"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/journal"
)

// record notes an event in the agent's journal and in its per-VM counters, which
// are counted from the events so that the two never disagree. It is safe on an
// Agent without a journal (tests build bare ones) and on a nil Agent.
func (a *Agent) record(e journal.Event) {
	if a == nil {
		return
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	if a.journal != nil {
		a.journal.Record(e)
	}
	a.history.observe(e)
}

// vmHistory is what the agent counted per VM (control.VMCounters). Entries live as
// long as the agent: a VM's counters outlive the copy that made them.
type vmHistory struct {
	mu  sync.Mutex
	vms map[string]*control.VMCounters
}

// entry returns vm's counters, creating them; called with h.mu held.
func (h *vmHistory) entry(vm string) *control.VMCounters {
	if h.vms == nil {
		h.vms = map[string]*control.VMCounters{}
	}
	c, ok := h.vms[vm]
	if !ok {
		c = &control.VMCounters{Name: vm}
		h.vms[vm] = c
	}
	return c
}

// known makes vm's counters exist (at zero), so that a counter is exported before
// its first increment and an increase shows as one.
func (h *vmHistory) known(vm string) {
	h.mu.Lock()
	h.entry(vm)
	h.mu.Unlock()
}

func (h *vmHistory) observe(e journal.Event) {
	if e.VM == "" {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.entry(e.VM)
	switch e.Kind {
	case journal.KindFailover:
		c.Failovers++
		c.LastClaimMS = e.DurationMS
	case journal.KindProtect:
		if e.Result == journal.ProtectFromRunning {
			c.Reprotections++
		}
	case journal.KindGoLive:
		c.LastGoLiveMS = e.DurationMS
	case journal.KindClaim:
		switch e.Result {
		case journal.ClaimWon:
			c.ClaimsWon++
		case journal.ClaimLost:
			c.ClaimsLost++
		default:
			c.ClaimsFailed++
		}
	}
}

// snapshot returns the counters of vm ("" for all), sorted by name.
func (h *vmHistory) snapshot(vm string) []control.VMCounters {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []control.VMCounters
	for name, c := range h.vms {
		if vm == "" || vm == name {
			out = append(out, *c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// episode follows something that is on for a while (the throttle, pacing).
type episode struct {
	on    bool
	since time.Time
}

// set reports whether on changed the episode: it began, or it ended after lasted.
func (e *episode) set(on bool, now time.Time) (changed bool, lasted time.Duration) {
	if on == e.on {
		return false, 0
	}
	e.on = on
	if on {
		e.since = now
		return true, 0
	}
	return true, max(now.Sub(e.since), 0)
}
