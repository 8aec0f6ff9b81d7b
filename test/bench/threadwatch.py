#!/usr/bin/env python3
"""Per-thread totals of a QEMU over its whole life, and a summary of many runs.

    python3 test/bench/threadwatch.py watch PID OUT.json   # until PID exits
    python3 test/bench/threadwatch.py summary DIR          # one JSON line per OUT.json

"watch" reads every thread's CPU time (schedstat), voluntary and involuntary context
switches every 0.5 s and, when the process is gone, writes the last reading and the
seconds between the first and the last. test/bench/threadwatch.sh starts it beside a
QEMU that rr-offline.sh runs. "summary" prints, per file, the QMP monitor I/O thread's
wake-ups (voluntary switches) per second and CPU, and every thread's totals (thread
names need QEMU's `-name NAME,debug-threads=on`). Used for docs/benchmarks.md's "The
monitor's wake-ups (engine 0008, session 10)".
"""
import glob
import json
import os
import sys
import time


def read(pid):
    r = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        b = f"/proc/{pid}/task/{tid}"
        try:
            with open(b + "/comm") as f:
                comm = f.read().strip()
            with open(b + "/schedstat") as f:
                run = int(f.read().split()[0])
            with open(b + "/status") as f:
                st = {k: int(v) for k, _, v in (line.partition(":") for line in f)
                      if k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")}
        except (OSError, ValueError):
            continue  # the thread ended between listdir and the reads
        r[tid] = {"comm": comm, "run_s": run / 1e9,
                  "vcs": st.get("voluntary_ctxt_switches", 0),
                  "ivcs": st.get("nonvoluntary_ctxt_switches", 0)}
    return r


def watch(pid, out):
    t0 = tl = None
    last = {}
    while True:
        try:
            r = read(pid)
        except OSError:
            break  # the process is gone: keep the last reading
        if not r:
            break
        now = time.time()
        t0 = t0 or now
        last, tl = r, now
        time.sleep(0.5)
    with open(out, "w") as f:
        json.dump({"secs": (tl - t0) if t0 else 0, "threads": last}, f)


def summary(d):
    for path in sorted(glob.glob(os.path.join(d, "*.threads.json"))):
        with open(path) as f:
            j = json.load(f)
        secs = j["secs"] or 1
        ths = j["threads"]
        mon = next((t for t in ths.values() if t["comm"] == "IO mon_iothread"),
                   {"run_s": 0, "vcs": 0, "ivcs": 0})
        print(json.dumps({
            "file": os.path.basename(path), "secs": round(secs, 1),
            "mon_wakeups_per_s": round(mon["vcs"] / secs), "mon_cpu_s": round(mon["run_s"], 2),
            "total_cpu_s": round(sum(t["run_s"] for t in ths.values()), 2),
            "total_cs_per_s": round(sum(t["vcs"] + t["ivcs"] for t in ths.values()) / secs),
            "threads": {f'{t["comm"]}#{tid}': [round(t["run_s"], 2), t["vcs"], t["ivcs"]]
                        for tid, t in sorted(ths.items())}}))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "watch":
        watch(int(sys.argv[2]), sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "summary":
        summary(sys.argv[2])
    else:
        sys.exit(__doc__)
