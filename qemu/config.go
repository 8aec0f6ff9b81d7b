package qemu

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// Mode is QEMU's record/replay mode.
type Mode string

// Modes.
const (
	ModeRecord Mode = "record"
	ModeReplay Mode = "replay"
	// ModeNone runs with the fixed icount shift but without rr.
	ModeNone Mode = "none"
)

// DefaultBinary is the QEMU used when Config.Binary is empty.
const DefaultBinary = "qemu-system-x86_64"

// DefaultFlushInterval is the flush library's period when Config.FlushInterval is 0.
const DefaultFlushInterval = time.Millisecond

// MaxIcountShift is the largest accepted -icount shift.
const MaxIcountShift = 10

// MinMemoryMB is the smallest accepted guest memory.
const MinMemoryMB = 64

// ErrQEMUNotFound is returned by Validate when the QEMU binary is not found.
var ErrQEMUNotFound = errors.New("qemu binary not found")

// ErrInvalidConfig wraps every other Validate failure.
var ErrInvalidConfig = errors.New("invalid qemu config")

// NIC is the guest's one network card. Either SocketPath and LocalPath (a
// unix datagram pair: QEMU sends guest frames to SocketPath, the agent sends
// frames to LocalPath) or TapName is set.
type NIC struct {
	MAC string
	// SocketPath is the agent's unix datagram socket QEMU sends guest frames to.
	SocketPath string
	// LocalPath is QEMU's own unix datagram socket the agent sends frames to.
	LocalPath string
	// TapName is the alternative: a plain tap device (script=no).
	TapName string
	// TxDump, when set, is a file (a FIFO: nicdump.Create) that gets a pcap of
	// every frame the guest transmits, captured before any other filter of the
	// netdev sees it (filter-dump on the netdev's receive queue, after
	// filter-replay, so that it comes first on that queue): on a replay, whose
	// filter-replay swallows them, the only way to see them. The divergence
	// sentinel compares the primary's with its replay's.
	TxDump string
}

// Disk is a guest disk: a qcow2 image wired through blkreplay.
type Disk struct {
	Path string
	// NoFlush completes the guest's flushes without passing them to the host
	// (cache.no-flush=on): for a scratch image nobody reads after QEMU exits,
	// such as a check's replay overlay. A host flush there buys nothing and can
	// take tens of seconds on a loaded disk, while a replay waits for it: the
	// log says the guest's flush completed, so the replay stops until its own
	// does. Never for an image that must survive a host crash.
	NoFlush bool `json:",omitempty"`
}

// Config describes one QEMU process.
type Config struct {
	Name     string
	Binary   string // default DefaultBinary
	QEMUImg  string // default "qemu-img", used to create SnapshotDrive
	MemoryMB int
	Kernel   string
	Initrd   string
	Append   string

	Mode        Mode
	RRFile      string
	IcountShift int // fixed, never auto
	RRSnapshot  string
	// SnapshotDrive is a small qcow2 (created when missing) that is not
	// attached to the guest; savevm/loadvm/rrsnapshot need a qcow2 drive.
	SnapshotDrive string

	Disks []Disk
	NIC   *NIC
	// QMPSocket is the unix socket path QEMU listens on for QMP.
	QMPSocket string
	// ConsoleLog receives the serial console through the legacy -serial
	// file: form, the only form rr logs CHAR_WRITE events for.
	ConsoleLog string

	// LogStream says the QEMU writes its rr log as a stream itself
	// (Engine.LogStream): the flush library is then neither needed nor
	// preloaded.
	LogStream bool
	// FlushLib is the path to libftflush.so, required in record mode unless
	// LogStream: a stock QEMU keeps the log in a 4 KiB stdio buffer that
	// it never flushes.
	FlushLib      string
	FlushInterval time.Duration

	LoadVM    string
	ExtraArgs []string
	// Dir is the working directory of the process; its output goes to
	// Dir/<Name>.log unless WithStdout/WithStderr are given.
	Dir string

	StartPaused bool
}

