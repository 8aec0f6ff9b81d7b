#!/usr/bin/env python3
"""Summarise `perf script` of sched_switch + sched_wakeup (-g) for a lab's two agents
and two QEMUs (see agentwake.sh):

    perf script -F tid,pid,comm,time,event,trace,ip,sym | agentwake.py TS0 TS1 SECS

TS0/TS1 are test/bench/taskstats.py readings of agent A, agent B, the recording QEMU
and the replaying QEMU (in that order) taken around the perf window. It prints, per
second: how often each process's threads were switched in; the replaying QEMU's
busiest thread (the vCPU) switched out while runnable (preempted) and by whom; who woke
agent B's threads (a timer or interrupt on an idle core, another agent B thread, a
QEMU, ...) and, for each kind, the Go function that caused it; and why agent B's
threads went to sleep (the kernel's wait and the Go frame).
"""
import collections
import json
import re
import sys

HDR = re.compile(r"^\s*(\S.*?)\s+(-?\d+)/(-?\d+)\s+([\d.]+):\s+(sched:\S+):\s+(.*)$")
KV = re.compile(r"(\w+)=(\S+)")


def load(path):
    with open(path) as f:
        return json.load(f)


def go_frame(stack):
    """The first frame that says what Go code was doing (not the runtime's or the kernel's plumbing)."""
    for sym in stack:
        if not sym or sym.startswith("[unknown]"):
            continue
        if "." in sym and not sym.startswith(("runtime.", "internal/", "syscall.", "golang.org/x/sys", "time.")) \
                and not re.match(r"^[a-z_0-9]+$", sym):
            return sym
    for sym in stack:
        if sym.startswith(("runtime.", "time.", "internal/poll")) and sym not in ("runtime.futex", "runtime.futexsleep",
                                                                                   "runtime.futexwakeup", "runtime.notesleep",
                                                                                   "runtime.notewakeup"):
            return sym
    return "?"


def wake_reason(stack):
    """Why a wakeup happened, from the waker's kernel stack."""
    for sym in stack:
        for k, why in (("hrtimer_wakeup", "timer"), ("futex_wake", "futex"), ("sock_def_readable", "socket"),
                       ("tcp_", "socket"), ("unix_", "unix socket"), ("pipe_", "pipe"), ("ep_poll_callback", "epoll"),
                       ("eventfd", "eventfd"), ("signal", "signal")):
            if k in sym:
                return why
    return "?"


def kernel_wait(stack):
    for sym in stack:
        for k in ("futex_wait", "do_epoll_wait", "ep_poll", "hrtimer_nanosleep", "do_nanosleep", "pipe_read",
                  "pipe_write", "wait_woken", "sk_wait_data", "unix_stream_read", "do_sys_poll", "io_schedule"):
            if k in sym:
                return k
    return stack[0] if stack else "?"


def main():
    ts0, ts1, secs = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3])
    names = ["agentA", "agentB", "recQEMU", "repQEMU"]
    pids = list(ts1["procs"].keys())
    role = {}  # tid -> role
    for name, pid in zip(names, pids):
        for tid in ts1["procs"][pid]:
            role[int(tid)] = name
    # the replay's vCPU: its busiest thread in the window
    rp = pids[3]
    busiest = max(ts1["procs"][rp], key=lambda t: ts1["procs"][rp][t]["run_ns"] - ts0["procs"].get(rp, {}).get(t, {}).get("run_ns", 0))
    vcpu = int(busiest)
    rc = pids[2]
    rec_vcpu = int(max(ts1["procs"][rc], key=lambda t: ts1["procs"][rc][t]["run_ns"] - ts0["procs"].get(rc, {}).get(t, {}).get("run_ns", 0)))

    def who(tid, comm):
        if tid == vcpu:
            return "repQEMU-vCPU"
        if tid == rec_vcpu:
            return "recQEMU-vCPU"
        if tid in role:
            return role[tid]
        if tid == 0:
            return "idle"
        return re.sub(r"[/:]\d+$", "", comm)

    switched_in = collections.Counter()
    per_thread_in = collections.Counter()
    vcpu_out = collections.Counter()       # (state, next)
    preempted_by = collections.Counter()   # next who, when the vCPU was runnable
    b_woken_by = collections.Counter()     # (waker class, go frame)
    b_waits = collections.Counter()        # (kernel wait, go frame)
    wakeups = collections.Counter()        # wakee role
    ev = None
    stack = []

    def flush():
        if ev is None:
            return
        comm, pid, tid, name, kv = ev
        syms = [s for s in stack]
        if name == "sched:sched_switch":
            prev, nxt = int(kv["prev_pid"]), int(kv["next_pid"])
            nw = who(nxt, kv.get("next_comm", "?"))
            switched_in[nw] += 1
            if nw in ("agentA", "agentB"):
                per_thread_in[(nw, nxt)] += 1
            st = kv.get("prev_state", "?")
            if prev == vcpu:
                vcpu_out[(st[0], nw)] += 1
                if st.startswith("R"):
                    preempted_by[nw] += 1
            if role.get(prev) == "agentB" and not st.startswith("R"):
                b_waits[(kernel_wait(syms), go_frame(syms))] += 1
        elif name == "sched:sched_wakeup":
            wakee = int(kv["pid"])
            ww = who(wakee, kv.get("comm", "?"))
            wakeups[ww] += 1
            if role.get(wakee) == "agentB":
                waker = who(tid, comm)
                why = wake_reason(syms)
                if waker not in ("agentA", "agentB", "repQEMU", "repQEMU-vCPU", "recQEMU", "recQEMU-vCPU") and why == "timer":
                    waker = "(timer irq)"
                what = go_frame(syms) if waker in ("agentA", "agentB") else ""
                b_woken_by[(waker, why + " " + what)] += 1

    for line in sys.stdin:
        line = line.rstrip("\n")
        m = HDR.match(line)
        if m:
            flush()
            comm, pid, tid, _, name, trace = m.groups()
            kv = dict(KV.findall(trace))
            # sched_wakeup's comm=/pid= name the wakee
            ev = (comm, int(pid), int(tid), name, kv)
            stack = []
        elif line.strip() and ev is not None:
            parts = line.strip().split(None, 1)
            stack.append(parts[1].split("+")[0] if len(parts) > 1 else "?")
    flush()

    r = lambda n: f"{n / secs:.0f}/s"
    print(f"window {secs:.0f} s; replay vCPU tid {vcpu}, record vCPU tid {rec_vcpu}")
    print("switched in (per s):", ", ".join(f"{k} {r(v)}" for k, v in switched_in.most_common(12)))
    print("agent threads switched in:", ", ".join(f"{k[0]}:{k[1]} {r(v)}" for k, v in sorted(per_thread_in.items(), key=lambda x: -x[1])[:16]))
    print("replay vCPU switched out:", ", ".join(f"{st}->{n} {r(v)}" for (st, n), v in vcpu_out.most_common(12)))
    print("replay vCPU preempted by:", ", ".join(f"{k} {r(v)}" for k, v in preempted_by.most_common(10)))
    print("wakeups of:", ", ".join(f"{k} {r(v)}" for k, v in wakeups.most_common(8)))
    print("agent B woken by (waker, what):")
    for (w, f), v in b_woken_by.most_common(25):
        print(f"  {r(v):>8}  {w:14} {f}")
    print("agent B went to sleep in (kernel wait, Go frame):")
    for (k, f), v in b_waits.most_common(25):
        print(f"  {r(v):>8}  {k:18} {f}")


if __name__ == "__main__":
    main()
