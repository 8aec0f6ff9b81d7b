package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
)

// TestPrintStatusStall: `ftvmd status` says loudly that a backup's replay stalled,
// on the primary (from the backup's report) and on the backup, and says nothing
// about stalls when the backup does not report them.
func TestPrintStatusStall(t *testing.T) {
	stalled := control.VMStatus{
		Name: "web1", StartedAt: time.Now(), ReplayStallReported: true, ReplayStalled: true,
		ReplayStalledSec: 12.34, ReplayStalledAtIcount: 4242, ReplayStalledLogBeyond: 5 << 20, ReplayStalls: 2,
	}
	const stallLine = "REPLAY STALLED for 12.3 s at icount 4242 (log held beyond it: 5.00 MiB; stalls so far: 2)"
	for _, tc := range []struct {
		name  string
		vm    control.VMStatus
		role  string
		want  []string
		never []string
	}{
		{"primary-stalled", stalled, "primary", []string{"backup replay", stallLine}, nil},
		{"backup-stalled", stalled, "backup", []string{"replay", stallLine}, nil},
		{"primary-fine", control.VMStatus{ReplayStallReported: true, ReplayStalls: 1}, "primary", []string{"backup replay", "no stall (stalls so far: 1)"}, []string{"STALLED"}},
		{"backup-fine", control.VMStatus{ReplayStallReported: true}, "backup", []string{"no stall (stalls so far: 0)"}, []string{"STALLED"}},
		// An older backup's acks say nothing: no line rather than a false "no stall".
		{"primary-not-reported", control.VMStatus{}, "primary", nil, []string{"backup replay", "stall"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.vm.Role = tc.role
			var b bytes.Buffer
			printStatus(&b, control.Response{Host: "a", VMs: []control.VMStatus{tc.vm}})
			out := b.String()
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("status lacks %q:\n%s", w, out)
				}
			}
			for _, n := range tc.never {
				if strings.Contains(out, n) {
					t.Errorf("status shows %q:\n%s", n, out)
				}
			}
		})
	}
}

// TestStatusStallJSON: the JSON names scripts read.
func TestStatusStallJSON(t *testing.T) {
	b, err := json.Marshal(control.VMStatus{ReplayStallReported: true, ReplayStalled: true, ReplayStalledSec: 4.5,
		ReplayStalledAtIcount: 7, ReplayStalledLogBeyond: 9, ReplayStalls: 1})
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"replay_stall_reported": true, "replay_stalled": true, "replay_stalled_sec": 4.5,
		"replay_stalled_at_icount": 7.0, "replay_stalled_log_beyond": 9.0, "replay_stalls": 1.0,
	} {
		if m[k] != want {
			t.Errorf("%s = %v, want %v (JSON %s)", k, m[k], want, b)
		}
	}
}
