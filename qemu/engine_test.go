package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// writeExe writes an executable shell script at path.
func writeExe(t *testing.T, path, script string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestDetectEnginePrefersOwnBuild(t *testing.T) {
	dir := t.TempDir()
	build := filepath.Join(dir, "qemu", "abc123")
	writeExe(t, filepath.Join(build, "bin", DefaultBinary), "exit 1")
	engine := "engine=ftvmd-qemu 7.2+dfsg+ftvmd.abc123\nsource=1:7.2+dfsg-7\npatch=0001-a.patch\npatch=0002-b.patch\n"
	if err := os.WriteFile(filepath.Join(build, "ENGINE"), []byte(engine), 0o644); err != nil {
		t.Fatal(err)
	}
	current := filepath.Join(dir, "qemu", "current")
	if err := os.Symlink("abc123", current); err != nil {
		t.Fatal(err)
	}
	e, err := detectEngine(context.Background(), "", current)
	if err != nil {
		t.Fatal(err)
	}
	if !e.Patched || e.Name != "ftvmd-qemu 7.2+dfsg+ftvmd.abc123" || len(e.Patches) != 2 || e.Warning() != "" {
		t.Fatalf("engine = %+v", e)
	}
	// The build itself, not the link: a rebuild that moves the link does not change
	// the engine of an agent that already identified it.
	if e.Binary != filepath.Join(build, "bin", DefaultBinary) {
		t.Fatalf("binary = %s, want the resolved build", e.Binary)
	}
	if e.LogStream {
		t.Fatalf("LogStream without the stream patch: %+v", e)
	}
}

func TestDetectEngineLogStream(t *testing.T) {
	dir := t.TempDir()
	build := filepath.Join(dir, "b")
	writeExe(t, filepath.Join(build, "bin", DefaultBinary), "exit 1")
	engine := "engine=ftvmd-qemu 7.2+dfsg+ftvmd.def\npatch=0001-a.patch\npatch=0002-b.patch\n" +
		"patch=0003-replay-write-the-log-as-a-stream-and-stop-on-a-f.patch\n"
	if err := os.WriteFile(filepath.Join(build, "ENGINE"), []byte(engine), 0o644); err != nil {
		t.Fatal(err)
	}
	e, err := detectEngine(context.Background(), filepath.Join(build, "bin", DefaultBinary), filepath.Join(dir, "none"))
	if err != nil {
		t.Fatal(err)
	}
	if !e.Patched || !e.LogStream || len(e.Patches) != 3 {
		t.Fatalf("engine = %+v, want ftvmd's build with LogStream", e)
	}
	if e.InPlaceGoLive {
		t.Fatalf("InPlaceGoLive without the go-live patch: %+v", e)
	}
}

func TestDetectEngineInPlaceGoLive(t *testing.T) {
	const stream = "patch=0003-replay-write-the-log-as-a-stream-and-stop-on-a-f.patch\n"
	const golive = "patch=0004-replay-go-live-in-place-recording-into-a-new-log.patch\n"
	for _, tc := range []struct {
		name, patches string
		want          bool
	}{
		{"both", stream + golive, true},
		// The new log is written by the stream writer: without it, no in-place go-live.
		{"go-live alone", golive, false},
		{"stream alone", stream, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			build := filepath.Join(dir, "b")
			writeExe(t, filepath.Join(build, "bin", DefaultBinary), "exit 1")
			engine := "engine=ftvmd-qemu 7.2+dfsg+ftvmd.def\npatch=0001-a.patch\n" + tc.patches
			if err := os.WriteFile(filepath.Join(build, "ENGINE"), []byte(engine), 0o644); err != nil {
				t.Fatal(err)
			}
			e, err := detectEngine(context.Background(), filepath.Join(build, "bin", DefaultBinary), filepath.Join(dir, "none"))
			if err != nil {
				t.Fatal(err)
			}
			if e.InPlaceGoLive != tc.want {
				t.Fatalf("InPlaceGoLive = %v, want %v: %+v", e.InPlaceGoLive, tc.want, e)
			}
		})
	}
}

func TestDetectEngineDistribution(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin", "fake-qemu")
	writeExe(t, bin, `echo "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18)"; echo "Copyright"`)
	e, err := detectEngine(context.Background(), bin, filepath.Join(dir, "none"))
	if err != nil {
		t.Fatal(err)
	}
	if e.Patched || e.Name != "distribution QEMU 7.2.22" {
		t.Fatalf("engine = %+v", e)
	}
	if !strings.Contains(e.Warning(), "qemu/engine/build.sh") {
		t.Fatalf("warning = %q", e.Warning())
	}
}

func TestDetectEngineMissing(t *testing.T) {
	_, err := detectEngine(context.Background(), filepath.Join(t.TempDir(), "no-such-qemu"), t.TempDir())
	if !errors.Is(err, ErrQEMUNotFound) {
		t.Fatalf("err = %v, want ErrQEMUNotFound", err)
	}
}

func TestDetectEngineBrokenBinary(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "qemu")
	writeExe(t, bin, "echo boom >&2; exit 3")
	_, err := detectEngine(context.Background(), bin, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("err = %v, want the binary's stderr", err)
	}
}
