package bench

import (
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/ftvmd/ftvmd/lab"
	"github.com/ftvmd/ftvmd/outputrule"
)

// NetSide is one mode's figures in `ftvmd bench net`.
type NetSide struct {
	RTTms          Dist    `json:"rtt_ms"`
	RRLogMbitS     float64 `json:"rr_log_mbit_s"`
	ToGuestMBs     float64 `json:"client_to_guest_MB_s"`
	ToGuestLogMbit float64 `json:"client_to_guest_log_mbit_s"`
	ToClientMBs    float64 `json:"guest_to_client_MB_s"`
	ToClientLog    float64 `json:"guest_to_client_log_mbit_s"`
	AddedDelayMS   float64 `json:"output_rule_added_delay_avg_ms"`
	Backpressure   uint64  `json:"backpressure_events"`
	// Where the cores went during each bulk transfer.
	ToClientCPU CPUUse `json:"guest_to_client_cpu"`
	ToGuestCPU  CPUUse `json:"client_to_guest_cpu"`
	// The primary's agent's cores per Gbit/s of guest traffic in each bulk
	// transfer: the cost of the data path (issue 13's figure).
	ToClientAgentACoresPerGbit float64 `json:"guest_to_client_agent_a_cores_per_gbit"`
	ToGuestAgentACoresPerGbit  float64 `json:"client_to_guest_agent_a_cores_per_gbit"`
	// Quantiles of the delay the output rule added to the guest's frames
	// during the request/response phase only (the warm-up and bulk phases
	// would swamp them): bucket upper bounds from outputrule.DelayHist.
	AddedDelayP50ms float64 `json:"output_rule_added_delay_p50_ms"`
	AddedDelayP99ms float64 `json:"output_rule_added_delay_p99_ms"`
	// RTTThrottledS is how long the throttle held the primary back during the
	// request/response phase (0 unprotected): the round trips' tail follows it.
	RTTThrottledS float64 `json:"rtt_throttled_s"`
	// How long the CPU quota throttled the primary and the input pacer paced the
	// network's frames to it during each bulk transfer, and the backup's lag at
	// its end (all 0 unprotected): whether the lag bound, not the cores, set the
	// protected rate.
	ToClientThrottledS float64 `json:"guest_to_client_throttled_s"`
	ToClientPacedS     float64 `json:"guest_to_client_paced_s"`
	ToClientLagMSEnd   float64 `json:"guest_to_client_lag_ms_end"`
	ToGuestThrottledS  float64 `json:"client_to_guest_throttled_s"`
	ToGuestPacedS      float64 `json:"client_to_guest_paced_s"`
	ToGuestLagMSEnd    float64 `json:"client_to_guest_lag_ms_end"`
	// The guest instructions the primary logged per MiB of each bulk transfer
	// (millions; the log's instruction count, so the same in both modes for the
	// same guest work). With the primary QEMU's CPU per MiB it splits a
	// difference between the modes into guest work and the host's cost of it.
	ToClientMInsnPerMB float64 `json:"guest_to_client_minsn_per_mb"`
	ToGuestMInsnPerMB  float64 `json:"client_to_guest_minsn_per_mb"`
}

// NetResult is `ftvmd bench net`'s summary: request/response latency and bulk TCP
// throughput both ways, unprotected and protected on the same engine, in one run.
type NetResult struct {
	Env               Env     `json:"env"`
	Requests          int     `json:"requests"`
	BulkMB            int     `json:"bulk_mb"`
	LagBoundMS        int     `json:"lag_bound_ms"`
	Unprotected       NetSide `json:"unprotected"`
	Protected         NetSide `json:"protected"`
	AddedP50ms        float64 `json:"added_latency_p50_ms"`
	AddedP99ms        float64 `json:"added_latency_p99_ms"`
	ToGuestRatio      float64 `json:"client_to_guest_ratio"`
	ToClientRatio     float64 `json:"guest_to_client_ratio"`
	InvariantFailures uint64  `json:"invariant_failures"`
	// Iperf3: Debian's iperf3 both ways on the same guests after bench net's own
	// phases (`--iperf-seconds`; absent when 0).
	Iperf3 *IperfResult `json:"iperf3,omitempty"`
	// UnprotectedNeighbour: the duty of the neighbour load on the backup's CPU
	// during the unprotected mode (startNeighbour; 0: none).
	UnprotectedNeighbour float64 `json:"unprotected_neighbour,omitempty"`
}

