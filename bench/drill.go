package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand"
	"net"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ftvmd/ftvmd/lab"
)

// Drill kinds.
const (
	KillPrimary = "kill-primary" // SIGKILL every process of host A (agent and QEMU): a power loss
	KillBackup  = "kill-backup"  // the same on host B
	Partition   = "partition"    // cut the A-B link; both still reach storage and clients
	Planned     = "planned"      // `ftvmd failover`: a planned switch to the backup
	// RestartPrimaryAgent: SIGTERM of host A's agent, then start it again
	// (systemctl restart): the agent hands the VM over to the backup first.
	RestartPrimaryAgent = "restart-primary-agent"
)

// DrillReport is what `ftvmd drill` prints.
//
// OutageMS is the failover's outage as the client saw it: the longest gap between
// answered requests that overlaps the failover (it ends after the fault and starts
// before the survivor was seen running alone). MaxGapMS is the longest gap from 2 s
// before the fault to the end of the load, which also counts stalls of the
// protected pair before the fault (a request the primary dropped, a throttled
// primary) and of the survivor after it.
type DrillReport struct {
	Env             Env     `json:"env"`
	Kind            string  `json:"kind"`
	FaultAfterS     float64 `json:"fault_after_s"`
	DetectionMS     float64 `json:"detection_ms"` // fault -> the survivor starts claiming
	ClaimMS         float64 `json:"claim_ms"`     // claiming -> decision
	GoLiveMS        float64 `json:"go_live_ms"`   // decision -> running (unprotected/live)
	OutageMS        float64 `json:"client_outage_ms"`
	MaxGapMS        float64 `json:"max_gap_ms"`
	Requests        int     `json:"requests_answered"` // on the long-lived connection
	RequestsLost    int     `json:"requests_lost"`     // sent, never answered (must be 0)
	Inconsistent    int     `json:"requests_inconsistent"`
	NewConns        int     `json:"new_connections_ok"`
	NewConnsFailed  int     `json:"new_connections_failed"`
	HeldAtFault     int     `json:"frames_held_at_fault"`
	ReleasedAfter   uint64  `json:"frames_released_by_survivor"`
	Owner           string  `json:"owner"` // host running the VM now
	RecordsAcked    int     `json:"records_acked,omitempty"`
	RecordsMissing  int     `json:"records_missing_after,omitempty"` // acked records not read back (must be 0)
	OwnerState      string  `json:"owner_state"`
	LoserState      string  `json:"loser_state"`
	ConnSurvived    bool    `json:"tcp_connection_survived"`
	GuestRebooted   bool    `json:"guest_rebooted"`
	CounterBefore   int     `json:"guest_counter_before"`
	CounterAfter    int     `json:"guest_counter_after"`
	LoserReleasedAf uint64  `json:"frames_released_by_loser_after_claim"`
	// A bulk transfer under way through the fault (DrillOpts.Bulk): what it moved,
	// every byte checked end to end on one TCP connection that must survive.
	Bulk          string `json:"bulk,omitempty"`
	BulkBytes     int64  `json:"bulk_bytes,omitempty"`
	BulkBytesPost int64  `json:"bulk_bytes_after_fault,omitempty"`
	BulkError     string `json:"bulk_error,omitempty"`
	// ProtectPauseMS is the guest's pause when DrillOpts.ProtectRunning protected it
	// from its running state before the fault.
	ProtectPauseMS float64 `json:"protect_pause_ms,omitempty"`
}

// Bulk transfers a drill can run through the fault.
const (
	BulkGet = "get" // guest->client (`get`, bytes checked against the guest's pattern)
	BulkPut = "put" // client->guest (`put`, the guest's CRC of what it received checked)
)

// bulkAfterFault is how long a drill's bulk transfer goes on after the fault: long
// enough to cross detection, claim and go-live and then move data on the survivor.
const bulkAfterFault = 12 * time.Second

// RunDrill protects a guest and injects the fault at a random moment under client
// load: requests with sequence numbers on one TCP connection, plus new connections.
func RunDrill(ctx context.Context, s *Session, env Env, vm, kind string, rng *rand.Rand) (DrillReport, error) {
	return RunDrillOpts(ctx, s, env, DrillOpts{VM: vm, Kind: kind}, rng)
}

