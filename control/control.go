// Package control is the API between the ftvmd CLI and the local agent: one JSON
// request and one JSON response per connection on a root-only unix socket.
package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ftvmd/ftvmd/journal"
	"github.com/ftvmd/ftvmd/vmspec"
)

// Operations the agent serves.
const (
	OpPing      = "ping"
	OpStatus    = "status"
	OpProtect   = "protect"
	OpRun       = "run"
	OpUnprotect = "unprotect"
	OpStop      = "stop"
	OpDefine    = "define"
	OpFailover  = "failover"
	OpVerify    = "verify"
	// OpEvents reads the agent's journal (journal.Event), VM's only when VM is set.
	OpEvents = "events"
	// OpTestAckDelay sets the backup's ack delay (test-only; the agent must run with
	// --test-knobs). It proves the output rule holds frames until acked.
	OpTestAckDelay = "test-ack-delay"
	// OpTestDiverge makes a backup's divergence sentinel see one byte of its
	// replay's console flipped (test-only; --test-knobs): the sentinel must fire.
	OpTestDiverge = "test-diverge"
)

// Request is one CLI call.
type Request struct {
	Op     string       `json:"op"`
	VM     string       `json:"vm,omitempty"`
	Backup string       `json:"backup,omitempty"` // host:port of the backup agent
	Spec   *vmspec.Spec `json:"spec,omitempty"`
	// KeepDiskCopy (OpRun, OpProtect) keeps a copy of the VM's disk as it is
	// before recording starts, beside the log, for `ftvmd rr check`.
	KeepDiskCopy bool `json:"keep_disk_copy,omitempty"`
	// Force (OpRun, OpProtect) starts the VM even while another host owns its
	// latest epoch on shared storage, or storage cannot say who does; the new
	// epoch it claims makes a live copy elsewhere halt when it next reads the store.
	Force bool `json:"force,omitempty"`
	// KeepLog (OpRun, OpProtect) keeps the primary's whole rr log, for `ftvmd rr
	// check`, instead of freeing what no reader needs any more (KeepDiskCopy
	// implies it). The VM's log disk limit still wins.
	KeepLog bool `json:"keep_log,omitempty"`
	// AckDelayMS is OpTestAckDelay's argument.
	AckDelayMS int `json:"ack_delay_ms,omitempty"`
	// Limit is OpEvents' argument: the newest events, at most this many
	// (0: DefaultEventLimit; at most MaxEventLimit).
	Limit int `json:"limit,omitempty"`
}

// Event limits of OpEvents: a response must fit in maxMessage.
const (
	DefaultEventLimit = 100
	MaxEventLimit     = 2000
)

// Response carries either an error or the result.
type Response struct {
	OK      bool       `json:"ok"`
	Error   string     `json:"error,omitempty"`
	Message string     `json:"message,omitempty"`
	Host    string     `json:"host,omitempty"`
	VMs     []VMStatus `json:"vms,omitempty"`
	// Peers (OpStatus) are the agents this one has had log channels with.
	Peers []PeerStatus `json:"peers,omitempty"`
	// Counters (OpStatus) are what this agent counted per VM, across the copies it
	// ran: they outlive a copy (a backup that went live is a new primary).
	Counters []VMCounters `json:"counters,omitempty"`
	// Events (OpEvents), oldest first.
	Events []journal.Event `json:"events,omitempty"`
}

// PeerStatus is one peer agent as this agent sees it. Agents talk only over the log
// channels of the VMs they protect together: a peer is up while at least one such
// channel is open (a channel whose peer falls silent for the peer timeout ends).
type PeerStatus struct {
	Host     string    `json:"host"` // the name in its certificate
	Up       bool      `json:"up"`
	Channels int       `json:"channels"` // log channels open with it
	Since    time.Time `json:"since"`    // when it last went up or down
	// RTTMS is the kernel's smoothed round-trip time of a log channel's TCP
	// connection (TCP_INFO), over which heartbeats and acks flow; 0 when unknown.
	RTTMS float64 `json:"rtt_ms,omitempty"`
	// LastHeardMS is how long ago the peer last sent anything (a heartbeat, an ack,
	// log) on the freshest channel.
	LastHeardMS float64 `json:"last_heard_ms,omitempty"`
}

