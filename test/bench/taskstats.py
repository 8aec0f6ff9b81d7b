#!/usr/bin/env python3
"""Per-thread CPU, scheduler and syscall counters of processes, and their rates.

    python3 test/bench/taskstats.py snap PID... > A.json   # one reading
    python3 test/bench/taskstats.py diff A.json B.json     # rates between two readings

A reading costs a few /proc reads per thread (no sampling loop), so it can be taken of
a lab's QEMUs without disturbing them. For each thread: run (CPU seconds, from
schedstat), wait (seconds runnable but not running: the core was busy with something
else), voluntary and involuntary context switches, read/write syscalls and bytes.
"diff" prints per process and thread: cores (run s/s), wait s/s, switches/s, syscalls/s,
and JSON totals per process on the last line. Used for docs/benchmarks.md's "Where the
lab's replay loses its CPU".
"""
import json
import os
import sys
import time


def thread(pid, tid):
    base = f"/proc/{pid}/task/{tid}"
    with open(base + "/schedstat") as f:
        run, wait, slices = (int(x) for x in f.read().split())
    st = {"run_ns": run, "wait_ns": wait, "slices": slices}
    with open(base + "/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k == "voluntary_ctxt_switches":
                st["vcs"] = int(v)
            elif k == "nonvoluntary_ctxt_switches":
                st["ivcs"] = int(v)
    try:
        with open(base + "/io") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("rchar", "wchar", "syscr", "syscw"):
                    st[k] = int(v)
    except OSError:
        pass
    return st


def snap(pids):
    out = {"at": time.time(), "procs": {}, "cpu_s": {}}
    tick = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # utime and stime (fields 14 and 15): every thread's, dead ones too.
            out["cpu_s"][str(pid)] = (int(fields[11]) + int(fields[12])) / tick
        except OSError:
            pass
        threads = {}
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                try:
                    threads[tid] = thread(pid, tid)
                except OSError:
                    pass
        except OSError:
            continue
        out["procs"][str(pid)] = threads
    return out


def diff(a, b):
    dt = b["at"] - a["at"]
    totals = {}
    for pid, threads in b["procs"].items():
        old = a["procs"].get(pid, {})
        rows = []
        for tid, t in threads.items():
            o = old.get(tid, {})
            r = {k: (t.get(k, 0) - o.get(k, 0)) / dt for k in t}
            r["tid"] = tid
            rows.append(r)
        rows.sort(key=lambda r: -r["run_ns"])
        tot = {"cores": sum(r["run_ns"] for r in rows) / 1e9, "wait_s_per_s": sum(r["wait_ns"] for r in rows) / 1e9,
               "vcs_per_s": sum(r.get("vcs", 0) for r in rows), "ivcs_per_s": sum(r.get("ivcs", 0) for r in rows),
               "syscr_per_s": sum(r.get("syscr", 0) for r in rows), "syscw_per_s": sum(r.get("syscw", 0) for r in rows),
               "threads": []}
        print(f"pid {pid} over {dt:.1f} s: {tot['cores']:.3f} cores, wait {tot['wait_s_per_s']:.3f} s/s, "
              f"switches {tot['vcs_per_s']:.0f} vol + {tot['ivcs_per_s']:.0f} invol /s")
        for r in rows:
            line = {"tid": r["tid"], "main": r["tid"] == pid, "cores": round(r["run_ns"] / 1e9, 4),
                    "wait": round(r["wait_ns"] / 1e9, 4), "vcs": round(r.get("vcs", 0)), "ivcs": round(r.get("ivcs", 0)),
                    "syscr": round(r.get("syscr", 0)), "syscw": round(r.get("syscw", 0)),
                    "rbytes": round(r.get("rchar", 0)), "wbytes": round(r.get("wchar", 0))}
            tot["threads"].append(line)
            print("  tid %(tid)s%(m)s: %(cores).3f cores, wait %(wait).3f, vcs %(vcs)d/s ivcs %(ivcs)d/s, "
                  "read %(syscr)d/s (%(rbytes)d B/s) write %(syscw)d/s (%(wbytes)d B/s)" % dict(line, m=" (main)" if line["main"] else ""))
        totals[pid] = tot
    print(json.dumps({"seconds": round(dt, 2), "procs": totals}))


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "snap":
        json.dump(snap([int(p) for p in sys.argv[2:]]), sys.stdout)
        print()
    elif len(sys.argv) == 4 and sys.argv[1] == "diff":
        with open(sys.argv[2]) as f:
            a = json.load(f)
        with open(sys.argv[3]) as f:
            b = json.load(f)
        diff(a, b)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
