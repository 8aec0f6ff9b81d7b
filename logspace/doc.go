// Package logspace bounds the disk space a VM's logs take while they grow.
//
// An rr log grows at a rate the guest controls (a bulk TCP stream into a guest
// records about 25 MB/s), and QEMU appends to it for as long as the VM runs, so
// nothing can rename or truncate it under QEMU. What a host no longer needs is the
// log's prefix: bytes the backup has acknowledged (on the primary) or fed to its
// replay (on the backup). A Freer punches holes in that prefix
// (fallocate(FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE)), whole file-system blocks
// only: the file keeps its size and every offset, so QEMU's writes, the agent's
// reads by offset and the output rule's log offsets all stay as they were; only
// the prefix reads back as zeros and takes no space. FreedPrefix tells a reader
// (ftvmd log inspect, ftvmd rr check) that a log lost its prefix.
//
// A Rotator keeps a console log's space under a size the same way: QEMU writes it
// at its own offset, so the Rotator copies the file's oldest whole blocks out to
// console.log.1 (older copies shifted up to .N) and punches them out of the file,
// losing no byte QEMU writes meanwhile; a reader in the agent that follows the
// console (the divergence sentinel) says how far it has read, and no rotation
// frees more.
//
// Usage measures what files take on disk: allocated blocks (st_blocks * 512), not
// their size, which a punched log keeps.
package logspace
