// Package metrics exports an agent's status as Prometheus metrics. It keeps no
// counters of its own: at each scrape it reads the agent's status snapshot (the
// one `ftvmd status` shows) and turns it into metrics, so the two always agree.
package metrics

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/outputrule"
)

// Source is what the exporter reads at each scrape: agent.Agent.Snapshot.
type Source interface {
	Snapshot() control.Response
}

// SourceFunc adapts a function to Source.
type SourceFunc func() control.Response

// Snapshot implements Source.
func (f SourceFunc) Snapshot() control.Response { return f() }

const ns = "ftvmd"

// vmLabels are the labels of a VM copy's metrics.
var vmLabels = []string{"vm", "role"}

// vmMetric is one metric of a VM's copy, read from its status. ok false leaves it
// out for this copy (a backup has no throttle; pacing only where it is on).
type vmMetric struct {
	desc  *prometheus.Desc
	typ   prometheus.ValueType
	value func(v control.VMStatus) (val float64, ok bool)
}

func vm(name, help string, typ prometheus.ValueType, value func(control.VMStatus) (float64, bool)) vmMetric {
	return vmMetric{prometheus.NewDesc(ns+"_"+name, help, vmLabels, nil), typ, value}
}

func always(f func(control.VMStatus) float64) func(control.VMStatus) (float64, bool) {
	return func(v control.VMStatus) (float64, bool) { return f(v), true }
}

func primaryOnly(f func(control.VMStatus) float64) func(control.VMStatus) (float64, bool) {
	return func(v control.VMStatus) (float64, bool) { return f(v), v.Role == "primary" }
}

func backupOnly(f func(control.VMStatus) float64) func(control.VMStatus) (float64, bool) {
	return func(v control.VMStatus) (float64, bool) { return f(v), v.Role == "backup" }
}

func stallReported(f func(control.VMStatus) float64) func(control.VMStatus) (float64, bool) {
	return func(v control.VMStatus) (float64, bool) { return f(v), v.ReplayStallReported }
}

