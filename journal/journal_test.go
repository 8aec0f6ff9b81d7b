package journal

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestMemoryBoundedAndFiltered(t *testing.T) {
	t0 := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	tick := t0
	m := &Memory{Max: 3, Now: func() time.Time { tick = tick.Add(time.Second); return tick }}
	for i := range 5 {
		m.Record(Event{Kind: KindClaim, VM: fmt.Sprintf("vm%d", i%2), Epoch: uint64(i + 1)})
	}
	all, _ := m.Read("", 0)
	if len(all) != 3 || all[0].Epoch != 3 || all[2].Epoch != 5 {
		t.Fatalf("kept %+v, want epochs 3..5", all)
	}
	if !all[0].Time.Equal(t0.Add(3 * time.Second)) {
		t.Fatalf("time %v: not stamped by the journal's clock", all[0].Time)
	}
	vm0, _ := m.Read("vm0", 0)
	if len(vm0) != 2 || vm0[0].Epoch != 3 || vm0[1].Epoch != 5 {
		t.Fatalf("vm0's events %+v", vm0)
	}
	last, _ := m.Read("", 1)
	if len(last) != 1 || last[0].Epoch != 5 {
		t.Fatalf("limit 1: %+v", last)
	}
	// A read is a copy: recording more does not change it.
	m.Record(Event{Kind: KindPeerUp})
	if all[2].Epoch != 5 {
		t.Fatal("a read aliases the journal")
	}
}

// TestFileRotates: events survive a reopen, rotation keeps one older file, the total
// stays bounded, and reads come oldest first across the two files.
func TestFileRotates(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "events.jsonl")
	j, err := Open(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	const n = 60
	for i := range n {
		j.Record(Event{Kind: KindThrottleOn, VM: "web1", Epoch: uint64(i), Detail: "quota 0.50"})
	}
	if err := j.Err(); err != nil {
		t.Fatal(err)
	}
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{path, path + ".1"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > 1000 {
			t.Fatalf("%s is %d bytes, over the 1000 it rotates at", p, st.Size())
		}
	}
	j, err = Open(path, 1000)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	j.Record(Event{Kind: KindPeerDown, Peer: "b"})
	evs, err := j.Read("", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) < 5 || len(evs) >= n {
		t.Fatalf("%d events kept of %d written: rotation should keep some and drop the oldest", len(evs), n+1)
	}
	for i := 1; i < len(evs)-1; i++ {
		if evs[i].Epoch != evs[i-1].Epoch+1 {
			t.Fatalf("events out of order at %d: %d after %d", i, evs[i].Epoch, evs[i-1].Epoch)
		}
	}
	if last := evs[len(evs)-1]; last.Kind != KindPeerDown || last.Peer != "b" {
		t.Fatalf("newest event %+v, want the peer-down written after reopening", last)
	}
	if evs[len(evs)-2].Epoch != n-1 {
		t.Fatalf("event before it has epoch %d, want %d", evs[len(evs)-2].Epoch, n-1)
	}
	web, _ := j.Read("web1", 2)
	if len(web) != 2 || web[1].Epoch != n-1 {
		t.Fatalf("web1's newest two: %+v", web)
	}
}

// TestFileSkipsTornLine: a line cut short by a crash is skipped, the rest read, and
// the next event is not glued to it.
func TestFileSkipsTornLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.jsonl")
	if err := os.WriteFile(path, []byte(`{"kind":"claim","vm":"a","epoch":1}`+"\n"+`{"kind":"cla`), 0o600); err != nil {
		t.Fatal(err)
	}
	j, err := Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	j.Record(Event{Kind: KindClaim, VM: "a", Epoch: 2})
	evs, err := j.Read("", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 2 || evs[0].Epoch != 1 || evs[1].Epoch != 2 {
		t.Fatalf("read %+v, want epochs 1 and 2 (the torn line skipped)", evs)
	}
}

func TestFileClosedRecordsError(t *testing.T) {
	j, err := Open(filepath.Join(t.TempDir(), "e.jsonl"), 0)
	if err != nil {
		t.Fatal(err)
	}
	j.Close()
	j.Record(Event{Kind: KindClaim})
	if j.Err() == nil {
		t.Fatal("recording to a closed journal reported no error")
	}
}
