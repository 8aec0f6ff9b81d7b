package rrcheck

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"

	"github.com/ftvmd/ftvmd/qemu"
)

// ReplayPaths are a replay's own files.
type ReplayPaths struct {
	// Log is the rr log to replay.
	Log string
	// Work is the directory for the QMP socket, console, network sink and QEMU's
	// output; unix socket paths under it must stay within 108 bytes.
	Work string
	// Overlays holds, per disk, the image the replay writes to: an overlay on the
	// disk's pre-record copy.
	Overlays []string
	// Tap is the tap device a tap NIC replays on.
	Tap string
	// Binary, if set, replaces the recording's QEMU.
	Binary string
}

// Names of a replay's files in its work directory.
const (
	ReplayConsole = "console.replay"
	ReplayQMP     = "qmp.sock"
	ReplayNetSink = "net-sink.sock"
	ReplayNetQEMU = "net-qemu.sock"
	ReplaySnap    = "snapshot.qcow2"
)

// ReplayConfig derives the replay of a recording made with rec. The machine,
// its boot files, the icount shift, the NIC's MAC and netdev type, the disks'
// wiring through blkreplay and any extra args stay as recorded; only the paths
// that name the recording's own files change, the flush library (record only)
// goes, the overlays skip host flushes, and -action shutdown=pause makes the replay stop, readable, at the
// SHUTDOWN the recorder logged when it exited.
func ReplayConfig(rec qemu.Config, p ReplayPaths) (qemu.Config, error) {
	var errs []error
	if rec.Mode != qemu.ModeRecord {
		errs = append(errs, fmt.Errorf("the config is in mode %q, not a recording", rec.Mode))
	}
	if rec.RRSnapshot != "" || rec.LoadVM != "" {
		errs = append(errs, errors.New("a recording that starts from a snapshot (rrsnapshot/loadvm) is not supported: record from boot and keep pre-record disk copies"))
	}
	if len(p.Overlays) != len(rec.Disks) {
		errs = append(errs, fmt.Errorf("%d replay disks for the recording's %d", len(p.Overlays), len(rec.Disks)))
	}
	if p.Log == "" || p.Work == "" {
		errs = append(errs, errors.New("replay log and work directory are required"))
	}
	if n := rec.NIC; n != nil && n.TapName != "" && p.Tap == "" {
		errs = append(errs, errors.New("the recording's NIC is a tap: the replay needs a tap device too"))
	}
	if len(errs) > 0 {
		return qemu.Config{}, fmt.Errorf("rrcheck: replay config: %w", errors.Join(errs...))
	}
	c := rec
	c.Mode = qemu.ModeReplay
	c.RRFile = p.Log
	c.FlushLib, c.FlushInterval = "", 0
	c.QMPSocket = filepath.Join(p.Work, ReplayQMP)
	if rec.ConsoleLog != "" {
		c.ConsoleLog = filepath.Join(p.Work, ReplayConsole)
	}
	c.Dir = p.Work
	c.StartPaused = false
	if rec.SnapshotDrive != "" {
		c.SnapshotDrive = filepath.Join(p.Work, ReplaySnap)
	}
	if p.Binary != "" {
		c.Binary = p.Binary
	}
	if n := rec.NIC; n != nil {
		nic := *n
		if nic.TapName != "" {
			nic.TapName = p.Tap
		} else {
			nic.SocketPath = filepath.Join(p.Work, ReplayNetSink)
			nic.LocalPath = filepath.Join(p.Work, ReplayNetQEMU)
		}
		c.NIC = &nic
	}
	c.Disks = make([]qemu.Disk, len(rec.Disks))
	for i := range rec.Disks {
		// The overlay is scratch: the guest's flushes complete without a host
		// flush, which the log cannot wait for and a loaded host may take tens
		// of seconds to finish (the replay would sit at that block completion).
		c.Disks[i] = qemu.Disk{Path: p.Overlays[i], NoFlush: true}
	}
	c.ExtraArgs = append(slices.Clone(rec.ExtraArgs), "-action", "shutdown=pause")
	return c, nil
}
