package agent

import "testing"

func TestCutPoints(t *testing.T) {
	var c cutPoints
	if _, ok := c.icountAt(12); ok || c.last() != 0 {
		t.Fatal("empty ring knows a point")
	}
	for i := int64(0); i < 100; i++ {
		c.add(100+i*10, uint64(i*1000))
	}
	if c.last() != 100+99*10 {
		t.Fatalf("last %d, want the newest point", c.last())
	}
	if v, ok := c.icountAt(100 + 99*10); !ok || v != 99000 {
		t.Fatalf("newest point: %d %v", v, ok)
	}
	if v, ok := c.icountAt(100 + 40*10); !ok || v != 40000 {
		t.Fatalf("point within the ring: %d %v", v, ok)
	}
	if _, ok := c.icountAt(100 + 10*10); ok {
		t.Fatal("a point older than the ring is still known")
	}
	if _, ok := c.icountAt(105); ok {
		t.Fatal("an offset that was never a cut point is known")
	}
}