// DrillOpts selects a drill. With Disk, the guest gets that qcow2 image and the
// client writes durable records instead of plain requests; afterwards every record
// the client got an acknowledgement for must read back from the new primary.
type DrillOpts struct {
	VM, Kind string
	Disk     string
	// Bulk runs a bulk transfer (BulkGet or BulkPut) on its own connection from
	// before the fault until bulkAfterFault after it.
	Bulk string
	// Defined: the VM is already defined on host A (imported from libvirt, say) as
	// the lab guest, so the drill does not define it. Disk then only says the spec
	// has that disk (the client writes records to it).
	Defined bool
	// ProtectRunning starts the VM unprotected (ftvmd run) and protects it from its
	// running state (ftvmd protect of the running VM) before the load and the fault,
	// so the drill hands over or fails over a VM whose backup started from a snapshot.
	ProtectRunning bool
}

// RunDrillOpts is RunDrill with options.
func RunDrillOpts(ctx context.Context, s *Session, env Env, o DrillOpts, rng *rand.Rand) (DrillReport, error) {
	vm, kind := o.VM, o.Kind
	rep := DrillReport{Env: env, Kind: kind, Bulk: o.Bulk}
	switch kind {
	case KillPrimary, KillBackup, Partition, Planned, RestartPrimaryAgent:
	default:
		return rep, fmt.Errorf("unknown drill kind %q (kill-primary, kill-backup, partition, planned, restart-primary-agent)", kind)
	}
	var bulkDrive func(context.Context, LoadTarget, time.Duration) (Traffic, error)
	switch o.Bulk {
	case "":
	case BulkGet:
		bulkDrive = DriveGet
	case BulkPut:
		bulkDrive = DrivePut
	default:
		return rep, fmt.Errorf("unknown bulk transfer %q (get, put)", o.Bulk)
	}
	var extra []string
	if o.Disk != "" {
		extra = []string{"--disk", o.Disk}
	}
	protectAtBoot := !o.ProtectRunning
	start := func() (time.Duration, error) { return s.StartGuest(ctx, vm, "", protectAtBoot, extra...) }
	if o.Defined {
		start = func() (time.Duration, error) { return s.StartDefined(ctx, vm, protectAtBoot) }
	}
	if _, err := start(); err != nil {
		return rep, err
	}
	if o.ProtectRunning {
		var pr ProtectReport
		if _, err := ProtectRunningVM(ctx, s, lab.HostA, lab.HostB, vm, &pr); err != nil {
			return rep, err
		}
		rep.ProtectPauseMS = pr.PauseMS
		if err := s.WaitCaughtUp(ctx, vm, 3*time.Minute); err != nil {
			return rep, err
		}
	}
	c, err := clientWithCounter(ctx, &rep.CounterBefore)
	if err != nil {
		return rep, err
	}
	defer c.Close()

	load := startLoadMode(ctx, c, o.Disk != "")
	conns := startNewConns(ctx)
	wait := 2*time.Second + time.Duration(rng.Int63n(int64(4*time.Second)))
	var bulk *bulkRun
	if bulkDrive != nil {
		bulk = startBulk(ctx, bulkDrive, wait+bulkAfterFault)
	}
	time.Sleep(wait)
	rep.FaultAfterS = wait.Seconds()
	var bulkAtFault int64
	if bulk != nil {
		bulkAtFault = bulk.moved()
	}

	pre, _ := lab.Status(ctx, lab.HostA, vm)
	rep.HeldAtFault = pre.HeldFrames
	survivor, loser := lab.HostB, lab.HostA
	var restarted chan error // RestartPrimaryAgent: the restart's outcome
	if kind == KillBackup {
		survivor, loser = lab.HostA, lab.HostB
	}
	tFault := time.Now()
	switch kind {
	case KillPrimary:
		err = killHost(lab.NSA)
	case KillBackup:
		err = killHost(lab.NSB)
	case Partition:
		err = partition(true)
		defer func() { _ = partition(false) }()
	case Planned:
		go func() {
			if out, err := s.Lab.Run(ctx, "a", "failover", vm); err != nil {
				s.logf("planned failover: %v", err)
			} else {
				s.logf("%s", strings.TrimSpace(out))
			}
		}()
	case RestartPrimaryAgent:
		restarted = make(chan error, 1)
		go func() { restarted <- s.restartAgent(ctx, lab.HostA) }()
	}
	if err != nil {
		return rep, err
	}
	s.logf("drill %s: fault injected after %.1f s of load", kind, wait.Seconds())

	// Watch the copies until one runs alone.
	var tClaim, tLive time.Time
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		hosts := []lab.Host{survivor}
		if kind == Partition {
			hosts = []lab.Host{lab.HostA, lab.HostB}
		}
		done := false
		for _, h := range hosts {
			st, err := lab.Status(ctx, h, vm)
			if err != nil {
				continue
			}
			if st.State == "claiming" && tClaim.IsZero() {
				tClaim = time.Now()
			}
			if st.State == "unprotected" {
				tLive = time.Now()
				survivor = h
				done = true
			}
		}
		if done {
			break
		}
	}
	if tLive.IsZero() {
		return rep, fmt.Errorf("drill %s: no copy runs the VM 2 minutes after the fault", kind)
	}
	if kind == Partition {
		loser = lab.HostA
		if survivor == lab.HostA {
			loser = lab.HostB
		}
	}
	if st, err := lab.Status(ctx, survivor, vm); err == nil {
		// The survivor measured its own claim and go-live.
		rep.ClaimMS, rep.GoLiveMS = st.FailoverClaimMS, st.FailoverGoLiveMS
	}
	// Detection: from the fault to the start of the claim. The claiming state is
	// short and a backup is briefly unregistered while it goes live, so when the poll
	// did not see it, derive it from when the VM ran again less what the survivor
	// measured (the poll's 20 ms granularity remains).
	if !tClaim.IsZero() {
		rep.DetectionMS = ms(tClaim.Sub(tFault))
	} else {
		rep.DetectionMS = max(0, ms(tLive.Sub(tFault))-rep.ClaimMS-rep.GoLiveMS)
	}
	rep.Owner = survivor.Name

	// Keep the load going a little, then stop and judge.
	time.Sleep(3 * time.Second)
	if kind == Partition {
		if st, err := lab.Status(ctx, loser, vm); err == nil {
			rep.LoserState = st.State
			time.Sleep(time.Second)
			if st2, err := lab.Status(ctx, loser, vm); err == nil {
				rep.LoserReleasedAf = st2.Released - st.Released
			}
		} else {
			rep.LoserState = "gone"
		}
	} else if kind == Planned {
		if st, err := lab.Status(ctx, loser, vm); err == nil {
			rep.LoserState = st.State
		}
	} else if kind == RestartPrimaryAgent {
		// The old primary ended with its agent; the new agent runs nothing.
		if err := <-restarted; err != nil {
			return rep, fmt.Errorf("drill %s: %w", kind, err)
		}
		rep.LoserState = "gone"
		if st, err := lab.Status(ctx, loser, vm); err == nil {
			rep.LoserState = st.State
		}
	} else {
		rep.LoserState = "killed"
	}
	lr := load.stop()
	rep.Requests, rep.RequestsLost, rep.Inconsistent = lr.answered, lr.lost, lr.inconsistent
	rep.OutageMS = ms(lr.longestGapOver(tFault, tLive))
	rep.MaxGapMS = ms(lr.maxGapAround(tFault))
	rep.ConnSurvived = lr.err == nil
	rep.NewConns, rep.NewConnsFailed = conns.stop()
	if st, err := lab.Status(ctx, survivor, vm); err == nil {
		rep.OwnerState = st.State
		rep.ReleasedAfter = st.Released
	}
	after, err := c.Do("counter", 10*time.Second)
	if err == nil {
		fmt.Sscanf(after, "counter %d", &rep.CounterAfter)
	}
	rep.GuestRebooted = rep.CounterAfter < rep.CounterBefore
	if bulk != nil {
		tr, err := bulk.wait()
		rep.BulkBytes = tr.ToClientBytes + tr.ToGuestBytes
		rep.BulkBytesPost = rep.BulkBytes - bulkAtFault
		if err != nil {
			rep.BulkError = err.Error()
		} else if rep.BulkBytesPost <= 0 {
			rep.BulkError = "the bulk transfer moved nothing after the fault"
		}
	}
	rep.RecordsAcked = len(lr.acked)
	for _, n := range lr.acked {
		resp, err := c.Do(fmt.Sprintf("recget %d", n), 30*time.Second)
		if err != nil || resp != fmt.Sprintf("rec %d x%d", n, n) {
			rep.RecordsMissing++
			s.logf("acknowledged record %d reads back as %q (%v)", n, resp, err)
		}
	}
	return rep, nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// agentStopTimeout is how long a restart waits for an agent to exit after SIGTERM:
// systemd's TimeoutStopSec in packaging/ftvmd-agent.service (the agent's own
// shutdown takes at most 70 s: a handover, then a stop).
const agentStopTimeout = 90 * time.Second

// restartAgent restarts host h's agent as `systemctl restart` does: SIGTERM, wait
// for it to exit, start it again with the session's flags.
func (s *Session) restartAgent(ctx context.Context, h lab.Host) error {
	t0 := time.Now()
	if err := s.Lab.SignalAgent(h, syscall.SIGTERM, agentStopTimeout); err != nil {
		return err
	}
	s.logf("agent %s exited %s after SIGTERM", h.Name, time.Since(t0).Round(time.Millisecond))
	return s.Lab.StartAgent(ctx, h, s.agentArgs...)
}

// KillHost SIGKILLs every process in a lab host's namespace (lab.NSA, lab.NSB), as
// a power loss would.
func KillHost(ns string) error { return killHost(ns) }

// killHost SIGKILLs every process in a lab host's namespace, as a power loss would.
func killHost(ns string) error {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return fmt.Errorf("list pids of %s: %w", ns, err)
	}
	pids := strings.Fields(string(out))
	if len(pids) == 0 {
		return fmt.Errorf("no processes in %s", ns)
	}
	if out, err := exec.Command("kill", append([]string{"-9"}, pids...)...).CombinedOutput(); err != nil {
		return fmt.Errorf("kill %v: %v: %s", pids, err, out)
	}
	return nil
}