func (c Config) binary() string {
	if c.Binary == "" {
		return DefaultBinary
	}
	return c.Binary
}

func (c Config) qemuImg() string {
	if c.QEMUImg == "" {
		return "qemu-img"
	}
	return c.QEMUImg
}

func (c Config) flushInterval() time.Duration {
	if c.FlushInterval <= 0 {
		return DefaultFlushInterval
	}
	return c.FlushInterval
}

// needsSnapshotDrive reports whether the run saves or loads a snapshot and
// therefore needs a qcow2 drive.
func (c Config) needsSnapshotDrive() bool {
	return c.RRSnapshot != "" || c.LoadVM != ""
}

// Validate checks the config and the files it names. It reports every
// problem at once (errors.Join); ErrQEMUNotFound and ErrInvalidConfig can be
// tested with errors.Is.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) {
		errs = append(errs, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, a...)...))
	}
	if _, err := exec.LookPath(c.binary()); err != nil {
		errs = append(errs, fmt.Errorf("%w: %q (install Debian package qemu-system-x86 or set Config.Binary)", ErrQEMUNotFound, c.binary()))
	}
	if c.MemoryMB < MinMemoryMB {
		bad("memory %d MB is below the minimum of %d MB", c.MemoryMB, MinMemoryMB)
	}
	if c.IcountShift < 0 || c.IcountShift > MaxIcountShift {
		bad("icount shift %d outside 0..%d", c.IcountShift, MaxIcountShift)
	}
	for _, f := range []struct{ what, path string }{{"kernel", c.Kernel}, {"initrd", c.Initrd}} {
		if f.path == "" {
			continue
		}
		if err := regularFile(f.path); err != nil {
			bad("%s: %v", f.what, err)
		}
	}
	if c.Initrd != "" && c.Kernel == "" {
		bad("initrd %q given without a kernel", c.Initrd)
	}
	if c.Append != "" && c.Kernel == "" {
		bad("kernel command line given without a kernel")
	}
	switch c.Mode {
	case ModeRecord, ModeReplay:
		if c.RRFile == "" {
			bad("mode %s needs RRFile", c.Mode)
		}
	case ModeNone:
		if c.RRFile != "" || c.RRSnapshot != "" {
			bad("RRFile/RRSnapshot given in mode none")
		}
	default:
		bad("mode %q is not one of record, replay, none", c.Mode)
	}
	if c.Mode == ModeRecord && !c.LogStream {
		if c.FlushLib == "" {
			bad("record mode needs FlushLib (libftflush.so): without it the rr log is up to 4 KiB stale")
		} else if err := regularFile(c.FlushLib); err != nil {
			bad("flush library: %v", err)
		}
	}
	if c.Mode == ModeReplay {
		if err := existing(c.RRFile); err != nil {
			bad("replay log: %v", err)
		}
	}
	if c.needsSnapshotDrive() && c.SnapshotDrive == "" {
		bad("RRSnapshot %q / LoadVM %q need a SnapshotDrive (savevm/loadvm need a qcow2 drive)", c.RRSnapshot, c.LoadVM)
	}
	if c.QMPSocket == "" {
		bad("QMPSocket is required")
	}
	for i, d := range c.Disks {
		if err := regularFile(d.Path); err != nil {
			bad("disk %d: %v", i, err)
		}
	}
	if n := c.NIC; n != nil {
		if hw, err := net.ParseMAC(n.MAC); err != nil || len(hw) != 6 {
			bad("NIC MAC %q is not a 6-byte MAC address", n.MAC)
		} else if hw[0]&1 == 1 {
			bad("NIC MAC %q is a multicast address", n.MAC)
		}
		dgram := n.SocketPath != "" || n.LocalPath != ""
		switch {
		case dgram && n.TapName != "":
			bad("NIC: set either SocketPath/LocalPath or TapName, not both")
		case dgram && (n.SocketPath == "" || n.LocalPath == ""):
			bad("NIC: a datagram NIC needs both SocketPath and LocalPath")
		case !dgram && n.TapName == "":
			bad("NIC: needs SocketPath/LocalPath or TapName")
		}
	}
	return errors.Join(errs...)
}

