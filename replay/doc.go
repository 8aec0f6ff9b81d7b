// Package replay parses the record/replay (rr) log that QEMU 7.2 writes
// with -icount shift=N,rr=record,rrfile=F, as a stream.
//
// # Format
//
// The file starts with a 12-byte header: the big-endian u32 Version
// (0x00e0200c, REPLAY_VERSION) and 8 reserved bytes. A stock QEMU seeks past
// the header when it opens the file and writes the version only in
// replay_finish at exit, so a log still being recorded, or one whose
// recorder was killed, has a zero version (CheckHeader: ErrRecording).
// ftvmd's engine (qemu/engine, the log-stream patch) writes the whole header
// when it opens the file: its logs are valid from the start, and only END
// says the recording ended.
//
// Events follow from offset 12, back to back with no framing: one code
// byte (Kind, enum ReplayEvents) and a payload whose size depends on the
// kind and, for arrays, on a big-endian u32 length. All integers are
// big-endian (replay_put_word/dword/qword). Payloads:
//
//	0      INSTRUCTION          u32 instructions since the previous event
//	1, 2   INTERRUPT, EXCEPTION none
//	3, 4   ASYNC BH, BH_ONESHOT u64 id (icount when queued)
//	5      ASYNC INPUT          u32 kind; key: u32 key kind + (i64 | u32) + u8;
//	                            btn: u32 + u8; rel/abs: u32 axis + i64
//	6      ASYNC INPUT_SYNC     none
//	7      ASYNC CHAR_READ      u8 chardev index, u32 len, bytes
//	8      ASYNC BLOCK          u64 blkreplay request id
//	9      ASYNC NET            u8 filter index, u32 flags, u32 len, bytes
//	10-21  SHUTDOWN + cause     none
//	22     CHAR_WRITE           u32 result, u32 bytes written
//	23     CHAR_READ_ALL        u32 len, bytes
//	24     CHAR_READ_ALL_ERROR  u32 result
//	25     AUDIO_OUT            u64 samples played
//	26     AUDIO_IN             unsupported: its size needs the audio buffer
//	                            size, which the log does not hold
//	27     RANDOM               u32 result, u32 len, bytes
//	28, 29 CLOCK host, virt_rt  i64 nanoseconds
//	30-38  CHECKPOINT + id      none (37 INIT, 38 RESET)
//	39     END                  none; the last event
//
// The instruction count of the guest at any event boundary is the sum of
// the INSTRUCTION payloads before it (plus the icount at the point the log
// was entered, for a log started from a snapshot). Replaying a finished
// log to its end reaches exactly that sum in QMP query-replay (checked by
// TestRealLog).
//
// A clean exit (SIGTERM, SIGINT, QMP quit) ends the log with a pending
// INSTRUCTION, SHUTDOWN host-signal (14) and END (39). A stock QEMU writes
// through an unflushed stdio buffer, so a file being recorded grows in 4 KiB
// steps that end anywhere, mid-event included. ftvmd's engine flushes at
// least every 1 ms and before every frame the guest sends (its file still
// ends inside an event wherever the buffer filled in between); a write that
// fails ends its log for good, possibly inside an event.
//
// Sources, QEMU 7.2: replay/replay-internal.h (enum ReplayEvents,
// ReplayAsyncEventKind), include/sysemu/replay.h (ReplayClockKind,
// ReplayCheckpoint), replay/replay.c (header, replay_finish),
// replay/replay-internal.c (primitives, replay_advance_current_icount),
// replay/replay-events.c (async events), replay/replay-input.c,
// replay/replay-char.c, replay/replay-net.c, replay/replay-audio.c,
// replay/replay-random.c, replay/replay-time.c, qapi/run-state.json
// (ShutdownCause). /work/shared/qemu-rr-reference.md has the details.
//
// # API
//
// Decoder reads events one by one from an io.Reader. Cutter is fed
// arbitrary chunks of a growing log and tracks the last complete event
// boundary and the icount there, with bounded memory; its OnMark hook
// reports (offset, icount) after every INSTRUCTION event, which maps the
// icount a backup has replayed back to a log offset. LastBoundary finds
// where to cut a log prefix when going live; Summarize backs
// `ftvmd log inspect`.
//
// Errors: io.EOF at an event boundary; ErrTruncated (wrapping
// io.ErrUnexpectedEOF) inside an event; *CorruptError for an unknown
// kind, an array over MaxArray, an INSTRUCTION count QEMU cannot write
// (>= 2^31), an unknown input kind, AUDIO_IN, or any byte after END.
package replay