// VMCounters is what an agent counted for one VM since it started.
type VMCounters struct {
	Name string `json:"name"`
	// Failovers: times a copy on this host took the VM after losing its peer (a
	// backup going live, a primary carrying on alone), or was handed it.
	Failovers uint64 `json:"failovers"`
	// Reprotections: times a VM running alone got a new backup (automatically
	// after a failover, or by ftvmd protect of the running VM).
	Reprotections uint64 `json:"reprotections"`
	// Epoch claims on shared storage, by result.
	ClaimsWon    uint64 `json:"claims_won"`
	ClaimsLost   uint64 `json:"claims_lost"`
	ClaimsFailed uint64 `json:"claims_failed"`
	// The latest failover's claim, and go-live (a backup becoming the live VM).
	LastClaimMS  float64 `json:"last_claim_ms,omitempty"`
	LastGoLiveMS float64 `json:"last_golive_ms,omitempty"`
}

// Histogram is a distribution over fixed buckets (Prometheus' layout).
type Histogram struct {
	Bounds []float64 `json:"bounds"` // inclusive upper bounds in seconds, increasing
	Counts []uint64  `json:"counts"` // per bucket, not cumulative; the last counts values beyond the last bound
	Sum    float64   `json:"sum"`    // of the values, in seconds
}

// Count is the number of values.
func (h Histogram) Count() uint64 {
	var n uint64
	for _, c := range h.Counts {
		n += c
	}
	return n
}

// VMStates are the states a VM's copy can be in (VMStatus.State), the names of
// lifecycle.State (agent.TestVMStatesAreTheLifecycles keeps them equal): a primary
// starting, protected, claiming (its backup lost, claiming the next epoch),
// degraded (backup lost, no shared storage), unprotecting (claiming the next epoch
// for `ftvmd unprotect`), handing-over (a planned failover under way), unprotected,
// syncing (running unprotected while a backup is brought up from its running
// state), halted (lost the epoch), handed-over (planned failover); a backup replaying,
// going-live or live (it went live; the live VM is a new primary); either failed,
// stopping or stopped.
var VMStates = []string{"starting", "protected", "claiming", "degraded", "unprotecting", "handing-over",
	"unprotected", "halted", "handed-over", "replaying", "going-live", "live", "failed", "stopping", "stopped", "syncing"}

// SyncStatus is how a primary brought up a backup from its running state:
// its phase, the guest's pause for the snapshot, and how long each part took.
// After a failover it also gives the window of vulnerability: from the fault
// (the old primary lost) to protected again, in parts.
type SyncStatus struct {
	Backup string `json:"backup"`
	// Phase: snapshot, copying, catching-up, protected, failed.
	Phase string `json:"phase"`
	// Percent of the base (disk and VM state) the backup holds while copying.
	Percent float64 `json:"percent,omitempty"`
	Error   string  `json:"error,omitempty"`
	// PauseMS: the guest stood still this long for the snapshot.
	PauseMS float64 `json:"pause_ms,omitempty"`
	// BaseBytes: the disk and VM state sent to the backup.
	BaseBytes int64 `json:"base_bytes,omitempty"`
	// FromOffset: the log offset the backup replays from (the snapshot's);
	// HeldFrom: the offset from which the output rule holds output.
	FromOffset int64 `json:"from_offset,omitempty"`
	HeldFrom   int64 `json:"held_from,omitempty"`
	// ConsoleFrom: the console's size at the snapshot; the backup's replay
	// prints what the primary printed from there on.
	ConsoleFrom int64     `json:"console_from,omitempty"`
	StartedAt   time.Time `json:"started_at"`
	// The parts: snapshot (pause and reading it), copying the base, the backup
	// catching up with the log written meanwhile.
	SnapshotMS float64 `json:"snapshot_ms,omitempty"`
	CopyMS     float64 `json:"copy_ms,omitempty"`
	CatchUpMS  float64 `json:"catch_up_ms,omitempty"`
	// ProtectedAt: when the backup acknowledged HeldFrom (zero until then).
	ProtectedAt time.Time `json:"protected_at,omitempty"`
	// Automatic re-protection after a failover: when the old primary was lost
	// (FaultAt), how long this copy waited for a backup host (WaitMS), and the
	// whole window of vulnerability, fault to protected again (WindowMS).
	Auto    bool      `json:"auto,omitempty"`
	FaultAt time.Time `json:"fault_at,omitempty"`
	// FailoverMS: from the fault to this copy running alone (claim and go-live).
	FailoverMS float64 `json:"failover_ms,omitempty"`
	WaitMS     float64 `json:"wait_ms,omitempty"`
	WindowMS   float64 `json:"window_ms,omitempty"`
}

