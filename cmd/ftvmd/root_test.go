package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ftvmd/ftvmd/control"
	"github.com/ftvmd/ftvmd/logspace"
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

// TestLogSpaceStatus: status shows what the logs take on disk against the limit,
// what the rr log keeps, and an alarm or a file system that cannot free.
func TestLogSpaceStatus(t *testing.T) {
	v := control.VMStatus{Name: "web1", Role: "primary", StartedAt: time.Now(), LogDiskBytes: 12 << 20, LogFileBytes: 3 << 30,
		LogFreed: 3<<30 - 10<<20, LogDiskLimit: 1 << 30, LogFSFree: 50 << 30, LogKeeps: "until the backup acknowledges it"}
	var b bytes.Buffer
	printStatus(&b, control.Response{Host: "a", VMs: []control.VMStatus{v}})
	for _, want := range []string{"log disk", "12.00 MiB on disk of 1.00 GiB limit (files 3.00 GiB, rr log freed 2.99 GiB; fs free 50.00 GiB)",
		"log keeps", "until the backup acknowledges it"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
	if strings.Contains(b.String(), "alarm") || strings.Contains(b.String(), "NOT POSSIBLE") {
		t.Errorf("alarm without cause:\n%s", b.String())
	}
	v.LogDiskAlarm, v.LogFreeError = "AT LIMIT: logs take 1GiB", "cannot punch holes on nfs"
	b.Reset()
	printStatus(&b, control.Response{Host: "a", VMs: []control.VMStatus{v}})
	for _, want := range []string{"log disk alarm", "AT LIMIT: logs take 1GiB", "log freeing", "NOT POSSIBLE: cannot punch holes on nfs"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status lacks %q:\n%s", want, b.String())
		}
	}
}

// TestCheckWhole: log inspect and log events refuse a log whose prefix was freed.
func TestCheckWhole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log.rr")
	if err := os.WriteFile(path, bytes.Repeat([]byte{1}, 20000), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkWhole(path); err != nil {
		t.Fatalf("whole log: %v", err)
	}
	fr, err := logspace.NewFreer(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fr.Close()
	if _, err := fr.FreeTo(8192); err != nil {
		t.Skipf("cannot punch holes here: %v", err)
	}
	if err := checkWhole(path); err == nil || !strings.Contains(err.Error(), "first 8.0 KiB were freed") {
		t.Fatalf("freed log: %v", err)
	}
}

// TestPrintStatusQEMU: `ftvmd status` says loudly that a VM's QEMU does not answer,
// since when and the last good probe, and says it answers once it does.
func TestPrintStatusQEMU(t *testing.T) {
	since := time.Date(2026, 11, 30, 20, 25, 24, 0, time.Local)
	for _, tc := range []struct {
		name  string
		vm    control.VMStatus
		want  []string
		never []string
	}{
		{"unresponsive", control.VMStatus{QEMUUnresponsive: true, QEMUUnresponsiveSec: 42.26, QEMUSince: since,
			QEMULastAnswer: since.Add(-time.Second), QEMUUnresponsives: 1},
			[]string{"NOT ANSWERING for 42.3 s (since 20:25:24; last good probe 20:25:23)", "wedged"}, nil},
		{"unresponsive-with-error", control.VMStatus{QEMUUnresponsive: true, QEMUSince: since, QEMUProbeError: "qmp query-status: EOF", QEMUUnresponsives: 1},
			[]string{"no probe answered yet", ": qmp query-status: EOF"}, nil},
		{"answers-again", control.VMStatus{QEMULastAnswer: since, QEMUUnresponsives: 2},
			[]string{"answering (unresponsive episodes so far: 2)"}, []string{"NOT ANSWERING"}},
		{"not-watched", control.VMStatus{}, nil, []string{"qemu  "}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.vm.Name, tc.vm.Role = "web1", "primary"
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
	b, err := json.Marshal(control.VMStatus{QEMUUnresponsive: true, QEMUSince: since})
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{`"qemu_unresponsive":true`, `"qemu_unresponsive_since"`} {
		if !strings.Contains(string(b), key) {
			t.Errorf("JSON %s lacks %s", b, key)
		}
	}
	if b, _ := json.Marshal(control.VMStatus{}); strings.Contains(string(b), "qemu_") {
		t.Errorf("JSON of a VM that answers names the probe: %s", b)
	}
}
