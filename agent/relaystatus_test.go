package agent

import (
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/netbuf"
	"github.com/ftvmd/ftvmd/outputrule"
	"github.com/ftvmd/ftvmd/throttle"
)

func TestFillRelayStatusDelayQuantiles(t *testing.T) {
	var st control.VMStatus
	fillRelayStatus(&st, netbuf.RelayStats{})
	if st.AddedDelayP50MS != 0 || st.AddedDelayP99MS != 0 || st.AddedDelayHist != nil {
		t.Fatalf("no frames: p50 %v p99 %v hist %v, want all empty", st.AddedDelayP50MS, st.AddedDelayP99MS, st.AddedDelayHist)
	}

	var rs netbuf.RelayStats
	for range 99 {
		rs.Rule.DelayHist.Add(40 * time.Microsecond) // bucket (25, 50] µs
	}
	rs.Rule.DelayHist.Add(900 * time.Microsecond) // bucket (800, 1600] µs
	rs.Rule.MaxDelay = 900 * time.Microsecond
	rs.Rule.ReleasedFrames = 100
	fillRelayStatus(&st, rs)
	if st.AddedDelayP50MS != 0.05 {
		t.Errorf("p50 = %v ms, want 0.05", st.AddedDelayP50MS)
	}
	if st.AddedDelayP99MS != 0.05 {
		t.Errorf("p99 = %v ms, want 0.05", st.AddedDelayP99MS)
	}
	h, err := outputrule.DelayHistFromCounts(st.AddedDelayHist)
	if err != nil || h != rs.Rule.DelayHist {
		t.Fatalf("exported histogram does not round-trip: %v", err)
	}

	// The p100 bucket bound (1.6 ms) is above the largest delay: capped at it.
	rs.Rule.DelayHist = outputrule.DelayHist{}
	rs.Rule.DelayHist.Add(900 * time.Microsecond)
	fillRelayStatus(&st, rs)
	if st.AddedDelayP99MS != 0.9 {
		t.Errorf("p99 = %v ms, want the 0.9 ms maximum", st.AddedDelayP99MS)
	}
}

// TestFillPacingStatus: the pacer's figures reach the status, and the relay's
// copy of them (RelayStats.Pacing) does not: status() takes pacing from the pacer
// alone.
func TestFillPacingStatus(t *testing.T) {
	var st control.VMStatus
	fillRelayStatus(&st, netbuf.RelayStats{Pacing: throttle.PacerStats{Active: true, Paced: 99, Drops: 7}})
	if st.PacingActive || st.PacedFrames != 0 || st.PaceDrops != 0 {
		t.Fatalf("fillRelayStatus filled pacing (%+v): the pacer is the one source", st)
	}
	fillPacingStatus(&st, throttle.PacerStats{
		Active: true, Rate: 1.5e6, QueueBytes: 3000, QueueFrames: 2, Paced: 40, Drops: 3,
		PacedFor: 2500 * time.Millisecond, Engaged: 2, EngagedLag: 130 * time.Millisecond, ApplyErrors: 4,
	})
	want := control.VMStatus{
		PacingActive: true, PaceRateBps: 1.5e6, PaceQueueBytes: 3000, PacedFrames: 40, PaceDrops: 3,
		PacedSec: 2.5, PaceEngaged: 2, PaceEngagedLagMS: 130, PaceErrors: 4,
	}
	if st.PacingActive != want.PacingActive || st.PaceRateBps != want.PaceRateBps || st.PaceQueueBytes != want.PaceQueueBytes ||
		st.PacedFrames != want.PacedFrames || st.PaceDrops != want.PaceDrops || st.PacedSec != want.PacedSec ||
		st.PaceEngaged != want.PaceEngaged || st.PaceEngagedLagMS != want.PaceEngagedLagMS || st.PaceErrors != want.PaceErrors {
		t.Fatalf("status %+v, want the pacer's figures", st)
	}
}
