package outputrule

import (
	"errors"
	"math/rand/v2"
	"testing"
	"time"
)

var t0 = time.Unix(1_000_000, 0)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		want    Config
		wantErr error
	}{
		{"zero gets defaults", Config{}, Config{DefaultMaxHeldBytes, DefaultMaxHeldFrames}, nil},
		{"explicit kept", Config{10, 2}, Config{10, 2}, nil},
		{"negative bytes", Config{MaxHeldBytes: -1}, Config{}, ErrInvalidConfig},
		{"negative frames", Config{MaxHeldFrames: -1}, Config{}, ErrInvalidConfig},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := tc.cfg
			err := c.Validate()
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if err == nil && c != tc.want {
				t.Fatalf("cfg = %+v, want %+v", c, tc.want)
			}
		})
	}
}

func TestNewBadInputFallsBackToSafe(t *testing.T) {
	r := New(Config{MaxHeldBytes: -5}, Mode(42))
	if r.Mode() != Protected {
		t.Fatalf("mode = %v, want protected", r.Mode())
	}
	if err := r.Frame(Frame{Stamp: 1, Size: 1}, t0); err != nil {
		t.Fatal(err)
	}
	if len(r.Ready().Release) != 0 {
		t.Fatal("released without ack")
	}
}

// step is one event in a table-driven scenario.
type step struct {
	kind    string
	arg     int64
	mode    Mode
	wantErr error
	// after the step, Ready().Release must hold exactly these seqs (then Advance)
	release []uint64
}

func TestRuleTable(t *testing.T) {
	tests := []struct {
		name  string
		cfg   Config
		mode  Mode
		steps []step
	}{
		{
			name: "held until ack, FIFO",
			steps: []step{
				{kind: "frame", arg: 10}, {kind: "frame", arg: 20}, {kind: "frame", arg: 30},
				{kind: "sent", arg: 100},
				{kind: "ack", arg: 25, release: []uint64{1, 2}},
				{kind: "ack", arg: 30, release: []uint64{3}},
			},
		},
		{
			name: "reordered acks",
			steps: []step{
				{kind: "frame", arg: 10}, {kind: "frame", arg: 20},
				{kind: "sent", arg: 100},
				{kind: "ack", arg: 20, release: []uint64{1, 2}},
				{kind: "ack", arg: 10},
			},
		},
		{
			name: "already acked frame released at next Ready",
			steps: []step{
				{kind: "sent", arg: 100}, {kind: "ack", arg: 50},
				{kind: "frame", arg: 40, release: []uint64{1}},
				{kind: "frame", arg: 60},
			},
		},
		{
			name: "lying ack ignored",
			steps: []step{
				{kind: "frame", arg: 10},
				{kind: "sent", arg: 5},
				{kind: "ack", arg: 10, wantErr: ErrAckBeyondSent},
				{kind: "sent", arg: 10},
				{kind: "ack", arg: 10, release: []uint64{1}},
			},
		},
		{
			name: "full then accepted after ack and advance",
			cfg:  Config{MaxHeldFrames: 1},
			steps: []step{
				{kind: "frame", arg: 10},
				{kind: "frame", arg: 20, wantErr: ErrFull},
				{kind: "sent", arg: 10},
				{kind: "ack", arg: 10, release: []uint64{1}},
				{kind: "frame", arg: 20},
			},
		},
		{
			name: "unprotected releases all and passes through",
			steps: []step{
				{kind: "frame", arg: 10}, {kind: "frame", arg: 20},
				{kind: "mode", mode: Unprotected, release: []uint64{1, 2}},
				{kind: "frame", arg: 30, release: []uint64{3}},
			},
		},
		{
			name: "halt releases nothing ever",
			steps: []step{
				{kind: "frame", arg: 10}, {kind: "sent", arg: 100},
				{kind: "mode", mode: Halted},
				{kind: "ack", arg: 100},
				{kind: "frame", arg: 20, wantErr: ErrHalted},
				{kind: "mode", mode: Unprotected},
				{kind: "frame", arg: 30, wantErr: ErrHalted},
			},
		},
		{
			name: "invalid frame",
			steps: []step{
				{kind: "frame", arg: -1, wantErr: ErrInvalidFrame},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := New(tc.cfg, tc.mode)
			for i, s := range tc.steps {
				var err error
				switch s.kind {
				case "frame":
					err = r.Frame(Frame{Stamp: s.arg, Size: 10}, t0)
				case "sent":
					r.Sent(s.arg)
				case "ack":
					err = r.Ack(s.arg, t0)
				case "mode":
					r.SetMode(s.mode, t0)
				}
				if !errors.Is(err, s.wantErr) {
					t.Fatalf("step %d %s %d: err = %v, want %v", i, s.kind, s.arg, err, s.wantErr)
				}
				rd := r.Ready()
				var got []uint64
				for _, f := range rd.Release {
					if err := r.CheckRelease(f); err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
					got = append(got, f.Seq)
				}
				r.Advance()
				if len(got) != len(s.release) {
					t.Fatalf("step %d %s %d: released %v, want %v", i, s.kind, s.arg, got, s.release)
				}
				for j := range got {
					if got[j] != s.release[j] {
						t.Fatalf("step %d %s %d: released %v, want %v", i, s.kind, s.arg, got, s.release)
					}
				}
			}
		})
	}
}

