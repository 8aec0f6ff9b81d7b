package qemu

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// EngineDir is where qemu/engine/build.sh installs ftvmd's own QEMU build
// (a symlink to the build of the current source version and patches).
const EngineDir = "/opt/ftvmd/qemu/current"

// Engine is the QEMU a host runs VMs on and what it offers.
type Engine struct {
	// Binary is the qemu-system-x86_64 to run.
	Binary string
	// Name says which engine it is, e.g. "ftvmd-qemu 7.2+dfsg+ftvmd.6dc610661a1154c9"
	// or "distribution QEMU 7.2.22". Record and replay must run the same engine.
	Name string
	// Patched is true for ftvmd's own build (an ENGINE file beside it).
	Patched bool
	// Patches lists the patch files of ftvmd's build.
	Patches []string
	// LogStream is true when the build writes the rr log as a stream (patch
	// "replay: write the log as a stream and stop on a failed write"): the
	// header at start, the log flushed before every frame the guest transmits
	// and at least every 1 ms, and a failed write stops the VM (run state
	// io-error, QMP event REPLAY_WRITE_ERROR) and drops the guest's frames.
	// Such a QEMU needs no flush library (Config.LogStream).
	LogStream bool
	// InPlaceGoLive is true when a replaying QEMU of this build can carry on
	// as the live VM itself (patch "replay: go live in place"): QMP
	// x-replay-go-live switches it from replay to record into a new log once
	// it has consumed its log up to an end-of-log event, with no snapshot and
	// no new QEMU (GoLiveConfig.InPlace). The build also writes its log as a
	// stream (LogStream), which the new log relies on.
	InPlaceGoLive bool
}

// logStreamPatch is in the file name of the patch that gives LogStream
// (git format-patch names it after the subject; the number may change).
const logStreamPatch = "replay-write-the-log-as-a-stream"

// inPlaceGoLivePatch is in the file name of the patch that gives InPlaceGoLive.
const inPlaceGoLivePatch = "replay-go-live-in-place"

// Warning is what an operator should know about the engine, "" if nothing:
// the distribution's QEMU records guest transmit bursts in a way its replay
// cannot follow (net/dgram defers a frame at a moment the log does not hold).
func (e Engine) Warning() string {
	if e.Patched {
		return ""
	}
	return "not ftvmd's QEMU build: under guest transmit load its replay can diverge and stall " +
		"(frames deferred by -netdev dgram are not in the log); build it with: bash qemu/engine/build.sh"
}

// DetectEngine finds the QEMU to use and identifies it. An explicit binary
// (a path or a name on PATH) wins; otherwise ftvmd's build in EngineDir, then
// qemu-system-x86_64 on PATH.
func DetectEngine(ctx context.Context, binary string) (Engine, error) {
	return detectEngine(ctx, binary, EngineDir)
}

func detectEngine(ctx context.Context, binary, engineDir string) (Engine, error) {
	if binary == "" {
		own := filepath.Join(engineDir, "bin", DefaultBinary)
		if st, err := os.Stat(own); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			binary = own
		} else {
			binary = DefaultBinary
		}
	}
	path, err := exec.LookPath(binary)
	if err != nil {
		return Engine{}, fmt.Errorf("%w: %q (install Debian package qemu-system-x86, build ftvmd's QEMU with qemu/engine/build.sh, or pass --qemu)", ErrQEMUNotFound, binary)
	}
	e := Engine{Binary: path}
	// ftvmd's build: <prefix>/bin/qemu-system-x86_64 with <prefix>/ENGINE.
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		real = path
	}
	if b, err := os.ReadFile(filepath.Join(filepath.Dir(filepath.Dir(real)), "ENGINE")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), "=")
			if !ok {
				continue
			}
			switch k {
			case "engine":
				e.Name = v
			case "patch":
				e.Patches = append(e.Patches, v)
				if strings.Contains(v, logStreamPatch) {
					e.LogStream = true
				}
				if strings.Contains(v, inPlaceGoLivePatch) {
					e.InPlaceGoLive = true
				}
			}
		}
		if e.Name != "" {
			e.Patched = true
			// Going live in place records the new log with the stream writer.
			e.InPlaceGoLive = e.InPlaceGoLive && e.LogStream
			// Run the build that was identified, not whatever the current link
			// points at later: a rebuild must not change an agent's engine under
			// it (the name, the features and the binary would disagree, and a
			// primary and backup started on either side of it would differ).
			e.Binary = real
			return e, nil
		}
	}
	vctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(vctx, path, "--version").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return Engine{}, fmt.Errorf("%s --version: %w: %s", path, err, bytes.TrimSpace(ee.Stderr))
		}
		return Engine{}, fmt.Errorf("%s --version: %w", path, err)
	}
	e.Name = "distribution QEMU " + parseVersion(string(out))
	return e, nil
}

// parseVersion takes "QEMU emulator version 7.2.22 (Debian ...)" to "7.2.22".
func parseVersion(out string) string {
	line, _, _ := strings.Cut(out, "\n")
	f := strings.Fields(line)
	for i, w := range f {
		if w == "version" && i+1 < len(f) {
			return f[i+1]
		}
	}
	return strings.TrimSpace(line)
}
