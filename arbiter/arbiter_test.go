package arbiter

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// parseEvent reads one script command:
//
//	silent | back | tick | tick 5 | won 6 | lost 6 hostB | lost 6 | failed
//
// It returns the events (tick N is N ticks).
func parseEvent(t *testing.T, cmd string) []Event {
	t.Helper()
	f := strings.Fields(cmd)
	num := func(i int) uint64 {
		t.Helper()
		if len(f) <= i {
			t.Fatalf("%q: missing argument %d", cmd, i)
		}
		n, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			t.Fatalf("%q: %v", cmd, err)
		}
		return n
	}
	switch f[0] {
	case "silent":
		return []Event{PeerSilent()}
	case "back":
		return []Event{PeerBack()}
	case "tick":
		n := uint64(1)
		if len(f) > 1 {
			n = num(1)
		}
		evs := make([]Event, n)
		for i := range evs {
			evs[i] = Tick()
		}
		return evs
	case "won":
		return []Event{ClaimWon(num(1))}
	case "lost":
		winner := ""
		if len(f) > 2 {
			winner = f[2]
		}
		return []Event{ClaimLost(num(1), winner)}
	case "failed":
		return []Event{ClaimFailed(errors.New("storage timed out"))}
	case "bogus":
		return []Event{{Type: EventType(99)}}
	}
	t.Fatalf("unknown command %q", cmd)
	return nil
}

func errName(err error) string {
	for _, s := range []struct {
		err  error
		name string
	}{{ErrNoClaimPending, "NoClaimPending"}, {ErrWrongEpoch, "WrongEpoch"}, {ErrUnknownEvent, "UnknownEvent"}} {
		if errors.Is(err, s.err) {
			return s.name
		}
	}
	return err.Error()
}

// transcript renders the state, actions and error after one command:
//
//	claiming | ClaimEpoch seen=5 ! NoClaimPending
func transcript(a *Arbiter, err error) string {
	rd := a.Ready()
	var b strings.Builder
	b.WriteString(rd.State.String())
	for _, act := range rd.Actions {
		switch act.Type {
		case ActionClaimEpoch:
			fmt.Fprintf(&b, " | %s seen=%d", act.Type, act.Seen)
		default:
			fmt.Fprintf(&b, " | %s epoch=%d", act.Type, act.Epoch)
		}
	}
	if err != nil {
		fmt.Fprintf(&b, " ! %s", errName(err))
	}
	return b.String()
}

// runScript drives a with a script of "command -> expected transcript" lines,
// calling Advance after each command as a caller would.
func runScript(t *testing.T, a *Arbiter, script string) {
	t.Helper()
	for i, line := range strings.Split(strings.TrimSpace(script), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		cmd, want, ok := strings.Cut(line, "->")
		if !ok {
			t.Fatalf("line %d %q: no ->", i+1, line)
		}
		var err error
		for _, ev := range parseEvent(t, strings.TrimSpace(cmd)) {
			if e := a.Step(ev); e != nil {
				err = e
			}
		}
		if got := transcript(a, err); got != strings.TrimSpace(want) {
			t.Fatalf("line %d %q:\n got  %s\n want %s", i+1, strings.TrimSpace(cmd), got, strings.TrimSpace(want))
		}
		a.Advance()
	}
}

