// Package rrcheck checks that a finished recording replays deterministically: it
// replays the rr log offline in a QEMU of its own, with the machine the recording
// ran, and compares what the replay reaches with what the log and the recording's
// console say.
//
// A recording is described by a Manifest (record.json beside the log, written by
// the agent's primary when it starts QEMU): the exact QEMU args, the qemu.Config
// that produced them, the engine, checksums of the kernel and initrd, and
// pre-record copies of the disks when they were asked for. Check derives the
// replay's config from the recording's (same binary, machine args and netdev
// type; its own QMP socket, console file and network sink; the disks as overlays
// on the pre-record copies, which stay untouched), replays the log, polls
// query-replay, and ends when the replay reaches the log's end (it runs with
// -action shutdown=pause, so the SHUTDOWN the recorder logged at its exit leaves
// the replay paused in state "shutdown" and its final icount readable), when
// QEMU exits, or when the icount has not moved for the stall timeout.
//
// The verdict (Decide) is deterministic when the replay reached the log's end at
// exactly the icount the log records (the sum of its INSTRUCTION events), its
// console is byte-identical to the recording's, and it emitted no frame;
// diverged when any of that fails; stalled when the icount stopped short.
package rrcheck
