package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ftvmd/ftvmd/throttle"
)

func TestConfigPaceQueue(t *testing.T) {
	dir := t.TempDir()
	lib := filepath.Join(dir, "libftflush.so")
	if err := os.WriteFile(lib, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig("a", dir)
	cfg.FlushLib = lib
	// Off by default until it has run in the whole end-to-end suite.
	if cfg.PaceQueueBytes != 0 {
		t.Fatalf("default pacing queue %d, want 0 (off)", cfg.PaceQueueBytes)
	}
	for _, tc := range []struct {
		bytes int
		want  string // "" = valid
	}{
		{throttle.DefaultPaceQueue, ""},
		{0, ""}, // pacing off
		{-1, "pacing queue of -1 bytes"},
		{1500, "holds no largest frame"},
	} {
		c := cfg
		c.PaceQueueBytes = tc.bytes
		err := c.Validate()
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("queue %d: %v", tc.bytes, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("queue %d: error %v, want one saying %q", tc.bytes, err, tc.want)
		}
	}
}