func TestCheckReleaseDetectsEarlyRelease(t *testing.T) {
	r := New(Config{}, Protected)
	r.Sent(100)
	if err := r.Ack(50, t0); err != nil {
		t.Fatal(err)
	}
	if err := r.CheckRelease(Frame{Seq: 1, Stamp: 60}); !errors.Is(err, ErrEarlyRelease) {
		t.Fatalf("err = %v, want ErrEarlyRelease", err)
	}
	if err := r.CheckRelease(Frame{Seq: 1, Stamp: 50}); err != nil {
		t.Fatal(err)
	}
	r.SetMode(Halted, t0)
	if err := r.CheckRelease(Frame{Seq: 1, Stamp: 0}); !errors.Is(err, ErrHalted) {
		t.Fatalf("err = %v, want ErrHalted", err)
	}
}

// TestRandomInvariant drives the rule with random events and checks, at each
// release: the output rule, FIFO order without gaps, and conservation
// (accepted = released + held + pending + dropped).
func TestRandomInvariant(t *testing.T) {
	for seed := uint64(1); seed <= 200; seed++ {
		rng := rand.New(rand.NewPCG(seed, seed))
		r := New(Config{MaxHeldFrames: 1 + rng.IntN(20), MaxHeldBytes: int64(100 + rng.IntN(2000))}, Protected)
		var logSize, sent int64
		var accepted, lastSeq uint64
		now := t0
		halted := false
		for i := 0; i < 2000; i++ {
			now = now.Add(time.Duration(rng.IntN(1000)) * time.Microsecond)
			switch k := rng.IntN(100); {
			case k < 40:
				logSize += int64(rng.IntN(50))
				st := logSize - int64(rng.IntN(5)) // occasional regression
				if st < 0 {
					st = 0
				}
				err := r.Frame(Frame{Stamp: st, Size: 1 + rng.IntN(300)}, now)
				switch {
				case err == nil:
					accepted++
				case errors.Is(err, ErrFull), errors.Is(err, ErrHalted):
				default:
					t.Fatalf("seed %d: Frame: %v", seed, err)
				}
			case k < 60:
				sent += int64(rng.IntN(60))
				if sent > logSize {
					sent = logSize
				}
				r.Sent(sent)
			case k < 85:
				off := sent - int64(rng.IntN(80)) + int64(rng.IntN(10)) // stale, fresh and lying
				err := r.Ack(off, now)
				if err != nil && !errors.Is(err, ErrAckBeyondSent) {
					t.Fatalf("seed %d: Ack: %v", seed, err)
				}
			case k < 86:
				r.SetMode(Halted, now)
				halted = true
			case k < 87 && !halted:
				r.SetMode(Unprotected, now)
			case k < 88 && !halted:
				r.SetMode(Protected, now)
				sent, logSize = 0, 0
			default:
				rd := r.Ready()
				for _, f := range rd.Release {
					if halted {
						t.Fatalf("seed %d: release while halted", seed)
					}
					if err := r.CheckRelease(f); err != nil {
						t.Fatalf("seed %d: %v", seed, err)
					}
					if f.Seq != lastSeq+1 {
						t.Fatalf("seed %d: released seq %d after %d", seed, f.Seq, lastSeq)
					}
					lastSeq = f.Seq
				}
				if rng.IntN(4) > 0 {
					r.Advance()
				} else {
					lastSeq -= uint64(len(rd.Release)) // will be handed out again
				}
			}
			s := r.Stats()
			if got := s.ReleasedFrames + uint64(s.HeldFrames) + uint64(s.PendingFrames) + s.DroppedFrames; !halted && got != accepted {
				t.Fatalf("seed %d step %d: conservation: %d released+held+pending+dropped, %d accepted", seed, i, got, accepted)
			}
			if s.HeldFrames+s.PendingFrames > 1 && (s.HeldFrames+s.PendingFrames > r.cfg.MaxHeldFrames || s.HeldBytes+s.PendingBytes > r.cfg.MaxHeldBytes) {
				t.Fatalf("seed %d: bounds exceeded: %+v", seed, s)
			}
		}
	}
}

