package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/qmptest"
	"github.com/digitalocean/go-qemu/qmp/raw"
)

// machineOnFake is a Machine whose QMP monitor is go-qemu's qmptest fake and which
// has no process: what the QMP wrappers send, and how their deadlines hold, without
// a QEMU.
func machineOnFake(t *testing.T, fn qmptest.RunFunc, opts ...Opt) *Machine {
	t.Helper()
	m, err := New(Config{Name: "fake"}, append([]Opt{WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	mon := qmptest.NewMonitor(fn)
	m.mon, m.raw = mon, raw.NewMonitor(mon)
	return m
}

// ok is QMP's empty success reply.
var ok = map[string]any{"return": map[string]any{}}

func TestQMPCommandsOnFake(t *testing.T) {
	var mu sync.Mutex
	var got []string
	m := machineOnFake(t, func(cmd qmp.Command) (any, error) {
		mu.Lock()
		got = append(got, cmd.Execute)
		mu.Unlock()
		switch cmd.Execute {
		case "query-status":
			return map[string]any{"return": map[string]any{"running": false, "singlestep": false, "status": "paused"}}, nil
		case "query-replay":
			return map[string]any{"return": ReplayInfo{Mode: "play", Icount: 42}}, nil
		}
		return ok, nil
	})
	ctx := context.Background()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if st, err := m.Status(ctx); err != nil || st != "paused" {
		t.Fatalf("status %q, %v; want paused", st, err)
	}
	if ri, err := m.QueryReplay(ctx); err != nil || ri.Icount != 42 || ri.Mode != "play" {
		t.Fatalf("query-replay %+v, %v; want play at 42", ri, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(got) != "[stop cont query-status query-replay]" {
		t.Fatalf("commands sent %v", got)
	}
}

// go-qemu's Run has no deadline: a QEMU that does not answer must not hold a
// caller (the lifecycle's pause, go-live's queries) past the Machine's.
func TestQMPCallDeadline(t *testing.T) {
	release := make(chan struct{})
	m := machineOnFake(t, func(qmp.Command) (any, error) { <-release; return ok, nil }, WithQMPTimeout(50*time.Millisecond))
	t0 := time.Now()
	err := m.Pause(context.Background())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("pause on a monitor that does not answer: %v, want %v", err, context.DeadlineExceeded)
	}
	if d := time.Since(t0); d > 2*time.Second {
		t.Fatalf("pause returned after %s; its deadline was 50ms", d)
	}
	close(release)
	m.calls.Wait() // the abandoned call ends once the monitor answers
}

func TestQMPErrorIsWrapped(t *testing.T) {
	boom := errors.New("Guest is not running")
	m := machineOnFake(t, func(qmp.Command) (any, error) { return nil, boom })
	if err := m.Cont(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("cont: %v, want it to wrap %v", err, boom)
	}
}

// TestProbeOneInFlight: a probe that QEMU does not answer in time stays out, and
// the probes after it wait for that same command instead of queuing more (one
// goroutine for a QEMU wedged for hours); its answer answers them all.
func TestProbeOneInFlight(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	sent := 0
	m := machineOnFake(t, func(cmd qmp.Command) (any, error) {
		mu.Lock()
		sent++
		mu.Unlock()
		<-release
		return map[string]any{"return": map[string]any{"running": true, "singlestep": false, "status": "running"}}, nil
	})
	for i := range 3 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		err := m.Probe(ctx)
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("probe %d of a monitor that does not answer: %v, want %v", i, err, context.DeadlineExceeded)
		}
	}
	mu.Lock()
	n := sent
	mu.Unlock()
	if n != 1 {
		t.Fatalf("%d query-status commands sent by 3 probes, want the one in flight only", n)
	}
	close(release)
	if err := m.Probe(context.Background()); err != nil {
		t.Fatalf("probe once QEMU answers: %v", err)
	}
	// Answered: the next probe sends a new command.
	if err := m.Probe(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if sent < 2 || sent > 3 {
		// 2: the waiting probe got the old command's answer; 3: it came after it.
		t.Fatalf("%d commands after a fresh probe, want 2 or 3", sent)
	}
	m.calls.Wait()
}

func TestProbeError(t *testing.T) {
	boom := errors.New("monitor broke")
	m := machineOnFake(t, func(qmp.Command) (any, error) { return nil, boom })
	if err := m.Probe(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("probe: %v, want it to wrap %v", err, boom)
	}
	m2, err := New(Config{Name: "unstarted"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m2.Probe(context.Background()); !errors.Is(err, ErrNotStarted) {
		t.Fatalf("probe before connect: %v, want %v", err, ErrNotStarted)
	}
}
