package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/lab"
)

// The iperf3 phase of `ftvmd bench net`: Debian's iperf3, a standard TCP throughput
// tool written elsewhere, run from the lab's client host against the server the lab
// guest starts at boot (test/guest/build.sh), one stream each way. Outside testers
// measure ftvmd with tools like it; its figures sit beside bench net's own so that
// the two can be compared in one run.

// IperfConsoleLine is what the guest's init prints once it started iperf3's server;
// a guest image built before iperf3 was in it never prints it.
const IperfConsoleLine = "ftguest init: iperf3 -s on :5201"

// Directions of an iperf3 run.
const (
	IperfToGuest  = "client_to_guest" // iperf3 -c
	IperfToClient = "guest_to_client" // iperf3 -c -R
)

// IperfRun is one iperf3 run: its figures and what the lab did meanwhile.
type IperfRun struct {
	Direction string `json:"direction"`
	// MbitS is the bytes the receiver got over the time the client measured
	// (the client host's clock): the figure compared. The guest's clock runs on
	// its instruction count, and iperf3 reports each side's rate on its own clock.
	MbitS float64 `json:"mbit_s"`
	// What iperf3 itself prints: the receiver's and the sender's lines, and the
	// seconds each side measured (the guest's side on the guest's clock).
	ReceiverMbitS   float64 `json:"iperf3_receiver_mbit_s"`
	SenderMbitS     float64 `json:"iperf3_sender_mbit_s"`
	ReceiverSeconds float64 `json:"iperf3_receiver_seconds"`
	SenderSeconds   float64 `json:"iperf3_sender_seconds"`
	ReceivedBytes   int64   `json:"received_bytes"`
	// ClientSeconds is the time MbitS covers, on the client's clock.
	ClientSeconds float64 `json:"client_seconds"`
	Retransmits   int     `json:"retransmits"`
	// The primary's log rate, the time its throttle and its network pacing held
	// it back, and where the cores went, over the run.
	LogMbitS   float64 `json:"log_mbit_s"`
	ThrottledS float64 `json:"throttled_s"`
	PacedS     float64 `json:"paced_s"`
	CPU        CPUUse  `json:"cpu"`
	// Protected only: the backup's lag when the run started and when it ended,
	// and the VM's state at the end (a backup that stepped down mid-run leaves
	// figures that are not protected ones).
	LagMSStart  float64 `json:"backup_lag_ms_start,omitempty"`
	LagMSEnd    float64 `json:"backup_lag_ms_end,omitempty"`
	LagBytesEnd int64   `json:"backup_lag_bytes_end,omitempty"`
	StateEnd    string  `json:"state_end"`
	// Error: iperf3's error when the run ended in one (what a tester would have
	// seen). With per-second figures before it, MbitS is the client's up to the
	// error (ClientSeconds); without, MbitS is 0, and unprotected that fails the
	// bench. The guest's iperf3 server ends a test it still runs its -t plus 40 s
	// after it started, on the guest's clock, which under -icount runs at the pace
	// of the guest's instructions, not of real time.
	Error         string `json:"error,omitempty"`
	iperf3Version string
}

// IperfSide is one mode's iperf3 runs.
type IperfSide struct {
	ToGuest  IperfRun `json:"client_to_guest"`
	ToClient IperfRun `json:"guest_to_client"`
}

// IperfResult is the iperf3 phase of `ftvmd bench net`. A ratio is 0 when a run
// it needs failed.
type IperfResult struct {
	Seconds       int       `json:"seconds"`
	Version       string    `json:"version"` // as iperf3 reports itself, e.g. "iperf 3.12"
	Unprotected   IperfSide `json:"unprotected"`
	Protected     IperfSide `json:"protected"`
	ToGuestRatio  float64   `json:"client_to_guest_ratio"`
	ToClientRatio float64   `json:"guest_to_client_ratio"`
}

// CheckIperfHost fails when the host has no iperf3 to run the client with.
func CheckIperfHost() error {
	if _, err := exec.LookPath("iperf3"); err != nil {
		return fmt.Errorf("iperf3 is not installed on this host (apt-get install iperf3; test/guest/build.sh installs it): %w", err)
	}
	return nil
}

// checkIperfGuest fails when the guest whose console is at path did not start
// iperf3's server: a guest image built before it had iperf3. The guest prints the
// line before "ftguest ready", which the bench waited for.
func checkIperfGuest(path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("iperf3 in the guest: %w", err)
	}
	if !bytes.Contains(b, []byte(IperfConsoleLine)) {
		return fmt.Errorf("the guest has no iperf3 server (%q is not on its console %s): rebuild the guest image with test/guest/build.sh", IperfConsoleLine, path)
	}
	return nil
}