// partition isolates the A and B ports of the lab's bridge from each other; both keep
// reaching the client port.
func partition(on bool) error {
	v := "off"
	if on {
		v = "on"
	}
	for _, port := range []string{"port-a", "port-b"} {
		if out, err := exec.Command("ip", "netns", "exec", "ftlab-net", "bridge", "link", "set", "dev", port, "isolated", v).CombinedOutput(); err != nil {
			return fmt.Errorf("partition %s %s: %v: %s", port, v, err, out)
		}
	}
	return nil
}

type loadResult struct {
	answered, lost, inconsistent int
	acked                        []int // records mode: record numbers acknowledged
	times                        []time.Time
	err                          error
	lastSent                     int // the last request number sent
}

// longestGapOver is the longest gap between answered requests that overlaps
// from..to: it ends after from and starts before to. An answer released by the
// old primary just after the fault ends a short gap; the client's wait for the
// survivor is the one after it.
func (r loadResult) longestGapOver(from, to time.Time) time.Duration {
	var max time.Duration
	for i := 1; i < len(r.times); i++ {
		if !r.times[i].After(from) || !r.times[i-1].Before(to) {
			continue
		}
		if d := r.times[i].Sub(r.times[i-1]); d > max {
			max = d
		}
	}
	return max
}

// maxGapAround is the longest gap between answered requests from 2 s before t on.
func (r loadResult) maxGapAround(t time.Time) time.Duration {
	var max time.Duration
	for i := 1; i < len(r.times); i++ {
		if r.times[i].Before(t.Add(-2 * time.Second)) {
			continue
		}
		if d := r.times[i].Sub(r.times[i-1]); d > max {
			max = d
		}
	}
	return max
}

type loader struct {
	stopc chan struct{}
	done  chan loadResult
	// lastAnswer is when the latest answer came (UnixNano; 0: none yet), for
	// watchers while the load runs.
	lastAnswer atomic.Int64
	// answeredN counts the answers so far, for watchers while the load runs.
	answeredN atomic.Int64
}