// VMStatus is what `ftvmd status` shows for one VM on this host.
type VMStatus struct {
	Name      string    `json:"name"`
	Role      string    `json:"role"`  // primary | backup
	State     string    `json:"state"` // one of VMStates
	Peer      string    `json:"peer,omitempty"`
	Detail    string    `json:"detail,omitempty"`
	StartedAt time.Time `json:"started_at"`
	PID       int       `json:"pid,omitempty"`
	Epoch     uint64    `json:"epoch,omitempty"` // shared-storage epoch this copy runs under
	// Forced: the VM was started with --force over another host's epoch (what it
	// overrode).
	Forced string `json:"forced,omitempty"`
	// EpochCheck: why this live copy could not read its VM's epoch on shared
	// storage at its last check ("" when it could); it carries on meanwhile.
	EpochCheck string `json:"epoch_check,omitempty"`
	// The divergence sentinel (backup): the replay's console matches the
	// primary's up to ConsoleChecked bytes; Divergence says what differed, where.
	ConsoleChecked int64  `json:"console_checked,omitempty"`
	Divergence     string `json:"divergence,omitempty"`
	// StepDownEvidence (backup): the sentinel stepped this backup down (a
	// divergence, or a stall past the agent's --stall-step-down) and wrote what it
	// found here (stepdown.json, beside the received log and the replay's console).
	StepDownEvidence string `json:"step_down_evidence,omitempty"`
	// The sentinel's NIC half. Backup: frames its replay's guest transmitted
	// (NICFrames), found equal to the primary's (NICChecked), not compared
	// (NICSkipped: the primary sent no digest for them, or one came too late), and
	// the primary's digest messages dropped on a full queue (NICDropped). Primary:
	// frames whose digests went to the backup (NICFrames), and those dropped on a
	// full queue (NICDropped).
	NICFrames  uint64 `json:"nic_frames,omitempty"`
	NICChecked uint64 `json:"nic_checked,omitempty"`
	NICSkipped uint64 `json:"nic_skipped,omitempty"`
	NICDropped uint64 `json:"nic_dropped,omitempty"`
	// Engine names the QEMU this copy runs on (qemu.Engine.Name), and what an
	// operator should know about it (qemu.Engine.Warning).
	Engine string `json:"engine,omitempty"`
	// DataPath is how the VM's frames reach the network: relay or tap.
	DataPath      string `json:"data_path,omitempty"`
	EngineWarning string `json:"engine_warning,omitempty"`
	// Last failover handled by this copy: time to win the epoch claim, and (after a
	// backup went live) the go-live itself.
	FailoverClaimMS  float64 `json:"failover_claim_ms,omitempty"`
	FailoverGoLiveMS float64 `json:"failover_golive_ms,omitempty"`
	// The VM's disk image on this host, and the initial copy to the backup.
	Disk      string `json:"disk,omitempty"`
	CopyDone  int64  `json:"copy_done,omitempty"`
	CopyTotal int64  `json:"copy_total,omitempty"`
	// CopyResumed: bytes of CopyDone the backup already held from an interrupted
	// copy, verified by checksum and not sent again.
	CopyResumed int64   `json:"copy_resumed,omitempty"`
	CopyRate    float64 `json:"copy_rate_bps,omitempty"`
	// Sync: the latest protection of this VM while it ran (protect of a running
	// VM, re-protection after a failover); nil if it was protected from boot or
	// never.
	Sync *SyncStatus `json:"sync,omitempty"`

	LogWritten    int64   `json:"log_written"`  // bytes in the local rr log
	LogSent       int64   `json:"log_sent"`     // primary: offset sent to the backup
	LogAcked      int64   `json:"log_acked"`    // offset the backup holds
	LogReplayed   int64   `json:"log_replayed"` // offset the backup's replay has passed
	Icount        uint64  `json:"icount"`       // instructions logged (primary) / replayed (backup)
	BackupIcount  uint64  `json:"backup_icount,omitempty"`
	LagBytes      int64   `json:"lag_bytes"`
	LagMS         float64 `json:"lag_ms"`      // age of the oldest log position the backup has not replayed
	WorkLagMS     float64 `json:"work_lag_ms"` // execution still to replay, at the current instruction rate (drives the throttle)
	LagBoundMS    int     `json:"lag_bound_ms,omitempty"`
	LogBandwidth  float64 `json:"log_bandwidth_bps"` // bytes/s over the last few seconds
	BackupBehind  bool    `json:"backup_behind,omitempty"`
	ThrottleQuota float64 `json:"throttle_quota"` // CPU fraction allowed to the primary's QEMU; 1 = free
	// ThrottleAtFloor: the quota is at the throttle's floor, as slow as the primary goes;
	// with the lag over the bound, the backup cannot keep pace even so.
	ThrottleAtFloor bool    `json:"throttle_at_floor,omitempty"`
	ThrottledSec    float64 `json:"throttled_sec"`

	// LogOnDisk is the space this copy's rr log file takes on disk (allocated
	// blocks): with bounded logs, about what a reader still needs, while the
	// file's size (LogWritten) grows for as long as the VM runs.
	LogOnDisk int64 `json:"log_on_disk"`
	// Histograms of the lag samples (LagMS, WorkLagMS) since this copy started,
	// one per ack from the backup.
	LagHist     *Histogram `json:"lag_hist,omitempty"`
	WorkLagHist *Histogram `json:"work_lag_hist,omitempty"`
	// PacingEnabled: this copy paces the network's frames to the guest (the
	// agent's --pace-queue-bytes: in the agent on the relay data path, with a
	// qdisc on the tap on the tap path); the pacing fields below say nothing
	// otherwise.
	PacingEnabled bool `json:"pacing_enabled,omitempty"`

	// Pacing of the frames from the network to the primary's QEMU (each one is
	// logged, and a CPU quota cannot slow them): while active, at most
	// PaceRateBps bytes/s go to QEMU and the rest wait in a bounded queue.
	PacingActive     bool    `json:"pacing_active"`
	PacedSec         float64 `json:"paced_sec"`              // total time paced
	PacedFrames      uint64  `json:"paced_frames"`           // frames that waited in the queue (tap path: that passed the qdisc)
	PaceDrops        uint64  `json:"pace_drops"`             // frames dropped on a full queue
	PaceRateBps      float64 `json:"pace_rate_bps"`          // bytes/s allowed; 0 = unlimited
	PaceQueueBytes   int64   `json:"pace_queue_bytes"`       // bytes waiting now
	PaceEngaged      uint64  `json:"pace_engaged,omitempty"` // times the lag passing the bound started pacing
	PaceEngagedLagMS float64 `json:"pace_engaged_lag_ms,omitempty"`
	// PaceErrors counts failures to apply the rate on the tap data path (its
	// qdisc could not be installed, changed or removed, or its counters read):
	// the guest's input then went unpaced; the CPU quota still worked.
	PaceErrors uint64 `json:"pace_errors,omitempty"`
	// ThrottleErrors counts failures to set the CPU quota (the cgroup write
	// failed, or took longer than 2 s): the quota then stayed where it was. A
	// pacing call that took longer than 2 s counts in PaceErrors. Neither holds
	// the acks that release the guest's output: both are applied off that path.
	ThrottleErrors uint64 `json:"throttle_errors,omitempty"`

	// QEMU liveness: the agent asks this copy's QEMU query-status every second.
	// QEMUUnresponsive: the oldest probe not answered since the last answer has
	// been out for the agent's --qemu-unresponsive-after (10 s by default), or
	// three probes in a row failed: the QEMU does not answer (a deadlock, SIGSTOP,
	// a frozen host thread). Since: when it stopped answering; LastAnswer: the
	// latest good probe. An unprotected primary starts no re-protection meanwhile.
	QEMUUnresponsive    bool      `json:"qemu_unresponsive,omitempty"`
	QEMUUnresponsiveSec float64   `json:"qemu_unresponsive_sec,omitempty"` // how long it has not answered
	QEMUSince           time.Time `json:"qemu_unresponsive_since,omitzero"`
	QEMULastAnswer      time.Time `json:"qemu_last_answer,omitzero"`
	QEMUProbeError      string    `json:"qemu_probe_error,omitempty"`           // the latest failed probe's error
	QEMUUnresponsives   uint64    `json:"qemu_unresponsive_episodes,omitempty"` // episodes so far, the current one included

	// Replay stall: the backup's replay has made no progress for a while (the
	// agent's --stall-after, 3 s by default) although the backup holds log beyond
	// its position; a failover would find it there. The backup reports its own; the
	// primary shows what its backup reported in the latest ack. One that lasts the
	// agent's --stall-step-down (10 s) makes the backup step down (StepDownEvidence).
	// ReplayStallReported is false on a primary whose backup does not report stalls
	// (an older ftvmd): then the other fields say nothing.
	ReplayStallReported    bool    `json:"replay_stall_reported,omitempty"`
	ReplayStalled          bool    `json:"replay_stalled"`
	ReplayStalledSec       float64 `json:"replay_stalled_sec,omitempty"`        // how long the current stall has lasted
	ReplayStalledAtIcount  uint64  `json:"replay_stalled_at_icount,omitempty"`  // the replayed icount it stopped at
	ReplayStalledLogBeyond int64   `json:"replay_stalled_log_beyond,omitempty"` // log bytes the backup holds beyond that point
	ReplayStalls           uint64  `json:"replay_stalls"`                       // stalls so far, the current one included
	// ReplayStalledWaiting names the side that stands still (the replaying QEMU, the
	// backup's feed, or a log with no safe cut point yet), on the backup.
	ReplayStalledWaiting string `json:"replay_stalled_waiting,omitempty"`

	HeldFrames     int     `json:"held_frames"`
	HeldBytes      int64   `json:"held_bytes"`
	OldestHeldMS   float64 `json:"oldest_held_ms"`
	Released       uint64  `json:"released_frames"`
	AddedDelayMS   float64 `json:"added_delay_avg_ms"`
	MaxDelayMS     float64 `json:"added_delay_max_ms"`
	Backpressure   uint64  `json:"backpressure_events"`
	EmittedFrames  uint64  `json:"emitted_frames,omitempty"` // backup: frames its replaying QEMU tried to send (must be 0)
	NetErrors      uint64  `json:"net_errors,omitempty"`
	InvariantFails uint64  `json:"invariant_failures,omitempty"`

	// Quantiles of the added delay since this VM's output rule began: upper
	// bounds of histogram buckets (each twice the last), capped at the maximum.
	AddedDelayP50MS float64 `json:"added_delay_p50_ms,omitempty"`
	AddedDelayP99MS float64 `json:"added_delay_p99_ms,omitempty"`
	// Disk space of this copy's logs on this host: the rr log and the console log
	// with its rotated copies. LogDiskBytes is what they take on disk (allocated
	// blocks), LogFileBytes their sizes: a log whose consumed prefix was freed
	// keeps its size. LogFreed is the rr log's prefix given back so far.
	LogDiskBytes int64 `json:"log_disk_bytes"`
	LogFileBytes int64 `json:"log_file_bytes"`
	LogFreed     int64 `json:"log_freed"`
	LogDiskLimit int64 `json:"log_disk_limit,omitempty"` // the VM's max_log_disk
	LogFSFree    int64 `json:"log_fs_free,omitempty"`    // free space on the file system holding them
	// LogKeeps says what the rr log keeps (until the backup acknowledges it, ...).
	LogKeeps string `json:"log_keeps,omitempty"`
	// LogFreeError is why the consumed log cannot be freed here (the file system
	// cannot punch holes): the rr log then grows until the VM stops.
	LogFreeError string `json:"log_free_error,omitempty"`
	// LogDiskAlarm is set while the logs near or reach their limit, or the file
	// system has less free than they may still take.
	LogDiskAlarm string `json:"log_disk_alarm,omitempty"`
	// LogLimitPaused: the primary paused its guest at the limit until the backup
	// acknowledges enough log to free.
	LogLimitPaused   bool   `json:"log_limit_paused,omitempty"`
	ConsoleRotations uint64 `json:"console_rotations,omitempty"`

	// AddedDelayHist is the raw histogram behind them (outputrule.DelayHist
	// bucket counts; read it back with outputrule.DelayHistFromCounts), so a
	// client can subtract two snapshots and take the quantiles of an interval.
	AddedDelayHist []uint64 `json:"added_delay_hist,omitempty"`
	// AddedDelaySumMS is the sum of the delays AddedDelayHist counts.
	AddedDelaySumMS float64 `json:"added_delay_sum_ms,omitempty"`
}

