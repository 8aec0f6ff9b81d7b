// Package qemu launches and controls one QEMU process for ftvmd: it turns a
// Config into QEMU's record/replay (rr) command line, runs the process
// through a named, editable list of start handlers, talks QMP with a deadline
// on every call, and feeds a live rr log to a replaying QEMU through a FIFO
// (Feed).
//
// A recording QEMU never flushes its log (stdio buffers 4 KiB), so record mode
// requires the LD_PRELOAD library built from flush/ftflush.c: it flushes the
// log every FlushInterval and before every frame QEMU sends.
package qemu