func pacing(f func(control.VMStatus) float64) func(control.VMStatus) (float64, bool) {
	return func(v control.VMStatus) (float64, bool) { return f(v), v.PacingEnabled }
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func sec(ms float64) float64 { return ms / 1000 }

var (
	gauge   = prometheus.GaugeValue
	counter = prometheus.CounterValue
)

// vmMetrics are the per-copy metrics read straight from control.VMStatus.
var vmMetrics = []vmMetric{
	vm("vm_epoch", "Shared-storage epoch this copy runs under (0 without shared storage).", gauge,
		always(func(v control.VMStatus) float64 { return float64(v.Epoch) })),
	vm("vm_start_time_seconds", "When this copy started, in seconds since the Unix epoch.", gauge,
		always(func(v control.VMStatus) float64 { return float64(v.StartedAt.UnixNano()) / 1e9 })),
	vm("instructions_total", "Guest instructions logged (primary) or replayed (backup).", counter,
		always(func(v control.VMStatus) float64 { return float64(v.Icount) })),

	vm("log_written_bytes_total", "rr log written by the primary's QEMU (primary), or received from the primary (backup), as an offset into the log.", counter,
		always(func(v control.VMStatus) float64 { return float64(v.LogWritten) })),
	vm("log_sent_bytes_total", "rr log sent to the backup, as an offset into the log.", counter,
		primaryOnly(func(v control.VMStatus) float64 { return float64(v.LogSent) })),
	vm("log_acked_bytes_total", "rr log the backup holds and acknowledged, as an offset into the log.", counter,
		always(func(v control.VMStatus) float64 { return float64(v.LogAcked) })),
	vm("log_replayed_bytes_total", "rr log the backup's replay has passed (primary's view) or that was fed to the replaying QEMU (backup), as an offset into the log.", counter,
		always(func(v control.VMStatus) float64 { return float64(v.LogReplayed) })),
	vm("log_disk_bytes", "Space this copy's rr log file takes on disk (allocated blocks; the consumed prefix is freed as the VM runs).", gauge,
		always(func(v control.VMStatus) float64 { return float64(v.LogOnDisk) })),
	vm("log_space_bytes", "Space all of this copy's logs (rr log, console and its rotated copies) take on disk, against the VM's limit.", gauge,
		always(func(v control.VMStatus) float64 { return float64(v.LogDiskBytes) })),
	vm("log_space_limit_bytes", "The VM's limit on the space its logs take on each host (max_log_disk).", gauge,
		always(func(v control.VMStatus) float64 { return float64(v.LogDiskLimit) })),
	vm("log_space_alarm", "1 while the logs take 80% of their limit or more, or the file system has less free than they may still take.", gauge,
		always(func(v control.VMStatus) float64 { return b2f(v.LogDiskAlarm != "") })),
	vm("log_space_paused", "1 while the primary's guest is paused at the log space limit, waiting for the backup's acknowledgements.", gauge,
		primaryOnly(func(v control.VMStatus) float64 { return b2f(v.LogLimitPaused) })),

	vm("backup_replayed_instructions_total", "Guest instructions the backup has replayed, from its acks.", counter,
		primaryOnly(func(v control.VMStatus) float64 { return float64(v.BackupIcount) })),
	vm("backup_lag_latest_seconds", "Age of the oldest log position the backup has not replayed, at the latest ack.", gauge,
		primaryOnly(func(v control.VMStatus) float64 { return sec(v.LagMS) })),
	vm("backup_work_lag_latest_seconds", "Execution the backup still has to replay, at its peak replay rate, at the latest ack.", gauge,
		primaryOnly(func(v control.VMStatus) float64 { return sec(v.WorkLagMS) })),
	vm("backup_lag_latest_bytes", "rr log bytes the backup has not replayed, at the latest ack.", gauge,
		primaryOnly(func(v control.VMStatus) float64 { return float64(v.LagBytes) })),
	vm("backup_lag_bound_seconds", "The VM's lag bound: beyond it the primary is throttled (and its input paced).", gauge,
		primaryOnly(func(v control.VMStatus) float64 { return sec(float64(v.LagBoundMS)) })),
	vm("backup_behind", "1 while unsent log waits because the window of unacknowledged log is full.", gauge,
		primaryOnly(func(v control.VMStatus) float64 { return b2f(v.BackupBehind) })),

	vm("qemu_unresponsive", "1 while this copy's QEMU does not answer the agent's liveness probe (query-status) past --qemu-unresponsive-after.", gauge,
		always(func(v control.VMStatus) float64 { return b2f(v.QEMUUnresponsive) })),
	vm("qemu_unresponsive_seconds", "How long this copy's QEMU has not answered (0 while it answers).", gauge,
		always(func(v control.VMStatus) float64 { return v.QEMUUnresponsiveSec })),
	vm("qemu_unresponsive_total", "Episodes of this copy's QEMU not answering, the current one included.", counter,
		always(func(v control.VMStatus) float64 { return float64(v.QEMUUnresponsives) })),

	vm("throttle_quota_ratio", "CPU fraction the primary's QEMU may use (1: not throttled).", gauge,
		primaryOnly(func(v control.VMStatus) float64 { return v.ThrottleQuota })),
	vm("throttled_seconds_total", "Time the primary's quota was below 1.", counter,
		primaryOnly(func(v control.VMStatus) float64 { return v.ThrottledSec })),

	vm("pacing_active", "1 while the network's frames to the guest are paced (pacing on only).", gauge,
		pacing(func(v control.VMStatus) float64 { return b2f(v.PacingActive) })),
	vm("paced_seconds_total", "Time the network's frames to the guest were paced.", counter,
		pacing(func(v control.VMStatus) float64 { return v.PacedSec })),
	vm("paced_frames_total", "Frames from the network that waited in the pacing queue (tap path: that passed the pacing qdisc).", counter,
		pacing(func(v control.VMStatus) float64 { return float64(v.PacedFrames) })),
	vm("pace_dropped_frames_total", "Frames from the network dropped on a full pacing queue.", counter,
		pacing(func(v control.VMStatus) float64 { return float64(v.PaceDrops) })),
	vm("pace_rate_bytes_per_second", "Rate the guest may receive at while paced (0: unlimited).", gauge,
		pacing(func(v control.VMStatus) float64 { return v.PaceRateBps })),
	vm("pace_queue_bytes", "Bytes from the network waiting in the pacing queue.", gauge,
		pacing(func(v control.VMStatus) float64 { return float64(v.PaceQueueBytes) })),
	vm("pace_engaged_total", "Times the lag passing the bound started pacing.", counter,
		pacing(func(v control.VMStatus) float64 { return float64(v.PaceEngaged) })),

	vm("output_held_frames", "Guest frames held by the output rule until the backup acknowledges the log before them.", gauge,
		primaryOnly(func(v control.VMStatus) float64 { return float64(v.HeldFrames) })),
	vm("output_held_bytes", "Bytes of the held guest frames.", gauge,
		primaryOnly(func(v control.VMStatus) float64 { return float64(v.HeldBytes) })),
	vm("output_oldest_held_seconds", "Age of the oldest held guest frame.", gauge,
		primaryOnly(func(v control.VMStatus) float64 { return sec(v.OldestHeldMS) })),
	vm("output_released_frames_total", "Guest frames released to the network.", counter,
		primaryOnly(func(v control.VMStatus) float64 { return float64(v.Released) })),
	vm("output_backpressure_total", "Times the output path waited for room (held frames at their limit).", counter,
		primaryOnly(func(v control.VMStatus) float64 { return float64(v.Backpressure) })),
	vm("output_net_errors_total", "Guest frames lost to errors on the data path (oversized, truncated, stamp or tap write failures).", counter,
		primaryOnly(func(v control.VMStatus) float64 { return float64(v.NetErrors) })),
	vm("output_invariant_failures_total", "Released frames whose log the backup had not acknowledged (the output rule broken; checked with --check-invariant). Must stay 0.", counter,
		primaryOnly(func(v control.VMStatus) float64 { return float64(v.InvariantFails) })),

	vm("replay_stalled", "1 while the backup's replay makes no progress although the backup holds log beyond it.", gauge,
		stallReported(func(v control.VMStatus) float64 { return b2f(v.ReplayStalled) })),
	vm("replay_stall_seconds", "How long the current replay stall has lasted (0 when not stalled).", gauge,
		stallReported(func(v control.VMStatus) float64 { return v.ReplayStalledSec })),
	vm("replay_stalls_total", "Replay stall episodes, the current one included.", counter,
		stallReported(func(v control.VMStatus) float64 { return float64(v.ReplayStalls) })),
	vm("sentinel_nic_frames_total", "Divergence sentinel, NIC half: on a backup, frames its replay's guest transmitted; on a primary, frames whose digests went to the backup.", counter,
		always(func(v control.VMStatus) float64 { return float64(v.NICFrames) })),
	vm("sentinel_nic_checked_frames_total", "Frames the backup's replay transmitted that matched the primary's, byte for byte (by length and CRC-64).", counter,
		backupOnly(func(v control.VMStatus) float64 { return float64(v.NICChecked) })),
	vm("sentinel_nic_skipped_frames_total", "Frames the backup's replay transmitted that could not be compared (no digest from the primary, or one that came too late).", counter,
		backupOnly(func(v control.VMStatus) float64 { return float64(v.NICSkipped) })),
	vm("sentinel_nic_dropped_total", "NIC digests dropped on a full queue: frames on the primary, messages on the backup.", counter,
		always(func(v control.VMStatus) float64 { return float64(v.NICDropped) })),
	vm("replay_emitted_frames_total", "Frames the backup's replaying QEMU tried to send. Must stay 0.", counter,
		backupOnly(func(v control.VMStatus) float64 { return float64(v.EmittedFrames) })),
}

var (
	descInfo = prometheus.NewDesc(ns+"_vm_info", "A VM copy this agent runs: its QEMU engine, data path and peer (value 1).",
		[]string{"vm", "role", "engine", "data_path", "peer"}, nil)
	descState = prometheus.NewDesc(ns+"_vm_state", "The copy's state: 1 for the state it is in, 0 for the others.",
		[]string{"vm", "role", "state"}, nil)
	descLag = prometheus.NewDesc(ns+"_backup_lag_seconds", "Age lag samples: the age of the oldest log position the backup had not replayed, one per ack.",
		vmLabels, nil)
	descWorkLag = prometheus.NewDesc(ns+"_backup_work_lag_seconds", "Work lag samples: execution the backup still had to replay at its peak rate, one per ack.",
		vmLabels, nil)
	descDelay = prometheus.NewDesc(ns+"_output_delay_seconds", "Time the output rule held each released guest frame.",
		vmLabels, nil)

	descFailovers = prometheus.NewDesc(ns+"_failovers_total", "Times a copy on this host took the VM after losing its peer (a backup going live, a primary carrying on alone) or was handed it in a planned failover.",
		[]string{"vm"}, nil)
	descReprotections = prometheus.NewDesc(ns+"_reprotections_total", "Times the VM, running alone, got a new backup.",
		[]string{"vm"}, nil)
	descClaims = prometheus.NewDesc(ns+"_epoch_claims_total", "Epoch claims on shared storage made on this host, by result (won, lost, failed).",
		[]string{"vm", "result"}, nil)
	descLastClaim = prometheus.NewDesc(ns+"_last_failover_claim_seconds", "How long the latest failover on this host took to claim the next epoch.",
		[]string{"vm"}, nil)
	descLastGoLive = prometheus.NewDesc(ns+"_last_golive_seconds", "How long the latest go-live on this host took (the backup's replay becoming the live VM).",
		[]string{"vm"}, nil)

	descPeerUp = prometheus.NewDesc(ns+"_peer_up", "1 while at least one log channel with the peer agent is open.",
		[]string{"peer"}, nil)
	descPeerChannels = prometheus.NewDesc(ns+"_peer_channels", "Log channels open with the peer agent (one per VM protected together).",
		[]string{"peer"}, nil)
	descPeerRTT = prometheus.NewDesc(ns+"_peer_rtt_seconds", "Smoothed round-trip time of the log channel's TCP connection to the peer, which carries the heartbeats and acks (kernel TCP_INFO).",
		[]string{"peer"}, nil)
	descPeerHeard = prometheus.NewDesc(ns+"_peer_last_heard_seconds", "Time since the peer last sent anything (log, heartbeat, ack) on an open channel.",
		[]string{"peer"}, nil)
	descAgent = prometheus.NewDesc(ns+"_agent_info", "This agent (value 1).", []string{"host"}, nil)
)

// Collector is a prometheus.Collector over a Source.
type Collector struct {
	src Source
}

// NewCollector returns a collector that reads src at each scrape.
func NewCollector(src Source) *Collector { return &Collector{src: src} }

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range vmMetrics {
		ch <- m.desc
	}
	for _, d := range []*prometheus.Desc{descInfo, descState, descLag, descWorkLag, descDelay,
		descFailovers, descReprotections, descClaims, descLastClaim, descLastGoLive,
		descPeerUp, descPeerChannels, descPeerRTT, descPeerHeard, descAgent} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.src.Snapshot()
	ch <- metric(descAgent, gauge, 1, s.Host)
	seen := map[string]bool{}
	for _, v := range s.VMs {
		if seen[v.Name] {
			continue // one copy of a VM per agent: a second would collide
		}
		seen[v.Name] = true
		collectVM(ch, v)
	}
	for _, k := range s.Counters {
		ch <- metric(descFailovers, counter, float64(k.Failovers), k.Name)
		ch <- metric(descReprotections, counter, float64(k.Reprotections), k.Name)
		ch <- metric(descClaims, counter, float64(k.ClaimsWon), k.Name, "won")
		ch <- metric(descClaims, counter, float64(k.ClaimsLost), k.Name, "lost")
		ch <- metric(descClaims, counter, float64(k.ClaimsFailed), k.Name, "failed")
		if k.LastClaimMS > 0 {
			ch <- metric(descLastClaim, gauge, sec(k.LastClaimMS), k.Name)
		}
		if k.LastGoLiveMS > 0 {
			ch <- metric(descLastGoLive, gauge, sec(k.LastGoLiveMS), k.Name)
		}
	}
	for _, p := range s.Peers {
		ch <- metric(descPeerUp, gauge, b2f(p.Up), p.Host)
		ch <- metric(descPeerChannels, gauge, float64(p.Channels), p.Host)
		if p.RTTMS > 0 {
			ch <- metric(descPeerRTT, gauge, sec(p.RTTMS), p.Host)
		}
		if p.Up {
			ch <- metric(descPeerHeard, gauge, sec(p.LastHeardMS), p.Host)
		}
	}
}

