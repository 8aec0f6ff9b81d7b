#!/usr/bin/env python3
"""Sample what each thread of a QEMU process is doing, about once a millisecond.

    python3 test/bench/threadstates.py PID SECONDS

For each thread: the share of samples in each (scheduler state, syscall) pair, from
/proc/PID/task/TID/stat and .../syscall. "R/running" is runnable or on a CPU (wants a
core); "S/read-FIFO" is a replaying QEMU blocked reading its log FIFO (it has run
everything fed to it, see qemu.FeedWatch); "S/ppoll" a main loop waiting; "S/futex" a
thread waiting for a lock (the BQL or the replay mutex). Used for docs/benchmarks.md's
account of where a protected guest's time goes on the lab.
"""
import collections
import os
import sys
import time

SYSCALLS = {0: "read", 1: "write", 7: "poll", 202: "futex", 230: "clock_nanosleep", 271: "ppoll"}


def main():
    pid, dur = int(sys.argv[1]), float(sys.argv[2])
    fifo_fd = None
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").endswith(".fifo"):
                fifo_fd = int(fd)
        except OSError:
            pass
    tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    counts = {t: collections.Counter() for t in tids}
    end = time.time() + dur
    while time.time() < end:
        for t in tids:
            try:
                with open(f"/proc/{pid}/task/{t}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
                with open(f"/proc/{pid}/task/{t}/syscall") as f:
                    sc = f.read().split()
            except OSError:
                continue
            if sc[0] == "running":
                what = "running"
            else:
                nr = int(sc[0])
                what = SYSCALLS.get(nr, str(nr))
                if nr == 0 and fifo_fd is not None and int(sc[1], 16) == fifo_fd:
                    what = "read-FIFO"
            counts[t][(state, what)] += 1
        time.sleep(0.001)
    for t in tids:
        total = sum(counts[t].values()) or 1
        top = ", ".join(f"{s}/{w} {100 * n / total:.0f}%" for (s, w), n in counts[t].most_common(5))
        print(t, top)


if __name__ == "__main__":
    main()
