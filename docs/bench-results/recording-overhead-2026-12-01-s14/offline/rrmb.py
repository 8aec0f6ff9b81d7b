#!/usr/bin/env python3
"""Per-MB CPU of a recording QEMU under bulk TCP traffic, offline (no agent).

  rrmb.py VARIANT OUTDIR [steps...]   steps: "get MB" / "put MB" pairs
Env: QEMU (binary), DUMP=1 (filter-dump to a FIFO read by cat on CPU 0, as the
protected primary's NIC capture), PERF=step-index (perf record the QEMU during it),
RR=0 (no record/replay at all).
Prints one JSON line per step: MB, seconds, Mbit/s, QEMU CPU ms/MB (user, sys).
"""
import json, os, socket, subprocess, sys, time
variant, out = sys.argv[1], sys.argv[2]
steps = sys.argv[3:] or ["get", "150", "put", "150"]
os.makedirs(out, exist_ok=True)
g = "/work/main/build/guest"
qemu = os.environ.get("QEMU", "/opt/ftvmd/qemu/current/bin/qemu-system-x86_64")
ns = "h43rr%d" % os.getpid()
def sh(*a): subprocess.run(a, check=True)
sh("ip", "netns", "add", ns)
procs = []
try:
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    sh("ip", "-n", ns, "tuntap", "add", "dev", "t0", "mode", "tap")
    sh("ip", "-n", ns, "addr", "add", "10.9.9.1/24", "dev", "t0")
    sh("ip", "-n", ns, "link", "set", "t0", "up")
    base = "%s/%s" % (out, variant)
    for f in (base + ".rr", base + ".con", base + ".fifo"):
        if os.path.exists(f): os.unlink(f)
    icount = "shift=4"
    if os.environ.get("RR", "1") == "1":
        icount += ",rr=record,rrfile=%s.rr" % base
    q = [qemu, "-M", "pc", "-accel", "tcg", "-cpu", "qemu64", "-smp", "1", "-m", "256",
         "-rtc", "clock=vm", "-nographic", "-nodefaults", "-no-user-config",
         "-kernel", g + "/vmlinuz", "-initrd", g + "/initrd.img",
         "-append", "console=ttyS0 quiet panic=-1 ft.ip=10.9.9.9/24",
         "-icount", icount, "-serial", "file:%s.con" % base,
         "-qmp", "unix:%s.qmp,server=on,wait=off" % base,
         "-netdev", "tap,id=n0,ifname=t0,script=no,downscript=no",
         "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,tx=timer",
         "-object", "filter-replay,id=r0,netdev=n0"]
    if os.environ.get("DUMP") == "1":
        fifo = base + ".fifo"
        os.mkfifo(fifo)
        # the agent opens the FIFO before QEMU does; a reader on QEMU's CPU
        procs.append(subprocess.Popen(["taskset", "-c", "0", "sh", "-c", "exec cat %s >/dev/null" % fifo]))
        time.sleep(0.2)
        q += ["-object", "filter-dump,id=d0,netdev=n0,queue=rx,maxlen=69632,file=" + fifo]
    if os.environ.get("CORUN"):
        procs.append(subprocess.Popen(["taskset", "-c", "0", "/var/tmp/h43/corun"] + os.environ["CORUN"].split()))
    qp = subprocess.Popen(["ip", "netns", "exec", ns, "taskset", "-c", "0"] + q,
                          stderr=open(base + ".err", "w"))
    procs.append(qp)
    for _ in range(600):
        try:
            if b"ftguest ready" in open(base + ".con", "rb").read(): break
        except FileNotFoundError: pass
        time.sleep(0.1)
    else: raise SystemExit("guest not ready")
    # the QEMU's pid (under ip netns exec + taskset, exec'd: same pid)
    qpid = qp.pid
    def cpu():
        f = open("/proc/%d/stat" % qpid).read().rsplit(")", 1)[1].split()
        return int(f[11]), int(f[12])  # utime, stime (ticks)
    tck = os.sysconf("SC_CLK_TCK")
    qs = socket.socket(socket.AF_UNIX); qs.connect(base + ".qmp")
    qf = qs.makefile("rw"); qf.readline()
    qf.write('{"execute":"qmp_capabilities"}\n'); qf.flush(); qf.readline()
    def icount():
        qf.write('{"execute":"query-replay"}\n'); qf.flush()
        while True:
            r = json.loads(qf.readline())
            if "return" in r: return r["return"]["icount"]
    # client in the namespace: run this same file's client part via python in netns
    client = r'''
import socket, sys, time
op, mb = sys.argv[1], int(sys.argv[2])
s = socket.create_connection(("10.9.9.9", 7000), timeout=60)
f = s.makefile("rwb")
n = mb << 20
f.write(("%s %d\n" % (op, n)).encode()); f.flush()
if op == "get":
    hdr = f.readline().split(); left = int(hdr[1])
    while left:
        b = f.read(min(left, 1 << 20))
        if not b: raise SystemExit("short get")
        left -= len(b)
else:
    chunk = b"x" * (1 << 20)
    for _ in range(n >> 20): f.write(chunk)
    f.flush(); f.readline()
'''
    perf_at = os.environ.get("PERF")
    for i, (op, mb) in enumerate(zip(steps[0::2], steps[1::2])):
        pp = None
        if perf_at is not None and int(perf_at) == i:
            if os.environ.get("PERFREC"):
                pp = subprocess.Popen(["perf", "record", "-q", "-e", os.environ["PERFREC"], "-p", str(qpid),
                                       "-o", "%s.%s.perf.data" % (base, op)], stderr=subprocess.DEVNULL)
            elif os.environ.get("PERFSTAT"):
                pp = subprocess.Popen(["perf", "stat", "-e", os.environ["PERFSTAT"], "-p", str(qpid),
                                       "-o", "%s.%s.perfstat" % (base, op)])
            else:
                pp = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-g", "-p", str(qpid),
                                   "-o", "%s.%s.perf.data" % (base, op)], stderr=subprocess.DEVNULL)
            time.sleep(0.5)
        i0 = icount(); u0, s0 = cpu(); t0 = time.time()
        subprocess.run(["ip", "netns", "exec", ns, "python3", "-c", client, op, mb], check=True)
        t1 = time.time(); u1, s1 = cpu(); i1 = icount()
        if pp:
            pp.send_signal(2); pp.wait()
        mbf = float(mb)
        print(json.dumps({"variant": variant, "op": op, "mb": mbf, "s": round(t1 - t0, 2),
                          "mbps": round(mbf * 8 * 1.048576 / (t1 - t0), 1),
                          "ms_per_mb": round((u1 - u0 + s1 - s0) * 1000 / tck / mbf, 2),
                          "user_ms_per_mb": round((u1 - u0) * 1000 / tck / mbf, 2),
                          "sys_ms_per_mb": round((s1 - s0) * 1000 / tck / mbf, 2),
                          "minsn_per_mb": round((i1 - i0) / 1e6 / mbf, 2),
                          "ns_per_insn": round((u1 - u0 + s1 - s0) / tck * 1e9 / max(i1 - i0, 1), 2),
                          "log_bytes": os.path.getsize(base + ".rr") if os.path.exists(base + ".rr") else 0}), flush=True)
finally:
    for p in reversed(procs):
        try: p.terminate(); p.wait(5)
        except Exception: p.kill()
    subprocess.run(["ip", "netns", "del", ns])