func TestArbiterScripts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		role   Role
		script string
	}{
		{"backup wins and goes live", RoleBackup, `
			back      -> protected
			tick 3    -> protected
			silent    -> claiming | ClaimEpoch seen=5
			won 6     -> live | GoLive epoch=6
			silent    -> live
			tick 100  -> live
		`},
		{"primary wins and continues unprotected", RolePrimary, `
			silent    -> claiming | ClaimEpoch seen=5
			won 6     -> unprotected | ContinueUnprotected epoch=6
			back      -> unprotected
		`},
		{"backup loses and halts for good", RoleBackup, `
			silent    -> claiming | ClaimEpoch seen=5
			lost 6 hostA -> halted | Halt epoch=6
			silent    -> halted
			back      -> halted
			tick 50   -> halted
			won 6     -> halted ! NoClaimPending
			lost 7 hostA -> halted ! NoClaimPending
			failed    -> halted ! NoClaimPending
		`},
		{"primary loses to a corrupt claim", RolePrimary, `
			silent    -> claiming | ClaimEpoch seen=5
			lost 6    -> halted | Halt epoch=6
		`},
		{"partition then heal: the claim still decides (backup)", RoleBackup, `
			silent    -> claiming | ClaimEpoch seen=5
			back      -> claiming
			tick 20   -> claiming
			won 6     -> live | GoLive epoch=6
		`},
		{"partition then heal: the claim still decides (primary loses)", RolePrimary, `
			silent    -> claiming | ClaimEpoch seen=5
			back      -> claiming
			lost 6 hostB -> halted | Halt epoch=6
		`},
		{"flapping claims once", RolePrimary, `
			silent    -> claiming | ClaimEpoch seen=5
			back      -> claiming
			silent    -> claiming
			back      -> claiming
			silent    -> claiming
			tick 30   -> claiming
			won 6     -> unprotected | ContinueUnprotected epoch=6
			silent    -> unprotected
			back      -> unprotected
		`},
		{"hung storage: hold and retry", RoleBackup, `
			silent    -> claiming | ClaimEpoch seen=5
			failed    -> claiming
			tick 9    -> claiming
			back      -> claiming
			tick      -> claiming | ClaimEpoch seen=5
			tick 30   -> claiming
			failed    -> claiming
			tick 10   -> claiming | ClaimEpoch seen=5
			won 6     -> live | GoLive epoch=6
		`},
		{"claim results without a claim are ignored", RoleBackup, `
			won 6     -> protected ! NoClaimPending
			lost 6 hostA -> protected ! NoClaimPending
			failed    -> protected ! NoClaimPending
			silent    -> claiming | ClaimEpoch seen=5
			won 6     -> live | GoLive epoch=6
			won 6     -> live ! NoClaimPending
			lost 7 hostA -> live ! NoClaimPending
		`},
		{"a result for another epoch is ignored", RolePrimary, `
			silent    -> claiming | ClaimEpoch seen=5
			won 9     -> claiming ! WrongEpoch
			lost 5 hostB -> claiming ! WrongEpoch
			won 6     -> unprotected | ContinueUnprotected epoch=6
		`},
		{"a stale view loses to a later epoch", RoleBackup, `
			silent    -> claiming | ClaimEpoch seen=5
			lost 9 hostZ -> halted | Halt epoch=9
		`},
		{"unknown events are rejected", RoleBackup, `
			bogus     -> protected ! UnknownEvent
			silent    -> claiming | ClaimEpoch seen=5
			bogus     -> claiming ! UnknownEvent
		`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(Config{Role: tc.role, Host: "me", Epoch: 5})
			if err != nil {
				t.Fatal(err)
			}
			runScript(t, a, tc.script)
		})
	}
}

// TestReadyUntilAdvance: Ready repeats its actions until Advance, and a caller
// that steps the claim result before Advance sees both actions in order.
func TestReadyUntilAdvance(t *testing.T) {
	a, err := New(Config{Role: RoleBackup, Host: "b", Epoch: 1})
	if err != nil {
		t.Fatal(err)
	}
	if a.HasReady() {
		t.Fatal("fresh arbiter has actions")
	}
	if err := a.Step(PeerSilent()); err != nil {
		t.Fatal(err)
	}
	r1, r2 := a.Ready(), a.Ready()
	if len(r1.Actions) != 1 || len(r2.Actions) != 1 || r1.Actions[0] != r2.Actions[0] {
		t.Fatalf("Ready not stable: %v vs %v", r1, r2)
	}
	if err := a.Step(ClaimWon(2)); err != nil {
		t.Fatal(err)
	}
	got := a.Ready().Actions
	if len(got) != 2 || got[0].Type != ActionClaimEpoch || got[1].Type != ActionGoLive {
		t.Fatalf("actions = %v, want ClaimEpoch then GoLive", got)
	}
	a.Advance()
	if a.HasReady() || a.State() != StateLive || a.Epoch() != 2 {
		t.Fatalf("after Advance: ready=%v state=%v epoch=%d", a.HasReady(), a.State(), a.Epoch())
	}
}

func TestNewConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		ok   bool
	}{
		{"defaults", Config{Role: RolePrimary, Host: "a"}, true},
		{"no role", Config{Host: "a"}, false},
		{"no host", Config{Role: RoleBackup}, false},
		{"negative retry", Config{Role: RoleBackup, Host: "b", ClaimRetryTicks: -1}, false},
		{"backup live", Config{Role: RoleBackup, Host: "b", Start: StateLive}, true},
		{"primary live", Config{Role: RolePrimary, Host: "a", Start: StateLive}, false},
		{"primary unprotected", Config{Role: RolePrimary, Host: "a", Start: StateUnprotected}, true},
		{"backup unprotected", Config{Role: RoleBackup, Host: "b", Start: StateUnprotected}, false},
		{"start claiming", Config{Role: RoleBackup, Host: "b", Start: StateClaiming}, false},
		{"start halted", Config{Role: RoleBackup, Host: "b", Start: StateHalted}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := New(tc.cfg)
			if tc.ok != (err == nil) {
				t.Fatalf("New(%+v) = %v", tc.cfg, err)
			}
			if err != nil && !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("err = %v, want ErrInvalidConfig", err)
			}
			if err == nil && tc.cfg.Start == 0 && a.State() != StateProtected {
				t.Fatalf("default start state %v", a.State())
			}
		})
	}
}

// A copy started halted (Resume said no) never acts.
func TestStartHaltedNeverActs(t *testing.T) {
	a, err := New(Config{Role: RolePrimary, Host: "a", Epoch: 3, Start: StateHalted})
	if err != nil {
		t.Fatal(err)
	}
	runScript(t, a, `
		silent  -> halted
		tick 20 -> halted
		back    -> halted
		won 4   -> halted ! NoClaimPending
	`)
}

func TestResume(t *testing.T) {
	for _, tc := range []struct {
		name      string
		role      Role
		protected uint64
		current   Claim
		run       bool
		state     State
		epoch     uint64
	}{
		{"fresh pair, nothing claimed", RolePrimary, 0, Claim{}, true, StateProtected, 0},
		{"nothing beyond protected", RoleBackup, 4, Claim{Epoch: 4, Owner: "hostA"}, true, StateProtected, 4},
		{"protected claim unreadable, nothing after", RolePrimary, 4, Claim{Epoch: 4, Corrupt: true}, true, StateProtected, 4},
		{"backup won while agent was down", RoleBackup, 4, Claim{Epoch: 5, Owner: "hostB"}, true, StateLive, 5},
		{"primary won while agent was down", RolePrimary, 4, Claim{Epoch: 5, Owner: "hostA"}, true, StateUnprotected, 5},
		{"primary lost while agent was down", RolePrimary, 4, Claim{Epoch: 5, Owner: "hostB"}, false, StateHalted, 5},
		{"backup lost while agent was down", RoleBackup, 4, Claim{Epoch: 5, Owner: "hostA"}, false, StateHalted, 5},
		{"later claim corrupt", RoleBackup, 4, Claim{Epoch: 5, Corrupt: true}, false, StateHalted, 5},
		{"later claim corrupt, owner field stale", RoleBackup, 4, Claim{Epoch: 5, Owner: "hostB", Corrupt: true}, false, StateHalted, 5},
		{"store behind protected", RolePrimary, 4, Claim{Epoch: 2, Owner: "hostA"}, false, StateHalted, 2},
		{"store empty but was protected", RolePrimary, 4, Claim{}, false, StateHalted, 0},
		{"far future epoch owned by someone else", RolePrimary, 4, Claim{Epoch: 1 << 40, Owner: "rogue"}, false, StateHalted, 1 << 40},
		{"no role", Role(0), 4, Claim{Epoch: 4}, false, StateHalted, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			me := "hostA"
			if tc.role == RoleBackup {
				me = "hostB"
			}
			d := Resume(tc.role, me, tc.protected, tc.current)
			if d.Run != tc.run || d.State != tc.state || d.Epoch != tc.epoch || d.Why == "" {
				t.Fatalf("Resume = %+v, want run=%v state=%v epoch=%d", d, tc.run, tc.state, tc.epoch)
			}
			if tc.role != RolePrimary && tc.role != RoleBackup {
				return
			}
			a, err := New(d.Config(Config{Role: tc.role, Host: me}))
			if err != nil {
				t.Fatalf("New from decision: %v", err)
			}
			if a.State() != d.State || a.Epoch() != d.Epoch {
				t.Fatalf("arbiter from decision: state %v epoch %d", a.State(), a.Epoch())
			}
		})
	}
	if d := Resume(RolePrimary, "", 0, Claim{}); d.Run {
		t.Fatal("Resume with no host may run")
	}
}