// NetOpts are bench net's settings.
type NetOpts struct {
	Requests, MB, LagBoundMS, IperfSeconds int
	// UnprotectedNeighbour (0-1): load the backup host's CPU this much during
	// the unprotected mode, standing in for protection's share of the lab's two
	// cores (0: off).
	UnprotectedNeighbour float64
}

// Net runs the network benchmark with the guest's lag bound at lagBoundMS (the
// throttle's set point follows it, so it decides how often round trips meet a
// throttled primary). With iperfSeconds > 0, each mode ends with iperf3 for that
// many seconds each way (a protected guest's backup first catching up).
func Net(ctx context.Context, s *Session, env Env, o NetOpts) (NetResult, error) {
	requests, mb, lagBoundMS, iperfSeconds := o.Requests, o.MB, o.LagBoundMS, o.IperfSeconds
	res := NetResult{Env: env, Requests: requests, BulkMB: mb, LagBoundMS: lagBoundMS, UnprotectedNeighbour: o.UnprotectedNeighbour}
	if o.UnprotectedNeighbour < 0 || o.UnprotectedNeighbour > 1 {
		return res, fmt.Errorf("bench net: neighbour load %.2f: must be 0 (off) to 1", o.UnprotectedNeighbour)
	}
	if iperfSeconds < 0 {
		return res, fmt.Errorf("bench net: iperf seconds %d: must be 0 (off) or more", iperfSeconds)
	}
	if iperfSeconds > 0 {
		if err := CheckIperfHost(); err != nil {
			return res, err
		}
		res.Iperf3 = &IperfResult{Seconds: iperfSeconds}
	}
	// The neighbour load of the unprotected mode; stopping it twice is harmless,
	// and the deferred call covers every way out of that mode.
	stopNeighbour := func() {}
	defer func() { stopNeighbour() }()
	for _, protected := range []bool{false, true} {
		vm := "benchnet"
		if _, err := s.StartGuest(ctx, vm, "", protected, "--lag-bound-ms", fmt.Sprint(lagBoundMS)); err != nil {
			return res, err
		}
		if iperfSeconds > 0 {
			// Before the long phases, not after them: an old guest image fails now.
			if err := checkIperfGuest(lab.Console(lab.HostA, vm, "primary")); err != nil {
				return res, err
			}
		}
		if protected {
			if err := s.WaitSettled(ctx, vm, 3*time.Minute); err != nil {
				return res, err
			}
		}
		if !protected && o.UnprotectedNeighbour > 0 {
			cpu, err := strconv.Atoi(lab.HostB.CPUs)
			if err != nil {
				return res, fmt.Errorf("bench net: neighbour load: host b's CPUs %q: %w", lab.HostB.CPUs, err)
			}
			n, err := newNeighbour(cpu, o.UnprotectedNeighbour)
			if err != nil {
				return res, err
			}
			stopNeighbour = n.stop
			s.logf("neighbour load %.2f of CPU %d during the unprotected mode", o.UnprotectedNeighbour, cpu)
		}
		side, err := netSide(ctx, s, vm, protected, requests, mb)
		if err != nil {
			if ctx.Err() != nil {
				// The connection was closed under the phase: say why, not how.
				return res, fmt.Errorf("bench net: %w", context.Cause(ctx))
			}
			return res, err
		}
		// The invariant and the added delay are bench net's own phases' (read
		// before iperf3 adds its traffic to the counters).
		st, err := lab.Status(ctx, lab.HostA, vm)
		if err != nil {
			return res, err
		}
		side.AddedDelayMS, side.Backpressure = st.AddedDelayMS, st.Backpressure
		if protected {
			res.Protected = side
			res.InvariantFailures = st.InvariantFails
		} else {
			res.Unprotected = side
		}
		if iperfSeconds > 0 {
			if err := iperfMode(ctx, s, vm, protected, res.Iperf3); err != nil {
				return res, err
			}
		}
		stopNeighbour()
		if err := s.StopGuest(ctx, vm); err != nil {
			return res, err
		}
	}
	res.AddedP50ms = res.Protected.RTTms.P50 - res.Unprotected.RTTms.P50
	res.AddedP99ms = res.Protected.RTTms.P99 - res.Unprotected.RTTms.P99
	res.ToGuestRatio = res.Protected.ToGuestMBs / res.Unprotected.ToGuestMBs
	res.ToClientRatio = res.Protected.ToClientMBs / res.Unprotected.ToClientMBs
	if r := res.Iperf3; r != nil {
		r.ToGuestRatio = iperfRatio(r.Unprotected.ToGuest, r.Protected.ToGuest)
		r.ToClientRatio = iperfRatio(r.Unprotected.ToClient, r.Protected.ToClient)
	}
	return res, nil
}

