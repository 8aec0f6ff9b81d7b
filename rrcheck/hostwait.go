package rrcheck

import (
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
)

// hostSyscalls names the x86-64 system calls a replaying QEMU blocks in on its
// own files; others show as their number.
var hostSyscalls = map[int]string{
	0: "read", 1: "write", 17: "pread64", 18: "pwrite64", 19: "readv", 20: "writev",
	74: "fsync", 75: "fdatasync", 257: "openat", 285: "fallocate", 295: "preadv", 296: "pwritev",
}

// HostWaits lists the threads of process pid that sit in uninterruptible sleep
// (state D: waiting on this host's disk, not on the log), with the system call
// each is in, read from a proc file system (os.DirFS("/proc")). A stalled
// replay with such a thread is held up by the host: the log says the guest's
// I/O completed, and the replay cannot go on until its own does. Unreadable
// entries (a thread that exited meanwhile) are skipped.
func HostWaits(proc fs.FS, pid int) []string {
	dir := path.Join(strconv.Itoa(pid), "task")
	tids, err := fs.ReadDir(proc, dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, t := range tids {
		stat, err := fs.ReadFile(proc, path.Join(dir, t.Name(), "stat"))
		if err != nil {
			continue
		}
		// The state follows the command name, which is in parentheses and may
		// itself hold spaces or parentheses.
		i := strings.LastIndexByte(string(stat), ')')
		if i < 0 || i+2 >= len(stat) || stat[i+2] != 'D' {
			continue
		}
		in := "an unknown system call"
		if b, err := fs.ReadFile(proc, path.Join(dir, t.Name(), "syscall")); err == nil {
			if f := strings.Fields(string(b)); len(f) > 0 {
				if n, err := strconv.Atoi(f[0]); err == nil {
					in = hostSyscalls[n]
					if in == "" {
						in = "system call " + f[0]
					}
				}
			}
		}
		out = append(out, fmt.Sprintf("thread %s in %s", t.Name(), in))
	}
	sort.Strings(out)
	return out
}
