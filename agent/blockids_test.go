package agent

import (
	"slices"
	"testing"
)

func TestBlockIDsPending(t *testing.T) {
	b := newBlockIDs()
	extra := func(from uint64) []uint64 {
		var v []uint64
		for i := uint64(0); i < maxExtraBlockIDs; i++ {
			v = append(v, from+i)
		}
		return v
	}
	ids, ok := b.pendingAt(100)
	if !ok || !slices.Equal(ids, extra(0)) {
		t.Fatalf("no completions: %v %v", ids[:3], ok)
	}
	// 0, 1 complete in order; 3 completes before 2 (out of order); 4 completes later.
	b.completed(0, 100)
	b.completed(1, 200)
	b.completed(3, 300)
	b.completed(2, 400)
	b.completed(4, 500)
	cases := []struct {
		cut  int64
		want []uint64
	}{
		{250, extra(2)},                         // 0 and 1 done; 2 may be in flight
		{350, append([]uint64{2}, extra(4)...)}, // 3 done, 2 not yet: complete 2, then 4...
		{450, extra(4)},
		{600, extra(5)},
	}
	for _, c := range cases {
		got, ok := b.pendingAt(c.cut)
		if !ok || !slices.Equal(got, c.want) {
			t.Errorf("cut %d: got %v (ok %v), want %v", c.cut, got[:min(len(got), 4)], ok, c.want[:4])
		}
	}
	// Many more completions: the old ones fold into the floor, memory stays bounded,
	// and a cut before folded completions can no longer be answered.
	for id := uint64(5); id < 5000; id++ {
		b.completed(id, 1000+int64(id))
	}
	if len(b.seen) > keptBlockIDs || b.floor == 0 {
		t.Errorf("floor %d, %d ids kept", b.floor, len(b.seen))
	}
	if _, ok := b.pendingAt(150); ok {
		t.Error("a cut before folded completions answered")
	}
	if got, ok := b.pendingAt(1000 + 5000); !ok || !slices.Equal(got, extra(5000)) {
		t.Errorf("cut at the end: %v %v", got[:min(len(got), 4)], ok)
	}
}