func collectVM(ch chan<- prometheus.Metric, v control.VMStatus) {
	ch <- metric(descInfo, gauge, 1, v.Name, v.Role, v.Engine, v.DataPath, v.Peer)
	for _, st := range control.VMStates {
		ch <- metric(descState, gauge, b2f(v.State == st), v.Name, v.Role, st)
	}
	for _, m := range vmMetrics {
		if val, ok := m.value(v); ok {
			ch <- metric(m.desc, m.typ, val, v.Name, v.Role)
		}
	}
	if v.LagHist != nil {
		ch <- histogram(descLag, *v.LagHist, v.Name, v.Role)
	}
	if v.WorkLagHist != nil {
		ch <- histogram(descWorkLag, *v.WorkLagHist, v.Name, v.Role)
	}
	if v.Role == "primary" {
		ch <- histogram(descDelay, outputDelay(v), v.Name, v.Role)
	}
}

// outputDelay is the output rule's delay histogram (outputrule.DelayHist's counts in
// VMStatus.AddedDelayHist; empty until a frame is released).
func outputDelay(v control.VMStatus) control.Histogram {
	h := control.Histogram{
		Bounds: make([]float64, outputrule.DelayHistBuckets),
		Counts: v.AddedDelayHist,
		Sum:    sec(v.AddedDelaySumMS),
	}
	for i := range h.Bounds {
		h.Bounds[i] = outputrule.DelayHistBound(i).Seconds()
	}
	if len(h.Counts) == 0 {
		h.Counts = make([]uint64, outputrule.DelayHistBuckets+1)
	}
	return h
}

// histogram turns h into a const histogram; a malformed one (the agent and this
// exporter disagree on its layout) is reported to the scraper, not panicked on.
func histogram(d *prometheus.Desc, h control.Histogram, labels ...string) prometheus.Metric {
	if len(h.Counts) != len(h.Bounds)+1 {
		return prometheus.NewInvalidMetric(d, fmt.Errorf("histogram with %d bounds and %d counts, want bounds+1", len(h.Bounds), len(h.Counts)))
	}
	buckets := make(map[float64]uint64, len(h.Bounds))
	var cum uint64
	for i, b := range h.Bounds {
		cum += h.Counts[i]
		buckets[b] = cum
	}
	m, err := prometheus.NewConstHistogram(d, h.Count(), h.Sum, buckets, labels...)
	if err != nil {
		return prometheus.NewInvalidMetric(d, err)
	}
	return m
}

// metric is prometheus.NewConstMetric that reports a bad label value (not UTF-8)
// to the scraper instead of panicking.
func metric(d *prometheus.Desc, typ prometheus.ValueType, v float64, labels ...string) prometheus.Metric {
	m, err := prometheus.NewConstMetric(d, typ, v, labels...)
	if err != nil {
		return prometheus.NewInvalidMetric(d, err)
	}
	return m
}