// iperfMode runs the iperf3 phase on vm and files it in r. A protected guest's
// backup gets up to a few minutes to catch up after bench net's bulk phases
// first; one that does not is measured all the same, its lag at the start
// recorded beside the figures.
func iperfMode(ctx context.Context, s *Session, vm string, protected bool, r *IperfResult) error {
	if protected {
		if err := s.WaitCaughtUp(ctx, vm, 3*time.Minute); err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("bench net: %w", context.Cause(ctx))
			}
			s.logf("iperf3 phase starts with the backup behind: %v", err)
		}
	}
	side, err := iperfPhase(ctx, s, vm, protected, r.Seconds)
	if err != nil {
		return fmt.Errorf("bench net, iperf3 phase (protected: %v): %w", protected, err)
	}
	r.Version = side.ToGuest.iperf3Version
	if protected {
		r.Protected = side
	} else {
		r.Unprotected = side
	}
	return nil
}

// bulkSnap is what one status call on the primary gives for a bulk phase: the log
// bytes written and the seconds throttled and paced so far, and the lag now (zero
// if the status cannot be read).
type bulkSnap struct {
	logWritten       int64
	icount           uint64  // the primary's logged instructions
	throttled, paced float64 // seconds
	lagMS            float64
}

func bulkSnapshot(ctx context.Context, vm string) bulkSnap {
	st, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		return bulkSnap{}
	}
	return bulkSnap{logWritten: st.LogWritten, icount: st.Icount, throttled: st.ThrottledSec, paced: st.PacedSec, lagMS: st.LagMS}
}

// mInsnPerMB is the millions of guest instructions logged between two snapshots
// per MiB moved (0 when either status read failed).
func mInsnPerMB(a, b bulkSnap, mb int) float64 {
	if a.icount == 0 || b.icount < a.icount || mb <= 0 {
		return 0
	}
	return float64(b.icount-a.icount) / 1e6 / float64(mb)
}

// rrSnap is what one status call on the primary gives for subtracting two of them:
// the log bytes written, the output rule's added-delay histogram and the time the
// throttle has held the primary back.
type rrSnap struct {
	logWritten int64
	hist       outputrule.DelayHist
	throttled  float64 // seconds
}

func rrSnapshot(ctx context.Context, vm string) (rrSnap, error) {
	st, err := lab.Status(ctx, lab.HostA, vm)
	if err != nil {
		return rrSnap{}, err
	}
	h, err := outputrule.DelayHistFromCounts(st.AddedDelayHist)
	return rrSnap{logWritten: st.LogWritten, hist: h, throttled: st.ThrottledSec}, err
}

// perGbit is cores per Gbit/s at a rate of mibPerS MiB/s.
func perGbit(cores, mibPerS float64) float64 {
	gbit := mibPerS * (1 << 20) * 8 / 1e9
	if gbit <= 0 {
		return 0
	}
	return cores / gbit
}

func mbit(bytes int64, d time.Duration) float64 { return float64(bytes) * 8 / 1e6 / d.Seconds() }

