package lifecycle

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/ftvmd/ftvmd/arbiter"
	"github.com/ftvmd/ftvmd/internal/script"
)

// Test scripts live in testdata/*.txt, one fault path or more per file. Each
// block is one command line, a line "----", then the expected transcript, ended
// by a blank line; '#' lines between blocks are comments. After each command the
// script calls Ready and Advance as the agent does. Run with -rewrite to
// regenerate the transcripts (then read the diff).
var rewrite = flag.Bool("rewrite", false, "rewrite testdata transcripts with the actual output")

func TestDataDriven(t *testing.T) {
	script.RunDir(t, *rewrite, func() func(string) string { return (&scriptEnv{}).handle })
}

// scriptEnv drives one Machine.
type scriptEnv struct {
	m         *Machine
	lastClaim uint64 // ID of the newest ClaimEpoch action
}

// handle runs one command and returns its transcript:
//
//	<state> epoch=<n>[ stalled][ qemu-stuck][: <detail>]
//	<action>...
//	error: <Step's error>
func (e *scriptEnv) handle(cmd string) string {
	fields := strings.Fields(cmd)
	pos, kv := script.Args(fields[1:])
	bad := func(format string, a ...any) string { return fmt.Sprintf("bad command: "+format+"\n", a...) }
	num := func(s string) (uint64, error) { return strconv.ParseUint(s, 10, 64) }
	text := func(def string) string {
		if len(pos) > 0 {
			return strings.Join(pos, " ")
		}
		return def
	}
	if fields[0] == "new" {
		// new primary|backup [host=a] [vm=web] [live=N] [retry=N] [handover=N] [pause=N] [reprotect=addr] [spares=addr,addr] [probe=N]
		cfg := Config{Host: "a", VM: "web"}
		switch text("") {
		case "primary":
			cfg.Role = arbiter.RolePrimary
		case "backup":
			cfg.Role, cfg.Host = arbiter.RoleBackup, "b"
		default:
			return bad("new primary|backup")
		}
		for k, v := range kv {
			var err error
			var n uint64
			switch k {
			case "host":
				cfg.Host = v
			case "vm":
				cfg.VM = v
			case "live":
				cfg.LiveEpoch, err = num(v)
			case "retry":
				n, err = num(v)
				cfg.ClaimRetryTicks = int(n)
			case "handover":
				n, err = num(v)
				cfg.HandoverTicks = int(n)
			case "pause":
				n, err = num(v)
				cfg.PauseTicks = int(n)
			case "reprotect":
				cfg.Reprotect = v
			case "spares":
				cfg.Spares = strings.Split(v, ",")
			case "probe":
				n, err = num(v)
				cfg.ProbeTicks = int(n)
			default:
				return bad("unknown key %q", k)
			}
			if err != nil {
				return bad("%s: %v", k, err)
			}
		}
		m, err := New(cfg)
		if err != nil {
			return fmt.Sprintf("error: %v\n", err)
		}
		e.m, e.lastClaim = m, 0
		return e.transcript(nil)
	}
	if e.m == nil {
		return bad("no machine: start with new")
	}
	claimID := func() (uint64, error) {
		if v, ok := kv["id"]; ok {
			return num(v)
		}
		return e.lastClaim, nil
	}
	errArg := func(def string) error { return errors.New(text(def)) }
	var evs []Event
	switch fields[0] {
	case "started":
		// started [epoch=N] [peer=host] [shared]
		var epoch uint64
		if v, ok := kv["epoch"]; ok {
			var err error
			if epoch, err = num(v); err != nil {
				return bad("%v", err)
			}
		}
		ev := StartedWith(epoch, kv["peer"], kv["addr"], len(pos) > 0 && pos[0] == "shared")
		ev.Sync = len(pos) > 0 && pos[len(pos)-1] == "syncing"
		evs = append(evs, ev)
	case "protect":
		// protect [peer=host]
		evs = append(evs, Protect(kv["peer"]))
	case "synced":
		// synced epoch=N [peer=host] [shared]
		epoch, err := num(kv["epoch"])
		if err != nil {
			return bad("epoch: %v", err)
		}
		evs = append(evs, SyncedWith(epoch, len(pos) > 0 && pos[0] == "shared", kv["peer"]))
	case "probed":
		var err error
		if len(pos) > 0 {
			err = errArg("")
		}
		evs = append(evs, Probed(err))
	case "sync-failed":
		evs = append(evs, SyncFailed(errArg("disk copy: connection reset")))
	case "peer-lost":
		evs = append(evs, PeerLost(errArg("peer silent")))
	case "peer-bye":
		evs = append(evs, PeerBye(errArg("peer closed the channel")))
	case "peer-quit":
		evs = append(evs, PeerQuit(errArg("peer reported an error")))
	case "peer-stepped-down":
		evs = append(evs, PeerSteppedDown(errArg(SentinelMark+"replay stalled for 10 s at icount 7, log offset 4096")))
	case "sentinel":
		evs = append(evs, SentinelTripped(text("replay stalled for 10 s at icount 7, log offset 4096")))
	case "superseded":
		evs = append(evs, EpochSuperseded(text("a later epoch was claimed by another host")))
	case "peer-back":
		evs = append(evs, PeerBack())
	case "tick":
		n := uint64(1)
		if len(pos) > 0 {
			var err error
			if n, err = num(pos[0]); err != nil {
				return bad("%v", err)
			}
		}
		for range n {
			evs = append(evs, Tick())
		}
	case "won", "lost":
		// won <epoch> [id=N]; lost <epoch> [owner] [id=N]
		if len(pos) < 1 {
			return bad("%s <epoch>", fields[0])
		}
		epoch, err := num(pos[0])
		if err != nil {
			return bad("%v", err)
		}
		id, err := claimID()
		if err != nil {
			return bad("%v", err)
		}
		if fields[0] == "won" {
			evs = append(evs, ClaimWon(id, epoch))
		} else {
			owner := ""
			if len(pos) > 1 {
				owner = pos[1]
			}
			evs = append(evs, ClaimLost(id, epoch, owner))
		}
	case "claim-failed":
		id, err := claimID()
		if err != nil {
			return bad("%v", err)
		}
		evs = append(evs, ClaimFailed(id, errArg("storage timed out")))
	case "claim-read":
		// claim-read epoch=N owner=h [corrupt] [err=text]
		epoch, err := num(kv["epoch"])
		if err != nil && kv["err"] == "" {
			return bad("epoch: %v", err)
		}
		var rerr error
		if v, ok := kv["err"]; ok {
			rerr = errors.New(v)
		}
		evs = append(evs, ClaimRead(epoch, kv["owner"], len(pos) > 0 && pos[0] == "corrupt", rerr))
	case "paused":
		evs = append(evs, GuestPaused())
	case "pause-failed":
		evs = append(evs, PauseFailed(errArg("qmp stop: timeout")))
	case "drained":
		evs = append(evs, Drained())
	case "qemu-exited":
		evs = append(evs, QEMUExited(errArg("signal: killed")))
	case "log-write-failed":
		evs = append(evs, LogWriteFailed(text("No space left on device")))
	case "fault":
		evs = append(evs, Fault(errArg("something broke")))
	case "stall":
		evs = append(evs, StallEntered())
	case "stall-cleared":
		evs = append(evs, StallCleared())
	case "qemu-stuck":
		evs = append(evs, QEMUUnresponsive(text("qemu not answering since 20:25:24 (last good probe 20:25:23)")))
	case "qemu-answers":
		evs = append(evs, QEMUAnswers())
	case "golive-done":
		evs = append(evs, GoLiveDone())
	case "golive-failed":
		evs = append(evs, GoLiveFailed(errArg("replay stalled before the cut")))
	case "stop":
		evs = append(evs, Stop(text("")))
	case "shutdown":
		evs = append(evs, Shutdown(text("agent shutting down")))
	case "teardown-done":
		evs = append(evs, TeardownDone())
	case "unprotect":
		evs = append(evs, Unprotect(text("operator request")))
	case "handover":
		evs = append(evs, Handover())
	case "abort":
		evs = append(evs, Abort(errArg("context canceled")))
	case "bogus":
		evs = append(evs, Event{Type: EventType(99)})
	default:
		return bad("unknown command %q", fields[0])
	}
	var errs []error
	for _, ev := range evs {
		if err := e.m.Step(ev); err != nil {
			errs = append(errs, err)
		}
	}
	return e.transcript(errs)
}

func (e *scriptEnv) transcript(errs []error) string {
	rd := e.m.Ready()
	e.m.Advance()
	var b strings.Builder
	st := rd.Status
	fmt.Fprintf(&b, "%s epoch=%d", st.State, st.Epoch)
	if st.Stalled {
		b.WriteString(" stalled")
	}
	if st.QEMUStuck != "" {
		b.WriteString(" qemu-stuck")
	}
	if st.Detail != "" {
		fmt.Fprintf(&b, ": %s", st.Detail)
	}
	b.WriteString("\n")
	for _, a := range rd.Actions {
		if a.Type == ActionClaimEpoch {
			e.lastClaim = a.Claim
		}
		fmt.Fprintf(&b, "> %s\n", a)
	}
	for _, err := range errs {
		fmt.Fprintf(&b, "error: %v\n", err)
	}
	return b.String()
}
