package outputrule

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/internal/script"
)

// Test scripts live in testdata/*.txt. Each block is one command line, then a
// line "----", then the expected transcript, ended by a blank line. Lines
// starting with '#' between blocks are comments. Run with -rewrite to
// regenerate the transcripts.
var rewrite = flag.Bool("rewrite", false, "rewrite testdata transcripts with the actual output")

func TestDataDriven(t *testing.T) {
	script.RunDir(t, *rewrite, func() func(string) string { return (newScriptEnv()).handle })
}

// scriptEnv drives one Rule. Time is a fake clock in milliseconds.
type scriptEnv struct {
	r     *Rule
	epoch time.Time
	now   time.Time
}

func newScriptEnv() *scriptEnv {
	e := time.Unix(1_000_000, 0).UTC()
	return &scriptEnv{r: New(Config{}, Protected), epoch: e, now: e}
}

func (e *scriptEnv) ms(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return fmt.Sprintf("%dms", t.Sub(e.epoch).Milliseconds())
}

func atoi64(s string) (int64, error) { return strconv.ParseInt(s, 10, 64) }

// handle runs one command and returns its transcript (never empty).
func (e *scriptEnv) handle(cmd string) string {
	fields := strings.Fields(cmd)
	pos, kv := script.Args(fields[1:])
	var b strings.Builder
	errf := func(format string, a ...any) string { return fmt.Sprintf("bad command: "+format+"\n", a...) }
	switch fields[0] {
	case "new":
		// new [max-bytes=N] [max-frames=N] [mode=protected]
		var cfg Config
		var err error
		if v, ok := kv["max-bytes"]; ok {
			if cfg.MaxHeldBytes, err = atoi64(v); err != nil {
				return errf("%v", err)
			}
		}
		if v, ok := kv["max-frames"]; ok {
			if cfg.MaxHeldFrames, err = strconv.Atoi(v); err != nil {
				return errf("%v", err)
			}
		}
		mode := Protected
		if v, ok := kv["mode"]; ok {
			if mode, err = ParseMode(v); err != nil {
				return errf("%v", err)
			}
		}
		e.r = New(cfg, mode)
		e.now = e.epoch
		fmt.Fprintf(&b, "mode=%s\n", mode)
	case "now":
		// now <ms>
		if len(pos) != 1 {
			return errf("now <ms>")
		}
		ms, err := atoi64(pos[0])
		if err != nil {
			return errf("%v", err)
		}
		e.now = e.epoch.Add(time.Duration(ms) * time.Millisecond)
		fmt.Fprintf(&b, "now=%s\n", e.ms(e.now))
	case "frame":
		// frame <stamp>... [size=N]
		size := 100
		if v, ok := kv["size"]; ok {
			var err error
			if size, err = strconv.Atoi(v); err != nil {
				return errf("%v", err)
			}
		}
		for _, p := range pos {
			st, err := atoi64(p)
			if err != nil {
				return errf("%v", err)
			}
			before := e.r.Stats()
			err = e.r.Frame(Frame{Stamp: st, Size: size}, e.now)
			if err != nil {
				fmt.Fprintf(&b, "frame %d: error: %v\n", st, err)
				continue
			}
			after := e.r.Stats()
			f := e.r.q[len(e.r.q)-1]
			state := "held"
			if after.PendingFrames > before.PendingFrames {
				state = "releasable"
			}
			fmt.Fprintf(&b, "frame seq=%d stamp=%d size=%d: %s\n", f.Seq, f.Stamp, f.Size, state)
		}
	case "sent":
		off, err := atoi64(pos[0])
		if err != nil {
			return errf("%v", err)
		}
		e.r.Sent(off)
		fmt.Fprintf(&b, "sent=%d\n", e.r.Stats().Sent)
	case "ack":
		for _, p := range pos {
			off, err := atoi64(p)
			if err != nil {
				return errf("%v", err)
			}
			if err := e.r.Ack(off, e.now); err != nil {
				fmt.Fprintf(&b, "ack %d: error: %v\n", off, err)
				continue
			}
			s := e.r.Stats()
			fmt.Fprintf(&b, "ack %d: acked=%d held=%d releasable=%d\n", off, s.Acked, s.HeldFrames, s.PendingFrames)
		}
	case "mode":
		m, err := ParseMode(pos[0])
		if err != nil {
			return errf("%v", err)
		}
		e.r.SetMode(m, e.now)
		s := e.r.Stats()
		fmt.Fprintf(&b, "mode=%s held=%d releasable=%d\n", s.Mode, s.HeldFrames, s.PendingFrames)
	case "ready", "process":
		// ready: show Ready (and check every frame against the invariant);
		// process: the same, then Advance.
		rd := e.r.Ready()
		for _, f := range rd.Release {
			fmt.Fprintf(&b, "release seq=%d stamp=%d size=%d delay=%s\n", f.Seq, f.Stamp, f.Size, e.now.Sub(f.ArrivedAt))
			if err := e.r.CheckRelease(f); err != nil {
				fmt.Fprintf(&b, "  INVARIANT: %v\n", err)
			}
		}
		if rd.Backpressure {
			b.WriteString("backpressure\n")
		}
		if len(rd.Release) == 0 && !rd.Backpressure {
			b.WriteString("nothing\n")
		}
		if fields[0] == "process" {
			e.r.Advance()
		}
	case "advance":
		e.r.Advance()
		b.WriteString("ok\n")
	case "stats":
		s := e.r.Stats()
		fmt.Fprintf(&b, "mode=%s sent=%d acked=%d\n", s.Mode, s.Sent, s.Acked)
		fmt.Fprintf(&b, "held=%d/%dB oldest=%s releasable=%d/%dB\n", s.HeldFrames, s.HeldBytes, e.ms(s.OldestHeldAt), s.PendingFrames, s.PendingBytes)
		fmt.Fprintf(&b, "released=%d/%dB max-held=%d/%dB full=%d\n", s.ReleasedFrames, s.ReleasedBytes, s.MaxHeldFrames, s.MaxHeldBytes, s.FullEvents)
		fmt.Fprintf(&b, "lying-acks=%d stale-acks=%d stamp-regressions=%d dropped=%d/%dB\n", s.LyingAcks, s.StaleAcks, s.StampRegressions, s.DroppedFrames, s.DroppedBytes)
		fmt.Fprintf(&b, "delay total=%s max=%s\n", s.TotalDelay, s.MaxDelay)
	default:
		return errf("unknown command %q", fields[0])
	}
	return b.String()
}