func netSide(ctx context.Context, s *Session, vm string, protected bool, requests, mb int) (NetSide, error) {
	var side NetSide
	probe, err := newCPUProbe(ctx, s.Lab, vm, protected)
	if err != nil {
		return side, err
	}
	c, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		return side, err
	}
	defer c.Close()
	// The bulk phases block in reads and writes with minutes-long deadlines: when the
	// run is cancelled (Ctrl-C, SIGTERM) close the connection so that they return at
	// once and the lab is torn down now, not when a deadline passes.
	defer context.AfterFunc(ctx, func() { c.Close() })()
	// Warm up, then request/response latency.
	for i := 0; i < 20; i++ {
		if _, err := c.Do("ping", 30*time.Second); err != nil {
			return side, err
		}
	}
	var rtts []float64
	// One status read before and one after the loop give both the log written and
	// the output rule's delay histogram for the interval.
	r0, err := rrSnapshot(ctx, vm)
	if err != nil {
		return side, err
	}
	t0 := time.Now()
	for i := 1; i <= requests; i++ {
		start := time.Now()
		resp, err := c.Do(fmt.Sprintf("seq %d bench", i), 30*time.Second)
		if err != nil || !strings.HasPrefix(resp, fmt.Sprintf("ok %d ", i)) {
			return side, fmt.Errorf("request %d: %q %v", i, resp, err)
		}
		rtts = append(rtts, ms(time.Since(start)))
	}
	elapsed := time.Since(t0)
	side.RTTms = NewDist(rtts)
	// Each response was released before the client read it, so every frame of the
	// loop is already counted in the histogram.
	r1, err := rrSnapshot(ctx, vm)
	if err != nil {
		return side, err
	}
	side.RRLogMbitS = mbit(r1.logWritten-r0.logWritten, elapsed)
	h := r1.hist.Sub(r0.hist)
	side.AddedDelayP50ms, side.AddedDelayP99ms = ms(h.Quantile(0.5)), ms(h.Quantile(0.99))
	side.RTTThrottledS = r1.throttled - r0.throttled
	s.logf("rtt p50 %.2f ms p99 %.2f ms, throttled %.1f s", side.RTTms.P50, side.RTTms.P99, side.RTTThrottledS)

	n := int64(mb) << 20
	// Guest -> client: `get n` answers a header line then n bytes.
	c0, err := probe.snap()
	if err != nil {
		return side, err
	}
	b0, t0 := bulkSnapshot(ctx, vm), time.Now()
	_ = c.Conn.SetDeadline(time.Now().Add(10 * time.Minute))
	if _, err := fmt.Fprintf(c.Conn, "get %d\n", n); err != nil {
		return side, err
	}
	hdr, err := c.ReadLine()
	if err != nil || hdr != fmt.Sprintf("data %d", n) {
		return side, fmt.Errorf("get: header %q %v", hdr, err)
	}
	if _, err := io.CopyN(io.Discard, c.Reader(), n); err != nil {
		return side, fmt.Errorf("get: %w", err)
	}
	d := time.Since(t0)
	side.ToClientMBs = float64(n) / (1 << 20) / d.Seconds()
	b1 := bulkSnapshot(ctx, vm)
	side.ToClientLog = mbit(b1.logWritten-b0.logWritten, d)
	side.ToClientThrottledS, side.ToClientPacedS, side.ToClientLagMSEnd = b1.throttled-b0.throttled, b1.paced-b0.paced, b1.lagMS
	side.ToClientMInsnPerMB = mInsnPerMB(b0, b1, mb)
	c1, err := probe.snap()
	if err != nil {
		return side, err
	}
	side.ToClientCPU = use(c0, c1)
	side.ToClientAgentACoresPerGbit = perGbit(side.ToClientCPU.AgentA, side.ToClientMBs)
	s.logf("guest->client %.1f MB/s, throttled %.1f s, paced %.1f s, cpu %+v", side.ToClientMBs,
		side.ToClientThrottledS, side.ToClientPacedS, side.ToClientCPU)

	// Client -> guest: `put n`, n bytes, then `got n crc`.
	b0, t0 = b1, time.Now()
	if _, err := fmt.Fprintf(c.Conn, "put %d\n", n); err != nil {
		return side, err
	}
	buf := make([]byte, 64<<10)
	for i := range buf {
		buf[i] = byte(i)
	}
	for left := n; left > 0; {
		k := int64(len(buf))
		if left < k {
			k = left
		}
		if _, err := c.Conn.Write(buf[:k]); err != nil {
			return side, fmt.Errorf("put: %w", err)
		}
		left -= k
	}
	got, err := c.ReadLine()
	if err != nil || !strings.HasPrefix(got, fmt.Sprintf("got %d ", n)) {
		return side, fmt.Errorf("put: %q %v", got, err)
	}
	d = time.Since(t0)
	side.ToGuestMBs = float64(n) / (1 << 20) / d.Seconds()
	b2 := bulkSnapshot(ctx, vm)
	side.ToGuestLogMbit = mbit(b2.logWritten-b0.logWritten, d)
	side.ToGuestThrottledS, side.ToGuestPacedS, side.ToGuestLagMSEnd = b2.throttled-b0.throttled, b2.paced-b0.paced, b2.lagMS
	side.ToGuestMInsnPerMB = mInsnPerMB(b0, b2, mb)
	c2, err := probe.snap()
	if err != nil {
		return side, err
	}
	side.ToGuestCPU = use(c1, c2)
	side.ToGuestAgentACoresPerGbit = perGbit(side.ToGuestCPU.AgentA, side.ToGuestMBs)
	s.logf("client->guest %.1f MB/s, throttled %.1f s, paced %.1f s, cpu %+v", side.ToGuestMBs,
		side.ToGuestThrottledS, side.ToGuestPacedS, side.ToGuestCPU)
	return side, nil
}
