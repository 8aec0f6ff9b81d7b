#!/usr/bin/env python3
"""Per-MiB CPU of each process in a `ftvmd bench net` output (its last line), and the
primary's split into guest instructions per MiB and host CPU per instruction.

  bound.py FILE...
"""
import json, sys
for f in sys.argv[1:]:
    r = json.loads(open(f).read().strip().splitlines()[-1])
    print("%s (%s, %s)" % (f, r["env"]["date"], r["env"]["qemu"].split(" (")[0]))
    for ph, k in (("guest->client", "guest_to_client"), ("client->guest", "client_to_guest")):
        u, p = r["unprotected"], r["protected"]
        U = u[k + "_cpu"]["primary_qemu_cores"] / u[k + "_MB_s"] * 1000
        cp = p[k + "_cpu"]; mb = p[k + "_MB_s"]
        P, R, A, B = (cp.get(x, 0) / mb * 1000 for x in ("primary_qemu_cores", "backup_qemu_cores", "agent_a_cores", "agent_b_cores"))
        Us = u[k + "_cpu"].get("primary_qemu_sys_cores", 0) / u[k + "_MB_s"] * 1000
        Ps = cp.get("primary_qemu_sys_cores", 0) / mb * 1000
        ui, pi = u.get(k + "_minsn_per_mb", 0), p.get(k + "_minsn_per_mb", 0)
        print("  %s: MB/s %.1f / %.1f ratio %.2f; U %.1f (sys %.1f) P %.1f (sys %.1f) R %.1f A %.1f B %.1f ms/MiB; "
              "U/P %.2f bound 2U/(P+R+A+B) %.2f; M insn/MiB %.2f / %.2f; ns/insn %.2f / %.2f; P throttled %.1f s paced %.1f s"
              % (ph, u[k + "_MB_s"], mb, mb / u[k + "_MB_s"], U, Us, P, Ps, R, A, B, U / P, 2 * U / (P + R + A + B),
                 ui, pi, U / ui if ui else 0, P / pi if pi else 0, p[k + "_throttled_s"], p[k + "_paced_s"]))
