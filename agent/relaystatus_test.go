package agent

import (
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/netbuf"
	"github.com/ftvmd/ftvmd/outputrule"
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