// maxMessage bounds a request or response so a bad peer cannot exhaust memory.
const maxMessage = 1 << 20

// Handler serves one request.
type Handler func(ctx context.Context, req Request) Response

// Listen creates the root-only control socket, replacing a stale one.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("control socket dir: %w", err)
	}
	if c, err := net.DialTimeout("unix", path, 200*time.Millisecond); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s: another agent is already listening", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return ln, nil
}

// Serve answers requests until ctx is done. Only root peers are served: the socket is
// 0600, and the peer's credentials are checked as well.
func Serve(ctx context.Context, ln net.Listener, h Handler, log *slog.Logger) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() { <-ctx.Done(); ln.Close() }()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("control accept: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			serveConn(ctx, c, h, log)
		}()
	}
}

func serveConn(ctx context.Context, c net.Conn, h Handler, log *slog.Logger) {
	var req Request
	reply := func(r Response) {
		b, err := json.Marshal(r)
		if err != nil {
			// Still one answer: without it the CLI could only say the reply was empty.
			log.Error("control: cannot encode the answer", "op", req.Op, "err", err)
			b, _ = json.Marshal(Response{Error: fmt.Sprintf("the agent cannot encode its answer to %q: %v", req.Op, err)})
		}
		_, _ = c.Write(append(b, '\n'))
	}
	if uc, ok := c.(*net.UnixConn); ok {
		if uid, err := peerUID(uc); err != nil || uid != 0 {
			log.Warn("control: refused non-root peer", "uid", uid, "err", err)
			reply(Response{Error: "permission denied: ftvmd's control socket is for root only"})
			return
		}
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if err := json.NewDecoder(io.LimitReader(c, maxMessage)).Decode(&req); err != nil {
		reply(Response{Error: fmt.Sprintf("bad request: %v", err)})
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	reply(h(ctx, req))
}

func peerUID(c *net.UnixConn) (int, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return -1, err
	}
	if credErr != nil {
		return -1, credErr
	}
	return int(cred.Uid), nil
}

// ErrNoAgent means nothing listens on the control socket.
var ErrNoAgent = errors.New("no ftvmd agent is running")

// Call sends one request to the agent at socket and returns its response. An error
// response from the agent is returned as an error.
func Call(ctx context.Context, socket string, req Request) (Response, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return Response{}, fmt.Errorf("%w on %s (start it with 'ftvmd agent'): %v", ErrNoAgent, socket, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	go func() { <-ctx.Done(); c.Close() }()
	if err := json.NewEncoder(c).Encode(req); err != nil {
		return Response{}, fmt.Errorf("send to agent: %w", err)
	}
	var resp Response
	if err := json.NewDecoder(io.LimitReader(c, maxMessage)).Decode(&resp); err != nil {
		return Response{}, fmt.Errorf("read agent response: %w", err)
	}
	if !resp.OK {
		if resp.Error == "" {
			resp.Error = "agent returned no result"
		}
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}