// FuzzRule: any sequence of frames, sent offsets, acks (true, stale or lying), mode
// changes and releases (2 bytes per op). Every frame handed out passes CheckRelease,
// in order without gaps; nothing is handed out once halted; and while not halted
// every accepted frame is released, held, pending or dropped (the same invariants
// as TestRandomInvariant, on inputs the fuzzer picks).
func FuzzRule(f *testing.F) {
	f.Add([]byte{0, 10, 1, 20, 2, 15, 3, 0})
	f.Add([]byte{0, 10, 0, 30, 1, 40, 2, 35, 3, 1, 4, 1, 0, 5, 3, 0, 4, 3, 0, 9, 3, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		r := New(Config{MaxHeldFrames: 8, MaxHeldBytes: 800}, Protected)
		now := t0
		var accepted, lastSeq uint64
		halted := false
		for i := 0; i+1 < len(ops); i += 2 {
			v := int64(ops[i+1]) - 8
			switch ops[i] % 5 {
			case 0:
				switch err := r.Frame(Frame{Stamp: v, Size: int(ops[i+1])}, now); {
				case err == nil:
					accepted++
				case errors.Is(err, ErrFull), errors.Is(err, ErrHalted), errors.Is(err, ErrInvalidFrame):
				default:
					t.Fatalf("Frame: %v", err)
				}
			case 1:
				r.Sent(v)
			case 2:
				if err := r.Ack(v, now); err != nil && !errors.Is(err, ErrAckBeyondSent) {
					t.Fatalf("Ack: %v", err)
				}
			case 3:
				rd := r.Ready()
				for _, fr := range rd.Release {
					if halted {
						t.Fatalf("frame %d handed out while halted", fr.Seq)
					}
					if err := r.CheckRelease(fr); err != nil {
						t.Fatal(err)
					}
					if fr.Seq != lastSeq+1 {
						t.Fatalf("released seq %d after %d", fr.Seq, lastSeq)
					}
					lastSeq = fr.Seq
				}
				if ops[i+1]&1 == 0 {
					r.Advance()
				} else {
					lastSeq -= uint64(len(rd.Release)) // not advanced: handed out again
				}
			case 4:
				m := Mode(int(ops[i+1]) % 4)
				if halted && m != Halted {
					continue // a halted rule stays halted; not what this target checks
				}
				r.SetMode(m, now)
				halted = halted || r.Mode() == Halted
			}
			st := r.Stats()
			if got := st.ReleasedFrames + uint64(st.HeldFrames) + uint64(st.PendingFrames) + st.DroppedFrames; !halted && got != accepted {
				t.Fatalf("op %d: %d released+held+pending+dropped, %d accepted", i/2, got, accepted)
			}
			if st.HeldFrames+st.PendingFrames > 1 && (st.HeldFrames+st.PendingFrames > 8 || st.HeldBytes+st.PendingBytes > 800) {
				t.Fatalf("op %d: bounds exceeded: %+v", i/2, st)
			}
			now = now.Add(time.Millisecond)
		}
	})
}