// iperfReport is the part of `iperf3 --json`'s output (iperf 3.12) the bench reads.
type iperfReport struct {
	Start struct {
		Version   string `json:"version"`
		TestStart struct {
			Protocol   string `json:"protocol"`
			NumStreams int    `json:"num_streams"`
			Reverse    int    `json:"reverse"`
		} `json:"test_start"`
	} `json:"start"`
	// The client's own per-second figures (on its clock), kept in its output
	// when the test ends in an error.
	Intervals []struct {
		Sum iperfSum `json:"sum"`
	} `json:"intervals"`
	End struct {
		SumSent     iperfSum `json:"sum_sent"`
		SumReceived iperfSum `json:"sum_received"`
	} `json:"end"`
	Error string `json:"error"`
}

// iperfSum is one side's summary. Sender says whether the side running this
// iperf3 (the client) sent; the other side's figures come from the peer, on the
// peer's clock.
type iperfSum struct {
	Seconds       float64 `json:"seconds"`
	Bytes         int64   `json:"bytes"`
	BitsPerSecond float64 `json:"bits_per_second"`
	Retransmits   int     `json:"retransmits"`
	Sender        bool    `json:"sender"`
}

// iperfRatio is protected/unprotected, 0 when the unprotected run measured
// nothing. A run cut short counts with what it measured until then.
func iperfRatio(unprotected, protected IperfRun) float64 {
	if unprotected.MbitS <= 0 {
		return 0
	}
	return protected.MbitS / unprotected.MbitS
}

// errIperf is an error iperf3 reported itself (its "error" field).
var errIperf = errors.New("iperf3")

// ParseIperf3 reads the client's `iperf3 --json` output of a one-stream TCP run.
// A run the server cut short (iperf3's error, with per-second figures before it)
// gives the client's figures up to the cut and the error in Error; a run that
// measured nothing is an error.
func ParseIperf3(out []byte) (IperfRun, error) {
	var r iperfReport
	if err := json.Unmarshal(out, &r); err != nil {
		return IperfRun{}, fmt.Errorf("iperf3 --json output: %w", err)
	}
	ts := r.Start.TestStart
	if r.Error != "" {
		if ts.Protocol != "TCP" || ts.NumStreams != 1 || len(r.Intervals) == 0 {
			return IperfRun{}, fmt.Errorf("%w: %s", errIperf, r.Error)
		}
		return cutShort(r), nil
	}
	if ts.Protocol != "TCP" || ts.NumStreams != 1 {
		return IperfRun{}, fmt.Errorf("iperf3 ran %d %q streams, want one TCP stream", ts.NumStreams, ts.Protocol)
	}
	sent, recv := r.End.SumSent, r.End.SumReceived
	if sent.Sender != recv.Sender {
		return IperfRun{}, fmt.Errorf("iperf3 output: sum_sent and sum_received disagree on who sent (%v, %v)", sent.Sender, recv.Sender)
	}
	// With -R the client receives.
	if sent.Sender == (ts.Reverse != 0) {
		return IperfRun{}, fmt.Errorf("iperf3 output: reverse=%d but the client sent=%v", ts.Reverse, sent.Sender)
	}
	if recv.Bytes <= 0 || recv.Seconds <= 0 || sent.Seconds <= 0 {
		return IperfRun{}, fmt.Errorf("iperf3 output: no traffic (received %d bytes in %.3f s, sent for %.3f s)", recv.Bytes, recv.Seconds, sent.Seconds)
	}
	run := IperfRun{
		Direction:       IperfToGuest,
		ReceiverMbitS:   recv.BitsPerSecond / 1e6,
		SenderMbitS:     sent.BitsPerSecond / 1e6,
		ReceiverSeconds: recv.Seconds,
		SenderSeconds:   sent.Seconds,
		ReceivedBytes:   recv.Bytes,
		Retransmits:     sent.Retransmits,
		iperf3Version:   r.Start.Version,
	}
	clientSeconds := sent.Seconds
	if !sent.Sender {
		run.Direction = IperfToClient
		clientSeconds = recv.Seconds
	}
	run.MbitS = float64(recv.Bytes) * 8 / 1e6 / clientSeconds
	run.ClientSeconds = clientSeconds
	return run, nil
}

// cutShort is a run iperf3 ended in an error after some intervals: the client's
// bytes over its seconds up to then (sent, or with -R received).
func cutShort(r iperfReport) IperfRun {
	run := IperfRun{Direction: IperfToGuest, Error: "iperf3: " + r.Error, iperf3Version: r.Start.Version}
	if r.Start.TestStart.Reverse != 0 {
		run.Direction = IperfToClient
	}
	var bytes int64
	for _, iv := range r.Intervals {
		bytes += iv.Sum.Bytes
		run.ClientSeconds += iv.Sum.Seconds
	}
	if run.ClientSeconds > 0 {
		run.MbitS = float64(bytes) * 8 / 1e6 / run.ClientSeconds
	}
	return run
}

