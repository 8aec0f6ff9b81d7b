package agent

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/logging"
)

// logRecorder is a slog.Handler that keeps every record.
type logRecorder struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecorder) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	h.recs = append(h.recs, r.Clone())
	h.mu.Unlock()
	return nil
}
func (h *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *logRecorder) WithGroup(string) slog.Handler      { return h }

// take returns the records logged since the last call.
func (h *logRecorder) take() []slog.Record {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := h.recs
	h.recs = nil
	return r
}

func attrs(r slog.Record) map[string]slog.Value {
	m := map[string]slog.Value{}
	r.Attrs(func(a slog.Attr) bool { m[a.Key] = a.Value; return true })
	return m
}

// TestBackupReportsStall drives the backup's stall reporting with samples on a fake
// clock: one WARN with the figures when the replay stalls, one INFO when it moves
// again, the backup's status, and the report carried over a real log channel to the
// primary, whose status and log say the same.
func TestBackupReportsStall(t *testing.T) {
	const start = 12
	link := logging.NewMemLink()
	src := logging.NewMemLog(start)
	if err := src.Append(start, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}
	snd := logging.NewSender(link.A(), src, logging.SenderConfig{StartOffset: start, HeartbeatInterval: 10 * time.Millisecond, PeerTimeout: time.Hour})
	rcv := logging.NewReceiver(link.B(), logging.NewMemLog(start), logging.ReceiverConfig{StartOffset: start,
		StallReports: true, HeartbeatInterval: 10 * time.Millisecond, PeerTimeout: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for _, run := range []func(context.Context) error{snd.Run, rcv.Run} {
		wg.Add(1)
		go func() { defer wg.Done(); _ = run(ctx) }()
	}
	snd.Publish(start+100, 1000)

	blog, plog := &logRecorder{}, &logRecorder{}
	// The lifecycle logs elsewhere: this test reads what the stall report logs.
	b, _ := lifeBackup(t, &Agent{cfg: Config{Host: "hostb"}}, slog.New(slog.DiscardHandler))
	b.log, b.recv = slog.New(blog), rcv
	if err := b.life.start(0, "hosta", false); err != nil {
		t.Fatal(err)
	}
	defer b.life.close()
	p := &primary{log: slog.New(plog)}
	d := newStallDetector(3 * time.Second)
	t0 := time.Unix(1_700_000_000, 0)
	sample := func(dt time.Duration, icount uint64) {
		b.watchStall(d, replaySample{At: t0.Add(dt), Icount: icount, LogIcount: 1000, Position: 40, Fed: 80, Held: 112})
	}
	// The primary's view: wait for an ack saying so, then show it as primary.status does.
	prev := logging.ReplayStall{}
	primaryView := func(what string, ok func(logging.ReplayStall) bool) stallView {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case a := <-snd.Acks():
				if !a.StallReported {
					t.Fatalf("ack without a stall report: %+v", a)
				}
				p.logBackupStall(prev, a.Stall)
				prev = a.Stall
				if ok(a.Stall) {
					var st control.VMStatus
					fillBackupStallStatus(&st, a.Stall)
					return stallFields(st)
				}
			case <-deadline:
				t.Fatalf("the primary never heard: %s", what)
			}
		}
	}

	sample(0, 500)
	sample(2999*time.Millisecond, 500)
	if recs := blog.take(); len(recs) != 0 {
		t.Fatalf("logged before the threshold: %v", recs)
	}
	if st := b.status(); st.ReplayStalled || !st.ReplayStallReported {
		t.Fatalf("status before the threshold: %+v", st)
	}

	sample(3*time.Second, 500)
	sample(4*time.Second, 500)
	recs := blog.take()
	if len(recs) != 1 || recs[0].Level != slog.LevelWarn || recs[0].Message != "replay stalled" {
		t.Fatalf("want one WARN \"replay stalled\", got %v", recs)
	}
	a := attrs(recs[0])
	if a["icount"].Uint64() != 500 || a["fed"].Int64() != 80 || a["held"].Int64() != 112 ||
		a["held_beyond"].Int64() != 72 || a["for"].Duration() != 3*time.Second {
		t.Fatalf("stall logged with %v", a)
	}
	want := stallView{Reported: true, Stalled: true, Sec: 4, AtIcount: 500, Beyond: 72, Stalls: 1}
	if got := stallFields(b.status()); got != want {
		t.Fatalf("backup status %+v, want %+v", got, want)
	}
	// The first stalled ack may still say 3 s: wait for the latest figure.
	if got := primaryView("the stall", func(s logging.ReplayStall) bool { return s.For == 4*time.Second }); got != want {
		t.Fatalf("primary status %+v, want %+v", got, want)
	}
	if recs := plog.take(); len(recs) != 1 || recs[0].Level != slog.LevelWarn || recs[0].Message != "backup replay stalled" {
		t.Fatalf("primary log: %v", recs)
	}

	sample(4*time.Second+5*time.Millisecond, 501)
	recs = blog.take()
	if len(recs) != 1 || recs[0].Level != slog.LevelInfo || recs[0].Message != "replay progressing again" {
		t.Fatalf("want one INFO on recovery, got %v", recs)
	}
	want = stallView{Reported: true, Stalls: 1}
	if got := stallFields(b.status()); got != want {
		t.Fatalf("backup status after recovery %+v, want %+v", got, want)
	}
	if got := primaryView("the recovery", func(s logging.ReplayStall) bool { return !s.Stalled() }); got != want {
		t.Fatalf("primary status after recovery %+v, want %+v", got, want)
	}
	if recs := plog.take(); len(recs) != 1 || recs[0].Level != slog.LevelInfo {
		t.Fatalf("primary log on recovery: %v", recs)
	}
}

// stallView is the stall part of a control.VMStatus, comparable.
type stallView struct {
	Reported, Stalled bool
	Sec               float64
	AtIcount          uint64
	Beyond            int64
	Stalls            uint64
}

func stallFields(st control.VMStatus) stallView {
	return stallView{st.ReplayStallReported, st.ReplayStalled, st.ReplayStalledSec, st.ReplayStalledAtIcount,
		st.ReplayStalledLogBeyond, st.ReplayStalls}
}
