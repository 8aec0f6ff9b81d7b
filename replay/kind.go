package replay

import "strconv"

// Kind is the one-byte event code that starts every event in the log
// (enum ReplayEvents in QEMU 7.2 replay/replay-internal.h).
type Kind uint8

// Event codes. Ranges that QEMU builds as base+sub-kind (async, shutdown,
// clock, checkpoint) are spelled out so that a switch can name each one.
const (
	KindInstruction Kind = 0
	KindInterrupt   Kind = 1
	KindException   Kind = 2

	// EVENT_ASYNC + ReplayAsyncEventKind.
	KindAsyncBH        Kind = 3
	KindAsyncBHOneshot Kind = 4
	KindAsyncInput     Kind = 5
	KindAsyncInputSync Kind = 6
	KindAsyncCharRead  Kind = 7
	KindAsyncBlock     Kind = 8
	KindAsyncNet       Kind = 9

	// EVENT_SHUTDOWN + ShutdownCause (qapi/run-state.json).
	KindShutdown               Kind = 10 // cause none
	KindShutdownHostError      Kind = 11
	KindShutdownHostQMPQuit    Kind = 12
	KindShutdownHostQMPReset   Kind = 13
	KindShutdownHostSignal     Kind = 14 // always written by replay_finish
	KindShutdownHostUI         Kind = 15
	KindShutdownGuestShutdown  Kind = 16
	KindShutdownGuestReset     Kind = 17
	KindShutdownGuestPanic     Kind = 18
	KindShutdownSubsystemReset Kind = 19
	KindShutdownSnapshotLoad   Kind = 20
	KindShutdownLast           Kind = 21 // EVENT_SHUTDOWN_LAST: reserved, never written, still readable

	KindCharWrite        Kind = 22
	KindCharReadAll      Kind = 23
	KindCharReadAllError Kind = 24
	KindAudioOut         Kind = 25
	KindAudioIn          Kind = 26
	KindRandom           Kind = 27

	// EVENT_CLOCK + ReplayClockKind.
	KindClockHost      Kind = 28
	KindClockVirtualRT Kind = 29

	// EVENT_CHECKPOINT + ReplayCheckpoint.
	KindCheckpoint                 Kind = 30 // CHECKPOINT_CLOCK_WARP_START
	KindCheckpointClockWarpStart   Kind = 30
	KindCheckpointClockWarpAccount Kind = 31
	KindCheckpointResetRequested   Kind = 32
	KindCheckpointSuspendRequested Kind = 33
	KindCheckpointClockVirtual     Kind = 34
	KindCheckpointClockHost        Kind = 35
	KindCheckpointClockVirtualRT   Kind = 36
	KindCheckpointInit             Kind = 37
	KindCheckpointReset            Kind = 38

	KindEnd Kind = 39

	// NumKinds is EVENT_COUNT: codes at or above it are invalid.
	NumKinds = 40
)

var kindNames = [NumKinds]string{
	"INSTRUCTION", "INTERRUPT", "EXCEPTION",
	"ASYNC_BH", "ASYNC_BH_ONESHOT", "ASYNC_INPUT", "ASYNC_INPUT_SYNC",
	"ASYNC_CHAR_READ", "ASYNC_BLOCK", "ASYNC_NET",
	"SHUTDOWN_NONE", "SHUTDOWN_HOST_ERROR", "SHUTDOWN_HOST_QMP_QUIT",
	"SHUTDOWN_HOST_QMP_SYSTEM_RESET", "SHUTDOWN_HOST_SIGNAL", "SHUTDOWN_HOST_UI",
	"SHUTDOWN_GUEST_SHUTDOWN", "SHUTDOWN_GUEST_RESET", "SHUTDOWN_GUEST_PANIC",
	"SHUTDOWN_SUBSYSTEM_RESET", "SHUTDOWN_SNAPSHOT_LOAD", "SHUTDOWN_LAST",
	"CHAR_WRITE", "CHAR_READ_ALL", "CHAR_READ_ALL_ERROR",
	"AUDIO_OUT", "AUDIO_IN", "RANDOM",
	"CLOCK_HOST", "CLOCK_VIRTUAL_RT",
	"CHECKPOINT_CLOCK_WARP_START", "CHECKPOINT_CLOCK_WARP_ACCOUNT",
	"CHECKPOINT_RESET_REQUESTED", "CHECKPOINT_SUSPEND_REQUESTED",
	"CHECKPOINT_CLOCK_VIRTUAL", "CHECKPOINT_CLOCK_HOST", "CHECKPOINT_CLOCK_VIRTUAL_RT",
	"CHECKPOINT_INIT", "CHECKPOINT_RESET",
	"END",
}

// String returns QEMU's name for the event without the EVENT_ prefix.
func (k Kind) String() string {
	if int(k) < NumKinds {
		return kindNames[k]
	}
	return "UNKNOWN(" + strconv.Itoa(int(k)) + ")"
}

// Valid reports whether QEMU 7.2 could have written k.
func (k Kind) Valid() bool { return int(k) < NumKinds }

// IsAsync reports whether k is one of the EVENT_ASYNC kinds (3..9).
func (k Kind) IsAsync() bool { return k >= KindAsyncBH && k <= KindAsyncNet }

// IsShutdown reports whether k is a shutdown request (10..21).
func (k Kind) IsShutdown() bool { return k >= KindShutdown && k <= KindShutdownLast }

// ShutdownCause returns the QAPI ShutdownCause value of a shutdown kind,
// or -1 for any other kind.
func (k Kind) ShutdownCause() int {
	if !k.IsShutdown() {
		return -1
	}
	return int(k - KindShutdown)
}

// IsClock reports whether k is a clock read (28..29) carrying a value.
func (k Kind) IsClock() bool { return k == KindClockHost || k == KindClockVirtualRT }

// IsCheckpoint reports whether k is a checkpoint (30..38).
func (k Kind) IsCheckpoint() bool { return k >= KindCheckpoint && k <= KindCheckpointReset }
