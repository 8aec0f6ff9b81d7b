package lifecycle

import (
	"errors"
	"math/rand"
	"slices"
	"testing"

	"github.com/ftvmd/ftvmd/arbiter"
)

// TestReprotectRandom drives a copy that runs alone after a failover through
// random probe answers, failed and successful protections and lost backups, and
// checks the re-protection rules after every step: one probe at a time, only
// the lost peer and the spares are probed, a protection starts only on a host
// whose last probe answered, and the lost peer only after a probe found its
// agent down since it was lost.
func TestReprotectRandom(t *testing.T) {
	spares := []string{"a:7800", "d:7800", "e:7800", "c:7800"} // c: this host
	for seed := int64(1); seed <= 300; seed++ {
		rng := rand.New(rand.NewSource(seed))
		m, err := New(Config{Role: arbiter.RolePrimary, Host: "c", VM: "web", LiveEpoch: 3,
			Reprotect: "a:7800", Spares: spares, ProbeTicks: 1 + rng.Intn(3)})
		if err != nil {
			t.Fatal(err)
		}
		var (
			lost     = "a:7800" // the peer lost last
			lostDown bool       // a probe found it down since
			probing  string     // the probe in flight
			answered string     // the host whose probe answered last
			claimID  uint64
			epoch    uint64 = 3
			protects int
			trace    []string
		)
		fail := func(format string, args ...any) {
			t.Helper()
			t.Fatalf("seed %d: "+format+"\ntrace: %v", append([]any{seed}, append(args, trace)...)...)
		}
		step := func(ev Event) {
			t.Helper()
			trace = append(trace, ev.Type.String())
			_ = m.Step(ev)
			rd := m.Ready()
			m.Advance()
			for _, a := range rd.Actions {
				trace = append(trace, a.String())
				switch a.Type {
				case ActionProbePeer:
					if probing != "" {
						fail("probe of %s while the probe of %s is out", a.Peer, probing)
					}
					if a.Peer != lost && !slices.Contains(spares, a.Peer) {
						fail("probe of %s: neither the lost peer %s nor a spare", a.Peer, lost)
					}
					probing = a.Peer
				case ActionStartSync:
					if a.Peer != answered {
						fail("protection on %s, whose probe did not answer (last answer: %q)", a.Peer, answered)
					}
					if a.Peer == lost && !lostDown {
						fail("protection on the lost peer %s, never found down", lost)
					}
					if a.Peer == "c:7800" {
						fail("protection on itself")
					}
					protects++
				case ActionClaimEpoch:
					claimID = a.Claim
				}
			}
			answered = ""
		}
		step(Started(0, "", false))
		for range 400 {
			switch m.State() {
			case Unprotected:
				if probing != "" && rng.Intn(2) == 0 {
					p := probing
					probing = ""
					var err error
					if p == "c:7800" || rng.Intn(3) > 0 {
						err = errors.New("down") // its own agent refuses this host
						if p == lost {
							lostDown = true
						}
					}
					if err == nil {
						answered = p
					}
					ev := Probed(err)
					trace = append(trace, "probed "+p)
					step(ev)
					if err == nil && m.State() != Syncing {
						answered = ""
					}
					continue
				}
				step(Tick())
			case Syncing:
				probing = "" // a protection ends the probe (its answer is not awaited)
				switch rng.Intn(3) {
				case 0:
					step(SyncFailed(errors.New("copy failed")))
				default:
					peer := m.peerAddr
					step(SyncedWith(epoch, true, peer))
				}
			case Protected:
				// The new backup's host dies: this copy wins the next epoch and
				// runs alone, and that host is the lost peer now.
				lost, lostDown = m.peerAddr, false
				step(PeerLost(errors.New("peer silent")))
				if m.State() == Claiming {
					epoch++
					step(ClaimWon(claimID, epoch))
				}
			default:
				fail("unexpected state %v", m.State())
			}
		}
		if protects == 0 {
			fail("no protection in 400 steps")
		}
	}
}
