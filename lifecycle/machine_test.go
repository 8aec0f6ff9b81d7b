package lifecycle

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/ftvmd/ftvmd/arbiter"
)

// drive builds a machine and steps setup, failing on any error.
func drive(t *testing.T, role arbiter.Role, setup ...Event) *Machine {
	t.Helper()
	host := "a"
	if role == arbiter.RoleBackup {
		host = "b"
	}
	m, err := New(Config{Role: role, Host: host, VM: "web"})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range setup {
		if err := m.Step(ev); err != nil {
			t.Fatalf("setup %v: %v", ev.Type, err)
		}
	}
	m.Advance()
	return m
}

func actionTypes(as []Action) string {
	var s []string
	for _, a := range as {
		s = append(s, a.Type.String())
	}
	return strings.Join(s, ",")
}

// Every local fault, in every state a copy can meet it in: what the copy becomes
// and what it does. A primary halts its output before anything else; a copy whose
// channel is up tells its peer (AbortChannel); nobody claims; a copy that has ended
// already ignores it.
func TestFaultTable(t *testing.T) {
	silent := errors.New("peer silent")
	protected := []Event{Started(5, "b", true)}
	claiming := append(protected[:1:1], PeerLost(silent))
	unprotecting := append(protected[:1:1], Unprotect("op"))
	draining := append(protected[:1:1], Handover(), GuestPaused())
	handClaiming := append(draining[:3:3], Drained())
	alone := []Event{Started(0, "", false)}
	halted := append(claiming[:2:2], ClaimLost(1, 6, "b"))
	replaying := []Event{Started(5, "a", true)}
	bClaiming := append(replaying[:1:1], PeerLost(silent))
	reading := append(replaying[:1:1], PeerBye(errors.New("bye")))
	goingLive := append(bClaiming[:2:2], ClaimWon(1, 6))

	faults := []Event{QEMUExited(errors.New("signal: killed")), LogWriteFailed("No space left on device"), Fault(errors.New("tap gone"))}
	for _, tc := range []struct {
		name    string
		role    arbiter.Role
		setup   []Event
		want    State
		actions string // for each fault
	}{
		{"primary starting", arbiter.RolePrimary, nil, Failed, "HaltOutput,Teardown"},
		{"primary protected", arbiter.RolePrimary, protected, Failed, "HaltOutput,AbortChannel,Teardown"},
		{"primary claiming", arbiter.RolePrimary, claiming, Failed, "HaltOutput,Teardown"},
		{"primary unprotecting", arbiter.RolePrimary, unprotecting, Failed, "HaltOutput,AbortChannel,Reply,Teardown"},
		{"primary draining for a handover", arbiter.RolePrimary, draining, Failed, "HaltOutput,AbortChannel,Reply,Teardown"},
		{"primary claiming for the backup", arbiter.RolePrimary, handClaiming, Failed, "HaltOutput,AbortChannel,Reply,Teardown"},
		{"primary alone", arbiter.RolePrimary, alone, Failed, "HaltOutput,Teardown"},
		{"primary halted", arbiter.RolePrimary, halted, Halted, ""},
		{"backup starting", arbiter.RoleBackup, nil, Failed, "Teardown"},
		{"backup replaying", arbiter.RoleBackup, replaying, Failed, "AbortChannel,Teardown"},
		{"backup claiming", arbiter.RoleBackup, bClaiming, Failed, "Teardown"},
		{"backup reading the store after a Bye", arbiter.RoleBackup, reading, Failed, "Teardown"},
		{"backup going live", arbiter.RoleBackup, goingLive, GoingLive, ""},
	} {
		for _, f := range faults {
			t.Run(fmt.Sprintf("%s/%v", tc.name, f.Type), func(t *testing.T) {
				m := drive(t, tc.role, tc.setup...)
				if err := m.Step(f); err != nil {
					t.Fatalf("Step: %v", err)
				}
				rd := m.Ready()
				if rd.Status.State != tc.want || actionTypes(rd.Actions) != tc.actions {
					t.Fatalf("-> %v [%s], want %v [%s] (%s)", rd.Status.State, actionTypes(rd.Actions), tc.want, tc.actions, rd.Status.Detail)
				}
				m.Advance()
				// Whatever comes next, a failed copy claims nothing and releases nothing.
				for _, ev := range []Event{PeerLost(silent), Tick(), PeerBye(nil), ClaimWon(1, 6), Unprotect(""), Tick()} {
					_ = m.Step(ev)
					for _, a := range m.Ready().Actions {
						if tc.want == Failed && (a.Type == ActionClaimEpoch || a.Type == ActionReleaseOutput || a.Type == ActionGoLive) {
							t.Fatalf("a failed copy did %v after %v", a, ev.Type)
						}
					}
					m.Advance()
				}
			})
		}
	}
}

// Ready repeats until Advance; Changed says whether the status moved.
func TestReadyUntilAdvance(t *testing.T) {
	m := drive(t, arbiter.RolePrimary, Started(5, "b", true))
	if m.HasReady() {
		t.Fatal("advanced machine has something ready")
	}
	if err := m.Step(PeerLost(errors.New("silent"))); err != nil {
		t.Fatal(err)
	}
	r1, r2 := m.Ready(), m.Ready()
	if !r1.Changed || len(r1.Actions) != 1 || r1.Actions[0] != r2.Actions[0] || r1.Status != r2.Status {
		t.Fatalf("Ready not stable or incomplete: %+v vs %+v", r1, r2)
	}
	m.Advance()
	if err := m.Step(Tick()); err != nil {
		t.Fatal(err)
	}
	if m.HasReady() || m.Ready().Changed {
		t.Fatalf("a tick while claiming changed something: %+v", m.Ready())
	}
}

func TestConfigValidation(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Host: "a"}, "role"},
		{Config{Role: arbiter.RolePrimary}, "empty host"},
		{Config{Role: arbiter.RolePrimary, Host: "a", HandoverTicks: -1}, "negative"},
		{Config{Role: arbiter.RoleBackup, Host: "a", LiveEpoch: 2}, "live epoch"},
	} {
		_, err := New(tc.cfg)
		if !errors.Is(err, ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v): %v, want %v mentioning %q", tc.cfg, err, ErrInvalidConfig, tc.want)
		}
	}
	m, err := New(Config{Role: arbiter.RolePrimary, Host: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if m.cfg.HandoverTicks != DefaultHandoverTicks {
		t.Fatalf("handover ticks %d, want the default %d", m.cfg.HandoverTicks, DefaultHandoverTicks)
	}
}

// Every state and event has a name: status and logs never show State(7).
func TestNames(t *testing.T) {
	for s := Starting; s <= Failed; s++ {
		if strings.HasPrefix(s.String(), "State(") {
			t.Errorf("state %d has no name", int(s))
		}
	}
	for e := EventStarted; e <= EventAbort; e++ {
		if strings.HasPrefix(e.String(), "EventType(") {
			t.Errorf("event %d has no name", int(e))
		}
	}
	for a := ActionClaimEpoch; a <= ActionReply; a++ {
		if strings.HasPrefix(a.String(), "ActionType(") {
			t.Errorf("action %d has no name", int(a))
		}
	}
}
