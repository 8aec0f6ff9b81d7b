package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ftvmd/ftvmd/qemu"
)

func TestCheckFlushLib(t *testing.T) {
	lib := filepath.Join(t.TempDir(), "libftflush.so")
	if err := os.WriteFile(lib, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	stock := qemu.Engine{Name: "distribution QEMU 7.2.22"}
	stream := qemu.Engine{Name: "ftvmd-qemu 7.2+dfsg+ftvmd.x", Patched: true, LogStream: true}
	for _, tc := range []struct {
		name string
		eng  qemu.Engine
		lib  string
		want string // "" = no error
	}{
		{"stock with library", stock, lib, ""},
		{"stock without library", stock, "", "flush library path is required with distribution QEMU 7.2.22"},
		{"stock with a missing library", stock, lib + ".gone", "no such file"},
		{"stream engine needs none", stream, "", ""},
		{"stream engine ignores a missing one", stream, lib + ".gone", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkFlushLib(tc.eng, tc.lib)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("err = %v, want none", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
		})
	}
}
