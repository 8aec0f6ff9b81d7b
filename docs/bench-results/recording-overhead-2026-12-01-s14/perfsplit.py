#!/usr/bin/env python3
"""Split a perf profile of a QEMU (perf record -e cpu-clock) into where the CPU went.

  perfsplit.py MB FILE.perf.data...   MB: the MiB moved while it was sampled
Prints, per file, samples (~ms of CPU at -F 999) per MiB in each class: the
translated guest code (JIT), TCG's TB lookups (helper_lookup_tb_ptr, qht, the
jump cache), the rest of QEMU's user code, libc, and the kernel; then the top
kernel and QEMU symbols. Samples are whole-process (all threads).
"""
import collections, subprocess, sys
mb = float(sys.argv[1])
LOOKUP = ("helper_lookup_tb_ptr", "qht_lookup_custom", "tb_lookup_cmp", "tb_htable_lookup", "tb_tc_cmp")
RR = ("replay_", "filter_replay", "net_filter", "dump_receive", "filter_dump")
for f in sys.argv[2:]:
    out = subprocess.run(["perf", "report", "-i", f, "--stdio", "--no-children", "-g", "none",
                          "--sort", "dso,sym", "-n", "--percent-limit", "0"],
                         capture_output=True, text=True).stdout
    cls, ksyms, usyms, total = collections.Counter(), collections.Counter(), collections.Counter(), 0
    for line in out.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        p = line.split()
        if len(p) < 5 or not p[0].endswith("%"):
            continue
        n, dso, sym = int(p[1]), p[2], " ".join(p[4:])
        total += n
        if dso.startswith("[JIT]") or (dso == "[unknown]" and sym.startswith("0x")):
            c = "jit"
        elif dso.startswith("[kernel"):
            c = "kernel"; ksyms[sym] += n
        elif "qemu-system" in dso:
            c = "tb_lookup" if sym.startswith(LOOKUP) else "rr_net" if sym.startswith(RR) else "qemu"
            usyms[sym] += n
        elif "libc" in dso:
            c = "libc"; usyms[sym] += n
        else:
            c = "other"
        cls[c] += n
    print("%s: %d samples, %.1f per MiB" % (f, total, total / mb))
    print("  " + ", ".join("%s %.1f (%.0f%%)" % (k, v / mb, 100 * v / max(total, 1)) for k, v in cls.most_common()))
    print("  kernel top: " + ", ".join("%s %.2f" % (k, v / mb) for k, v in ksyms.most_common(8)))
    print("  qemu/libc top: " + ", ".join("%s %.2f" % (k, v / mb) for k, v in usyms.most_common(10)))