func regularFile(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	return nil
}

func existing(path string) error {
	_, err := os.Stat(path)
	return err
}

// Args returns QEMU's argument list (without the binary).
func (c Config) Args() []string {
	var a []string
	for _, app := range []func(Config) []string{
		appendName, appendMachine, appendIcount, appendConsole, appendKernel,
		appendNIC, appendSnapshotDrive, appendDisks, appendQMP, appendLoadVM, appendPaused,
	} {
		a = append(a, app(c)...)
	}
	return append(a, c.ExtraArgs...)
}

// Env returns the environment entries the process needs on top of the
// caller's: the flush library in record mode, unless the QEMU writes its log
// as a stream itself (LogStream).
func (c Config) Env() []string {
	if c.Mode != ModeRecord || c.FlushLib == "" || c.LogStream {
		return nil
	}
	return []string{
		"LD_PRELOAD=" + c.FlushLib,
		"FTVMD_RRFILE=" + c.RRFile, // the exact string QEMU passes to fopen
		"FTVMD_FLUSH_US=" + strconv.FormatInt(c.flushInterval().Microseconds(), 10),
	}
}

// optValue escapes a value for QEMU's key=value,... option syntax.
func optValue(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// blockFile makes a path safe as a block-layer file name: QEMU reads a name with a
// colon before its first slash ("nbd:host:port", "json:{...}") as a protocol, not
// a file (block.c path_has_protocol); "./" in front keeps it the file it names.
func blockFile(path string) string {
	if i := strings.IndexAny(path, ":/\\"); i >= 0 && path[i] == ':' {
		return "./" + path
	}
	return path
}

// impliedValue escapes the first value of an option whose key QEMU implies (-name's
// guest, a unix: chardev's path): a value with "=" in it would be read as
// "key=value" and set another option, so such a value gets its key written out.
// Others are left as they are, so the command lines of earlier recordings stay
// the same (rr check compares them).
func impliedValue(key, s string) string {
	if strings.Contains(s, "=") {
		return key + "=" + optValue(s)
	}
	return optValue(s)
}

func appendName(c Config) []string {
	if c.Name == "" {
		return nil
	}
	return []string{"-name", impliedValue("guest", c.Name)}
}

func appendMachine(c Config) []string {
	// -rtc clock=vm puts the RTC's timers on the virtual clock. With the default host
	// clock, every main-loop pass logs a host-clock checkpoint and two host-clock
	// reads, which the replay's main loop must consume in step with its vCPU: measured
	// offline on a busy guest, the replay kept up at ~0.73x the record's speed with
	// it, and ~0.9x without; boot replayed in a fraction of the time. The guest's
	// clock already follows instructions under icount, so the RTC now agrees with it.
	return []string{"-M", "pc", "-accel", "tcg", "-cpu", "qemu64", "-smp", "1",
		"-m", strconv.Itoa(c.MemoryMB), "-rtc", "clock=vm",
		"-nographic", "-nodefaults", "-no-user-config"}
}

func appendIcount(c Config) []string {
	v := "shift=" + strconv.Itoa(c.IcountShift)
	if c.Mode == ModeRecord || c.Mode == ModeReplay {
		v += ",rr=" + string(c.Mode) + ",rrfile=" + optValue(c.RRFile)
		if c.RRSnapshot != "" {
			v += ",rrsnapshot=" + optValue(c.RRSnapshot)
		}
	}
	return []string{"-icount", v}
}

func appendConsole(c Config) []string {
	if c.ConsoleLog == "" {
		return nil
	}
	// Legacy -serial form: only chardevs made by qemu_chr_new get rr events.
	return []string{"-serial", "file:" + c.ConsoleLog}
}

func appendKernel(c Config) []string {
	var a []string
	if c.Kernel != "" {
		a = append(a, "-kernel", c.Kernel)
	}
	if c.Initrd != "" {
		a = append(a, "-initrd", c.Initrd)
	}
	if c.Append != "" {
		a = append(a, "-append", c.Append)
	}
	return a
}

func appendNIC(c Config) []string {
	n := c.NIC
	if n == nil {
		return nil
	}
	var netdev string
	if n.TapName != "" {
		netdev = "tap,id=n0,ifname=" + optValue(n.TapName) + ",script=no,downscript=no"
	} else {
		netdev = "dgram,id=n0,local.type=unix,local.path=" + optValue(n.LocalPath) +
			",remote.type=unix,remote.path=" + optValue(n.SocketPath)
	}
	// tx=timer: the default tx=bh flushes at an unlogged moment and hangs replay.
	a := []string{"-netdev", netdev,
		"-device", "virtio-net-pci,netdev=n0,mac=" + optValue(n.MAC) + ",tx=timer",
		"-object", "filter-replay,id=r0,netdev=n0"}
	if n.TxDump != "" {
		// A guest frame meets the netdev's receive-queue filters last added
		// first; the dump writes no log event and reads only the virtual clock,
		// so record and replay stay the same. maxlen: QEMU's largest net buffer.
		a = append(a, "-object", "filter-dump,id=d0,netdev=n0,queue=rx,maxlen=69632,file="+optValue(n.TxDump))
	}
	return a
}

func appendDisks(c Config) []string {
	var a []string
	for i, d := range c.Disks {
		img := "img" + strconv.Itoa(i)
		blk := "blk" + strconv.Itoa(i)
		drive := "file=" + optValue(blockFile(d.Path)) + ",if=none,id=" + img + ",format=qcow2" + qcow2NoTimer
		if d.NoFlush {
			drive += ",cache.no-flush=on"
		}
		a = append(a,
			"-drive", drive,
			"-drive", "driver=blkreplay,if=none,image="+img+",id="+blk,
			"-device", "virtio-blk-pci,drive="+blk)
	}
	return a
}

func appendSnapshotDrive(c Config) []string {
	if c.SnapshotDrive == "" {
		return nil
	}
	// Not attached to the guest: it only holds savevm snapshots. It comes
	// before the guest's disks: savevm and loadvm keep the VM state in the
	// first drive that can hold one, and a snapshot's VM state must be in a
	// file the guest never writes, so that it can be copied while the VM runs
	// (protecting a running VM).
	return []string{"-drive", "file=" + optValue(blockFile(c.SnapshotDrive)) + ",if=none,id=snap0,format=qcow2" + qcow2NoTimer}
}

// qcow2NoTimer turns off the qcow2 driver's cache-clean timer (every 600 s by
// default), which runs on QEMU_CLOCK_VIRTUAL in the main AioContext. Under icount
// that one far-off timer is enough for every virtual-clock notification (each pass
// of the vCPU loop with a timer due) to wake the main loop's context, which then
// takes the replay mutex between two passes of the vCPU: measured with
// test/bench/rr-offline.sh on a CPU-bound guest, an idle snapshot drive took a
// recording from 1.5 k to 33 k context switches per second (CPU 16.6 -> 20.6 s) and
// its replay from 0.3 k to 49 k (16.4 -> 18.4 s); with the timer off, 1.5 k and
// 0.2 k (17.1 s, 15.4 s). The timer only frees unused cache entries; the guest never
// sees it, and the log does not change.
const qcow2NoTimer = ",cache-clean-interval=0"

func appendQMP(c Config) []string {
	if c.QMPSocket == "" {
		return nil
	}
	return []string{"-qmp", "unix:" + impliedValue("path", c.QMPSocket) + ",server=on,wait=off"}
}

func appendLoadVM(c Config) []string {
	if c.LoadVM == "" {
		return nil
	}
	return []string{"-loadvm", c.LoadVM}
}

func appendPaused(c Config) []string {
	if !c.StartPaused {
		return nil
	}
	return []string{"-S"}
}
