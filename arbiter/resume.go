package arbiter

import "fmt"

// Claim is what Resume needs to know of the highest claimed epoch (from
// disk.EpochStore.Current): Epoch 0 means no epoch was ever claimed.
type Claim struct {
	Epoch   uint64
	Owner   string
	Corrupt bool // the claim exists but its owner is unknown
}

// Decision says whether a restarting agent may run its copy, and as what.
type Decision struct {
	Run   bool
	State State  // the state to start the Arbiter in (Config.Start)
	Epoch uint64 // the epoch to start the Arbiter under (Config.Epoch)
	Why   string
}

// Resume decides, at agent restart, whether this copy may run. protected is the
// epoch the copy was protected under before the restart (0 if none); current is
// the highest claim on shared storage now. The copy may run only if nobody
// claimed beyond protected, or if it owns the later claim itself. Anything
// unclear (a corrupt later claim, a store behind protected) means do not run:
// the agent must not run a VM it does not own.
func Resume(role Role, myHost string, protected uint64, current Claim) Decision {
	halt := func(format string, args ...any) Decision {
		return Decision{Run: false, State: StateHalted, Epoch: current.Epoch, Why: fmt.Sprintf(format, args...)}
	}
	if role != RolePrimary && role != RoleBackup {
		return halt("unknown role %v", role)
	}
	if myHost == "" {
		return halt("empty host name")
	}
	switch {
	case current.Epoch < protected:
		return halt("shared storage shows epoch %d, behind the epoch %d this copy was protected under (storage rolled back or wrong directory)",
			current.Epoch, protected)
	case current.Epoch == protected:
		why := fmt.Sprintf("no claim beyond epoch %d: resume as a protected %v", protected, role)
		if current.Corrupt {
			why += " (the claim of that epoch is unreadable, but nothing was claimed after it)"
		}
		return Decision{Run: true, State: StateProtected, Epoch: protected, Why: why}
	case current.Corrupt:
		return halt("epoch %d was claimed after %d by an unknown owner (corrupt claim)", current.Epoch, protected)
	case current.Owner != myHost:
		return halt("epoch %d was claimed by %q after %d: this copy lost", current.Epoch, current.Owner, protected)
	case role == RoleBackup:
		return Decision{Run: true, State: StateLive, Epoch: current.Epoch,
			Why: fmt.Sprintf("this host won epoch %d: run live", current.Epoch)}
	default:
		return Decision{Run: true, State: StateUnprotected, Epoch: current.Epoch,
			Why: fmt.Sprintf("this host won epoch %d: run unprotected", current.Epoch)}
	}
}

// Config returns the Arbiter config this decision starts: base with Start and
// Epoch set from the decision.
func (d Decision) Config(base Config) Config {
	base.Start = d.State
	base.Epoch = d.Epoch
	return base
}