func BenchmarkRuleProtected(b *testing.B) {
	r := New(Config{}, Protected)
	now := t0
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		off := int64(i)
		if err := r.Frame(Frame{Stamp: off, Size: 1500}, now); err != nil {
			b.Fatal(err)
		}
		r.Sent(off)
		_ = r.Ack(off, now)
		for range r.Ready().Release {
		}
		r.Advance()
	}
}

// TestStatsDelayHist: each frame's added delay (release decision time minus
// ArrivedAt) lands in Stats.DelayHist when the frame becomes releasable.
func TestStatsDelayHist(t *testing.T) {
	r := New(Config{}, Protected)
	r.Sent(100)
	for i, at := range []time.Duration{0, 1 * time.Millisecond, 2 * time.Millisecond} {
		if err := r.Frame(Frame{Stamp: int64(10 * (i + 1)), Size: 1, ArrivedAt: t0.Add(at)}, t0.Add(at)); err != nil {
			t.Fatal(err)
		}
	}
	// Acked at 3 ms: frames 1 and 2 waited 3 ms and 2 ms; frame 3 still held.
	if err := r.Ack(20, t0.Add(3*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if h := r.Stats().DelayHist; h.Count() != 2 || h.Quantile(0.5) != 3200*time.Microsecond || h.Quantile(1) != 3200*time.Microsecond {
		t.Fatalf("after first ack: count %d p50 %v p100 %v, want 2, 3.2ms, 3.2ms", h.Count(), h.Quantile(0.5), h.Quantile(1))
	}
	// Acked at 10 ms: frame 3 waited 8 ms (bucket (6.4, 12.8] ms).
	if err := r.Ack(30, t0.Add(10*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	r.Ready()
	r.Advance()
	s := r.Stats()
	if s.ReleasedFrames != 3 || s.DelayHist.Count() != 3 {
		t.Fatalf("released %d, histogram count %d, want 3 and 3", s.ReleasedFrames, s.DelayHist.Count())
	}
	if got, want := s.DelayHist.Quantile(1), 12800*time.Microsecond; got != want {
		t.Fatalf("p100 = %v, want %v", got, want)
	}
	if got, want := s.DelayHist.Quantile(0.5), 3200*time.Microsecond; got != want {
		t.Fatalf("p50 = %v, want %v", got, want)
	}
}

// A frame held elsewhere travels through the rule as a Tag with no Data; the
// rule hands the tags back in order, unchanged, and sizes count as given.
func TestTagCarriedWithoutData(t *testing.T) {
	r := New(Config{}, Protected)
	r.Sent(100)
	for i, tag := range []uint64{7, 8, 10} {
		if err := r.Frame(Frame{Stamp: int64(10 * (i + 1)), Size: 1500, Tag: tag}, t0); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Ack(20, t0); err != nil {
		t.Fatal(err)
	}
	rd := r.Ready()
	var got []uint64
	for _, f := range rd.Release {
		got = append(got, f.Tag)
		if f.Data != nil {
			t.Fatalf("frame %d has data", f.Seq)
		}
	}
	if len(got) != 2 || got[0] != 7 || got[1] != 8 {
		t.Fatalf("released tags %v, want [7 8]", got)
	}
	r.Advance()
	if st := r.Stats(); st.ReleasedBytes != 3000 || st.HeldBytes != 1500 {
		t.Fatalf("released %d bytes, held %d; want 3000 and 1500", st.ReleasedBytes, st.HeldBytes)
	}
}