// startLoadMode sends `seq n` requests back to back on c; each answer must carry its
// own sequence number and payload and a guest request count that only grows. With
// records it sends `rec n payload` instead: each answer means record n is durable on
// the guest's disk; answered record numbers are kept.
func startLoadMode(ctx context.Context, c *lab.Client, records bool) *loader {
	return startLoadFrom(ctx, c, records, 1)
}

// startLoadFrom is startLoadMode numbering requests from first (records that must
// not reuse the slots of an earlier load).
func startLoadFrom(ctx context.Context, c *lab.Client, records bool, first int) *loader {
	l := &loader{stopc: make(chan struct{}), done: make(chan loadResult, 1)}
	go func() {
		var r loadResult
		last := 0
		for n := first; ; n++ {
			select {
			case <-l.stopc:
				l.done <- r
				return
			case <-ctx.Done():
				l.done <- r
				return
			default:
			}
			payload := fmt.Sprintf("x%d", n)
			req := fmt.Sprintf("seq %d %s", n, payload)
			if records {
				req = fmt.Sprintf("rec %d %s", n, payload)
			}
			r.lastSent = n
			resp, err := c.Do(req, 60*time.Second)
			if err != nil {
				r.lost++
				r.err = err
				l.done <- r
				return
			}
			if records {
				if resp != fmt.Sprintf("rec ok %d", n) {
					r.inconsistent++
				} else {
					r.acked = append(r.acked, n)
				}
			} else {
				var seq, count int
				var p string
				if _, err := fmt.Sscanf(resp, "ok %d %d %s", &seq, &count, &p); err != nil || seq != n || p != payload || count <= last {
					r.inconsistent++
				}
				last = count
			}
			r.answered++
			now := time.Now()
			r.times = append(r.times, now)
			l.lastAnswer.Store(now.UnixNano())
			l.answeredN.Add(1)
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return l
}

func (l *loader) stop() loadResult {
	close(l.stopc)
	return <-l.done
}

type connLoad struct {
	mu         sync.Mutex
	ok, failed int
	lastOK     time.Time // when the latest new connection was answered
	okTimes    []time.Time
	stopc      chan struct{}
	done       chan struct{}
}

// startNewConns opens a new connection to the guest every 500 ms and pings it.
func startNewConns(ctx context.Context) *connLoad {
	cl := &connLoad{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(cl.done)
		for {
			select {
			case <-cl.stopc:
				return
			case <-time.After(500 * time.Millisecond):
			}
			c, err := lab.NewClient(ctx, 20*time.Second)
			good := err == nil
			if good {
				resp, err := c.Do("ping", 20*time.Second)
				good = err == nil && resp == "pong"
				c.Close()
			}
			cl.mu.Lock()
			if good {
				cl.ok++
				cl.lastOK = time.Now()
				cl.okTimes = append(cl.okTimes, cl.lastOK)
			} else {
				cl.failed++
			}
			cl.mu.Unlock()
		}
	}()
	return cl
}

func (cl *connLoad) stop() (int, int) {
	close(cl.stopc)
	<-cl.done
	cl.mu.Lock()
	defer cl.mu.Unlock()
	return cl.ok, cl.failed
}

// FailoverResult is `ftvmd bench failover`'s summary over many kill-primary drills.
type FailoverResult struct {
	Env          Env  `json:"env"`
	Runs         int  `json:"runs"`
	OutageMS     Dist `json:"client_outage_ms"` // DrillReport.OutageMS: the gap over the failover
	MaxGapMS     Dist `json:"max_gap_ms"`       // DrillReport.MaxGapMS: the longest gap from 2 s before the fault on
	DetectionMS  Dist `json:"detection_ms"`
	ClaimMS      Dist `json:"claim_ms"`
	GoLiveMS     Dist `json:"go_live_ms"`
	RequestsLost int  `json:"requests_lost"`
	Failed       int  `json:"failed_runs"`
	// Bulk is the transfer under way through each fault ("" for none), BulkBytes
	// what the runs moved in all (every byte checked), BulkFailed the runs whose
	// transfer broke or moved nothing after the fault.
	Bulk       string        `json:"bulk,omitempty"`
	BulkBytes  int64         `json:"bulk_bytes,omitempty"`
	BulkFailed int           `json:"bulk_failed_runs,omitempty"`
	Reports    []DrillReport `json:"-"`
}

// Failover runs kill-primary drills, each on a fresh lab, and summarises them. With
// bulk (BulkGet or BulkPut) a bulk transfer runs through every fault.
func Failover(ctx context.Context, out io.Writer, env Env, runs int, bulk string, la LabArgs) (FailoverResult, error) {
	res := FailoverResult{Env: env, Runs: runs, Bulk: bulk}
	rng := rand.New(rand.NewSource(time.Now().UnixNano()))
	var outage, gap, det, claim, live []float64
	for i := 0; i < runs; i++ {
		s, err := OpenLab(ctx, out, la)
		if err != nil {
			return res, err
		}
		rep, err := RunDrillOpts(ctx, s, env, DrillOpts{VM: fmt.Sprintf("fo%d", i), Kind: KillPrimary, Bulk: bulk}, rng)
		if cerr := s.Close(); cerr != nil && err == nil {
			err = cerr
		}
		res.BulkBytes += rep.BulkBytes
		if rep.BulkError != "" {
			res.BulkFailed++
		}
		if err != nil || !rep.ConnSurvived || rep.RequestsLost > 0 || rep.Inconsistent > 0 || rep.BulkError != "" || rep.GuestRebooted {
			res.Failed++
			fmt.Fprintf(out, "run %d failed: %v %+v\n", i, err, rep)
			continue
		}
		fmt.Fprintf(out, "run %d: outage %.0f ms (detection %.0f, claim %.0f, go-live %.0f; longest gap %.0f ms)", i, rep.OutageMS, rep.DetectionMS, rep.ClaimMS, rep.GoLiveMS, rep.MaxGapMS)
		if bulk != "" {
			fmt.Fprintf(out, ", bulk %s %.1f MiB checked (%.1f MiB after the fault)", bulk, float64(rep.BulkBytes)/(1<<20), float64(rep.BulkBytesPost)/(1<<20))
		}
		fmt.Fprintln(out)
		outage, gap, det, claim, live = append(outage, rep.OutageMS), append(gap, rep.MaxGapMS), append(det, rep.DetectionMS), append(claim, rep.ClaimMS), append(live, rep.GoLiveMS)
		res.RequestsLost += rep.RequestsLost
	}
	res.OutageMS, res.MaxGapMS, res.DetectionMS, res.ClaimMS, res.GoLiveMS = NewDist(outage), NewDist(gap), NewDist(det), NewDist(claim), NewDist(live)
	return res, nil
}

// bulkRun is a bulk transfer driven in the background through a drill.
type bulkRun struct {
	done chan struct{}
	tr   Traffic
	err  error
	// progress counts the bytes moved so far by requests that completed.
	progress atomic.Int64
}

// startBulk runs drive against the lab guest for at least d on its own connection.
func startBulk(ctx context.Context, drive func(context.Context, LoadTarget, time.Duration) (Traffic, error), d time.Duration) *bulkRun {
	b := &bulkRun{done: make(chan struct{})}
	t := LabTarget()
	dial := t.Dial
	t.Dial = func(ctx context.Context) (net.Conn, error) {
		c, err := dial(ctx)
		if err != nil {
			return nil, err
		}
		return &countingConn{Conn: c, n: &b.progress}, nil
	}
	go func() {
		defer close(b.done)
		b.tr, b.err = drive(ctx, t, d)
	}()
	return b
}

// moved is the bytes the transfer has carried so far, either way.
func (b *bulkRun) moved() int64 { return b.progress.Load() }

// wait returns the transfer's totals once it has ended (every byte checked).
func (b *bulkRun) wait() (Traffic, error) {
	<-b.done
	return b.tr, b.err
}

// countingConn counts the payload bytes read and written on a connection.
type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// clientWithCounter opens the lab client's connection to the guest and reads the
// guest's counter into before: the drills, ping-pong and protect compare it with
// the counter at the end to show the guest never rebooted.
func clientWithCounter(ctx context.Context, before *int) (*lab.Client, error) {
	c, err := lab.NewClient(ctx, time.Minute)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do("counter", 10*time.Second)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("counter: %w", err)
	}
	fmt.Sscanf(resp, "counter %d", before)
	return c, nil
}