// runIperf3 runs `iperf3 -c` for secs seconds from the client host's namespace
// against the guest (reverse: the guest sends) and parses its report. A refused
// or reset control connection, or a busy server, is retried for a few seconds:
// the guest's init starts the server in the background, so it may not listen yet
// right after boot, and the one-test server may still be ending the previous test
// on the guest's clock, which a throttled guest runs slower than real time (in
// the lab the protected guest->client test failed this way twice in a row, each
// time right after the client->guest one).
func runIperf3(ctx context.Context, secs int, reverse bool) (IperfRun, error) {
	args := []string{"netns", "exec", lab.NSC, "iperf3", "-c", lab.GuestIP, "-p", strconv.Itoa(lab.IperfPort),
		"-t", strconv.Itoa(secs), "--json", "--connect-timeout", "10000"}
	if reverse {
		args = append(args, "-R")
	}
	const attempts = 5
	for i := 1; ; i++ {
		// The end exchange waits for the guest's results, which the output rule
		// holds while the backup is behind: allow minutes beyond the run itself.
		rctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+3*time.Minute)
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(rctx, "ip", args...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		t0 := time.Now()
		err := cmd.Run()
		took := time.Since(t0)
		cancel()
		if ctx.Err() != nil {
			return IperfRun{}, fmt.Errorf("iperf3: %w", context.Cause(ctx))
		}
		run, perr := ParseIperf3(stdout.Bytes())
		if perr == nil {
			return run, nil
		}
		// Only a test that never ran is tried again: one that failed part way is a
		// finding.
		if errors.Is(perr, errIperf) && retryableIperf(perr.Error()) && took < iperfStartWithin && i < attempts {
			time.Sleep(2 * time.Second)
			continue
		}
		return IperfRun{}, fmt.Errorf("ip %s: %w (exit: %v; stderr: %s)", strings.Join(args, " "), perr, err, strings.TrimSpace(stderr.String()))
	}
}

// iperfPhase runs iperf3 for secs seconds each way against vm, client to guest
// first, and records what the primary did meanwhile. Against an unprotected guest
// iperf3 must work (or the set-up is broken); against a protected one its failure
// is a finding, recorded in the run's Error.
func iperfPhase(ctx context.Context, s *Session, vm string, protected bool, secs int) (IperfSide, error) {
	var side IperfSide
	probe, err := newCPUProbe(ctx, s.Lab, vm, protected)
	if err != nil {
		return side, err
	}
	for _, reverse := range []bool{false, true} {
		st0, err := lab.Status(ctx, lab.HostA, vm)
		if err != nil {
			return side, err
		}
		c0, err := probe.snap()
		if err != nil {
			return side, err
		}
		run, err := runIperf3(ctx, secs, reverse)
		if err != nil {
			if !protected || ctx.Err() != nil {
				return side, err
			}
			run = IperfRun{Direction: IperfToGuest, Error: err.Error()}
			if reverse {
				run.Direction = IperfToClient
			}
			s.logf("iperf3 %s failed against the protected guest: %v", run.Direction, err)
		}
		c1, err := probe.snap()
		if err != nil {
			return side, err
		}
		st1, err := lab.Status(ctx, lab.HostA, vm)
		if err != nil {
			return side, err
		}
		run.CPU = use(c0, c1)
		run.LogMbitS = mbit(st1.LogWritten-st0.LogWritten, c1.at.Sub(c0.at))
		run.ThrottledS = st1.ThrottledSec - st0.ThrottledSec
		run.PacedS = st1.PacedSec - st0.PacedSec
		run.StateEnd = st1.State
		if protected {
			run.LagMSStart, run.LagMSEnd, run.LagBytesEnd = st0.LagMS, st1.LagMS, st1.LagBytes
		}
		s.logf("iperf3 %s %.1f Mbit/s (iperf3 receiver %.1f, sender %.1f), lag at end %.0f ms, state %s",
			run.Direction, run.MbitS, run.ReceiverMbitS, run.SenderMbitS, run.LagMSEnd, run.StateEnd)
		if reverse {
			side.ToClient = run
		} else {
			side.ToGuest = run
		}
	}
	return side, nil
}

// iperfStartWithin: an iperf3 client that failed sooner than this never ran its
// test (its connect timeout is 10 s).
const iperfStartWithin = 12 * time.Second

// retryableIperf: an iperf3 error that says the server was not ready for a new
// test (not yet listening, still ending the last one), not that the test failed.
func retryableIperf(msg string) bool {
	for _, m := range []string{"Connection refused", "Connection reset by peer", "the server is busy"} {
		if strings.Contains(msg, m) {
			return true
		}
	}
	return false
}
