// Package bench holds the lab benchmarks behind `ftvmd bench`: each boots real guests
// on the lab, measures, and returns a summary that the CLI prints as its last line in
// JSON, for docs/benchmarks.md. Comparisons (protected vs unprotected) are made in one
// run, since the machine is noisy.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/lab"
	"github.com/ftvmd/ftvmd/qemu"
)

// Env describes the machine and moment of a run.
type Env struct {
	Command string `json:"command"`
	Date    string `json:"date"`
	Host    string `json:"host"`
	CPUs    int    `json:"cpus"`
	CPU     string `json:"cpu_model"`
	Kernel  string `json:"kernel"`
	QEMU    string `json:"qemu"`
}

// NewEnv records the machine.
func NewEnv(command string) Env {
	hn, _ := os.Hostname()
	e := Env{Command: command, Date: time.Now().UTC().Format(time.RFC3339), Host: hn, CPUs: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(l, "model name") {
				e.CPU = strings.TrimSpace(strings.SplitN(l, ":", 2)[1])
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		e.Kernel = strings.TrimSpace(string(b))
	}
	e.QEMU = engineName(agentQEMU(os.Args))
	return e
}

// engineName names the QEMU the lab's agents run (qemu.DetectEngine with the
// same --qemu they were given), or says why it cannot.
func engineName(binary string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	eng, err := qemu.DetectEngine(ctx, binary)
	if err != nil {
		return "unknown: " + err.Error()
	}
	return eng.Name + " (" + eng.Binary + ")"
}

// agentQEMU finds a --qemu given to the lab's agents (--agent-arg=--qemu=PATH or
// --agent-arg --qemu=PATH) in a command line; "" means the agents' default.
func agentQEMU(args []string) string {
	for _, a := range args {
		a = strings.TrimPrefix(a, "--agent-arg=")
		if v, ok := strings.CutPrefix(a, "--qemu="); ok {
			return v
		}
	}
	return ""
}

// Dist summarises samples.
type Dist struct {
	N   int     `json:"n"`
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
	Avg float64 `json:"avg"`
}

// NewDist computes the distribution of xs.
func NewDist(xs []float64) Dist {
	if len(xs) == 0 {
		return Dist{}
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	var sum float64
	for _, x := range s {
		sum += x
	}
	q := func(p float64) float64 {
		i := int(p * float64(len(s)-1))
		return s[i]
	}
	return Dist{N: len(s), P50: q(0.5), P99: q(0.99), Max: s[len(s)-1], Avg: sum / float64(len(s))}
}

// Session is a lab with both agents running, for one benchmark.
type Session struct {
	Lab *lab.Lab
	Out io.Writer
	// agentArgs are the flags the agents were started with (a restarted agent
	// gets them again).
	agentArgs []string
	// DefineArgs are added to every StartGuest's vm define, after the bench's
	// own flags (so they win): one bench run at another --icount-shift, say.
	DefineArgs []string
}

// Open brings up the lab and both agents.
func Open(ctx context.Context, out io.Writer, agentArgs ...string) (*Session, error) {
	repo, err := lab.FindRepo()
	if err != nil {
		return nil, err
	}
	logf := func(f string, a ...any) { fmt.Fprintf(out, "lab: "+f+"\n", a...) }
	l, err := lab.Up(ctx, repo, logf)
	if err != nil {
		return nil, err
	}
	s := &Session{Lab: l, Out: out, agentArgs: agentArgs}
	for _, h := range []lab.Host{lab.HostA, lab.HostB} {
		if err := l.StartAgent(ctx, h, agentArgs...); err != nil {
			_ = s.Close()
			return nil, err
		}
	}
	return s, nil
}

// LabArgs are a bench's extra flags for its lab's agents and for every guest it
// defines (`ftvmd bench --agent-arg`, `--define-arg`).
type LabArgs struct{ Agent, Define []string }

// OpenLab is Open with la's agent flags, its sessions defining guests with la's
// define flags.
func OpenLab(ctx context.Context, out io.Writer, la LabArgs) (*Session, error) {
	s, err := Open(ctx, out, la.Agent...)
	if err != nil {
		return nil, err
	}
	s.DefineArgs = la.Define
	return s, nil
}

// Close stops the agents and removes the lab.
func (s *Session) Close() error { return s.Lab.Down(false) }

func (s *Session) logf(f string, a ...any) { fmt.Fprintf(s.Out, f+"\n", a...) }

// StartGuest defines and starts vm on host A, protected by B or not, and waits until
// the guest is ready and, if protected, the backup has caught up.
func (s *Session) StartGuest(ctx context.Context, vm, appendExtra string, protected bool, defineFlags ...string) (time.Duration, error) {
	flags := append(append([]string(nil), defineFlags...), s.DefineArgs...)
	if err := s.Lab.DefineGuest(ctx, lab.HostA, vm, appendExtra, flags...); err != nil {
		return 0, err
	}
	return s.StartDefined(ctx, vm, protected)
}

// StartDefined is StartGuest for a VM already defined on host A (one imported from
// libvirt, say): it must be the lab guest, with the lab's guest IP on its command line.
func (s *Session) StartDefined(ctx context.Context, vm string, protected bool) (time.Duration, error) {
	t0 := time.Now()
	args := []string{"run", vm}
	if protected {
		args = []string{"protect", vm, "--backup", lab.HostB.Peer()}
	}
	if _, err := s.Lab.Run(ctx, "a", args...); err != nil {
		return 0, err
	}
	if err := lab.WaitConsole(ctx, lab.Console(lab.HostA, vm, "primary"), "ftguest ready", 5*time.Minute); err != nil {
		return 0, err
	}
	boot := time.Since(t0)
	if protected {
		if err := s.WaitCaughtUp(ctx, vm, 3*time.Minute); err != nil {
			return boot, err
		}
	}
	return boot, nil
}

// WaitCaughtUp waits until the backup's lag is under its bound.
func (s *Session) WaitCaughtUp(ctx context.Context, vm string, timeout time.Duration) error {
	return s.WaitCaughtUpOn(ctx, lab.HostA, vm, timeout)
}

// WaitCaughtUpOn is WaitCaughtUp for a primary on host h.
func (s *Session) WaitCaughtUpOn(ctx context.Context, h lab.Host, vm string, timeout time.Duration) error {
	st, err := pollStatus(ctx, h, vm, timeout, func(st control.VMStatus, _ time.Time) bool {
		return st.BackupIcount > 0 && st.LagMS < float64(st.LagBoundMS)
	})
	if errors.Is(err, errPollTimeout) {
		return fmt.Errorf("backup of %s did not catch up within %s (lag %.0f ms)", vm, timeout, st.LagMS)
	}
	return err
}

// WaitSettled waits until a protected guest has settled after its boot: the
// backup's lag under half the bound and the primary running unthrottled, both for
// settleFor. A protected guest boots with the throttle holding it to the replay's
// pace; figures taken while the throttle is still letting go measure the boot, not
// protection. Only for guests that go idle after boot.
func (s *Session) WaitSettled(ctx context.Context, vm string, timeout time.Duration) error {
	const settleFor = 2 * time.Second
	var since time.Time
	st, err := pollPrimary(ctx, vm, timeout, func(st control.VMStatus, now time.Time) bool {
		if st.BackupIcount == 0 || st.LagMS >= float64(st.LagBoundMS)/2 || st.ThrottleQuota < 1 {
			since = time.Time{}
			return false
		}
		if since.IsZero() {
			since = now
		}
		return now.Sub(since) >= settleFor
	})
	if errors.Is(err, errPollTimeout) {
		return fmt.Errorf("backup of %s did not settle within %s (lag %.0f ms, throttle quota %.2f)", vm, timeout, st.LagMS, st.ThrottleQuota)
	}
	return err
}

var errPollTimeout = errors.New("timed out")

// pollPrimary reads vm's status on host A every 200 ms until done says so, and
// returns the last status read; errPollTimeout when timeout passes first.
func pollPrimary(ctx context.Context, vm string, timeout time.Duration, done func(control.VMStatus, time.Time) bool) (control.VMStatus, error) {
	return pollStatus(ctx, lab.HostA, vm, timeout, done)
}

// pollStatus is pollPrimary for vm's copy on host h.
func pollStatus(ctx context.Context, h lab.Host, vm string, timeout time.Duration, done func(control.VMStatus, time.Time) bool) (control.VMStatus, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := lab.Status(ctx, h, vm)
		if err != nil {
			return st, err
		}
		now := time.Now()
		if done(st, now) {
			return st, nil
		}
		if now.After(deadline) {
			return st, errPollTimeout
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// StopGuest stops vm on host A (and so its backup).
func (s *Session) StopGuest(ctx context.Context, vm string) error {
	_, err := s.Lab.Run(ctx, "a", "stop", vm)
	// Give the backup a moment to see the channel end and stop too.
	time.Sleep(500 * time.Millisecond)
	return err
}
