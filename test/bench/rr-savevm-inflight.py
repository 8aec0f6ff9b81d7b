#!/usr/bin/env python3
"""savevm against disk requests in flight, on the engine alone (no ftvmd).

Records the lab guest with a disk behind blkreplay, a snapshot drive and a NIC on a
tap in a private network namespace, as the agent does, while a client in that
namespace writes records to the guest's disk back to back (`rec`: O_SYNC writes,
each a virtio-blk write and FLUSH). Meanwhile it runs the agent's snapshot step over
QMP again and again (protect.go snapshotForBackup): stop; savevm ftvmd-protect;
cont. From the second savevm on, the disk holds a snapshot of that name, which
savevm deletes first, and deleting it drains the disk.

A savevm that does not answer within TIMEOUT seconds is a hang: the script then
writes `gdb thread apply all bt` of QEMU to OUT/gdb.txt and exits 1. Otherwise it
prints how many savevms were saved and how many were refused ("Try once more
later", retried as the agent does) and exits 0.

  test/bench/rr-savevm-inflight.py QEMU OUT [ITERATIONS]     (default 300)

Env: TIMEOUT (default 10, the agent's QMP deadline). Needs root, qemu-img, gdb and
the lab guest image (build/guest). Run it under `chrt -i 0 nice -n 19` on a shared
machine.
"""
import json, os, signal, socket, subprocess, sys, threading, time

qemu, out = sys.argv[1], sys.argv[2]
iters = int(sys.argv[3]) if len(sys.argv) > 3 else 300
timeout = float(os.environ.get("TIMEOUT", "10"))
repo = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
os.makedirs(out, exist_ok=True)
ns, tap, guest = "rrsv%d" % os.getpid(), "rrsv0", "10.9.9.9"


def sh(*a, check=True):
    return subprocess.run(a, check=check, capture_output=True, text=True)


log = open(os.path.join(out, "run.log"), "w")


def say(*a):
    m = time.strftime("%H:%M:%S ") + " ".join(str(x) for x in a)
    print(m, flush=True)
    log.write(m + "\n")
    log.flush()


nse = ["ip", "netns", "exec", ns]
sh("ip", "netns", "add", ns)
qp = loader = None
try:
    sh(*nse, "ip", "link", "set", "lo", "up")
    sh(*nse, "ip", "tuntap", "add", tap, "mode", "tap")
    sh(*nse, "ip", "addr", "add", "10.9.9.1/24", "dev", tap)
    sh(*nse, "ip", "link", "set", tap, "up")
    disk, snap, rr = (os.path.join(out, f) for f in ("disk.qcow2", "snap.qcow2", "log.rr"))
    sh("qemu-img", "create", "-q", "-f", "qcow2", disk, "64M")
    sh("qemu-img", "create", "-q", "-f", "qcow2", snap, "1G")
    qmp_path, console = os.path.join(out, "qmp.sock"), os.path.join(out, "console.log")
    for p in (qmp_path, console):
        if os.path.exists(p):
            os.remove(p)
    # As qemu.Config builds it for a recording primary with a disk (qemu/config.go).
    args = [qemu, "-M", "pc", "-accel", "tcg", "-cpu", "qemu64", "-smp", "1", "-m", "256",
            "-rtc", "clock=vm", "-nographic", "-nodefaults", "-no-user-config",
            "-icount", "shift=4,rr=record,rrfile=" + rr, "-serial", "file:" + console,
            "-kernel", repo + "/build/guest/vmlinuz", "-initrd", repo + "/build/guest/initrd.img",
            "-append", "console=ttyS0 quiet panic=-1 ft.ip=%s/24" % guest,
            "-netdev", "tap,id=n0,ifname=%s,script=no,downscript=no" % tap,
            "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:09:09:09,tx=timer",
            "-object", "filter-replay,id=r0,netdev=n0",
            "-drive", "file=%s,if=none,id=snap0,format=qcow2" % snap,
            "-drive", "file=%s,if=none,id=img0,format=qcow2" % disk,
            "-drive", "driver=blkreplay,if=none,image=img0,id=blk0",
            "-device", "virtio-blk-pci,drive=blk0",
            "-qmp", "unix:%s,server=on,wait=off" % qmp_path]
    qp = subprocess.Popen(nse + args, stdout=open(os.path.join(out, "qemu.out"), "w"),
                          stderr=subprocess.STDOUT)

    class QMP:
        def __init__(self, path):
            for _ in range(600):
                try:
                    self.s = socket.socket(socket.AF_UNIX)
                    self.s.connect(path)
                    break
                except OSError:
                    time.sleep(0.05)
            self.f = self.s.makefile("rwb")
            self.f.readline()
            self.cmd("qmp_capabilities")

        def cmd(self, name, **args):
            self.s.settimeout(timeout)
            self.f.write((json.dumps({"execute": name, "arguments": args}) + "\n").encode())
            self.f.flush()
            while True:
                m = json.loads(self.f.readline())
                if "return" in m or "error" in m:
                    return m

    q = QMP(qmp_path)
    t0 = time.time()
    while not os.path.exists(console) or b"ftguest ready" not in open(console, "rb").read():
        if time.time() - t0 > 300 or qp.poll() is not None:
            say("the guest did not boot")
            sys.exit(2)
        time.sleep(0.5)
    say("guest ready after %.0f s" % (time.time() - t0))

    recs = [0]
    loader = subprocess.Popen(nse + ["python3", "-c", r'''
import socket, sys
s = socket.create_connection((sys.argv[1], 7000), timeout=60)
f = s.makefile("rwb")
n = 1
while True:
    f.write(b"rec %d x%d\n" % (n, n)); f.flush()
    l = f.readline()
    if l.strip() != b"rec ok %d" % n:
        sys.exit("bad answer %r" % l)
    sys.stdout.write("."); sys.stdout.flush()
    n += 1
''', guest], stdout=subprocess.PIPE)

    def count():
        while loader.stdout.read(1):
            recs[0] += 1
    threading.Thread(target=count, daemon=True).start()
    time.sleep(2)

    saved = refused = 0
    pauses = []
    for i in range(1, iters + 1):
        try:
            t = time.time()
            r = q.cmd("stop")
            if "error" in r:
                say("stop:", r)
                sys.exit(2)
            r = q.cmd("human-monitor-command", **{"command-line": "savevm ftvmd-protect"})
            o = r.get("return", "").strip()
            q.cmd("cont")
            pauses.append(time.time() - t)
        except socket.timeout:
            say("HANG: savevm %d did not answer within %.0f s (%d saved, %d refused before; %d records written)"
                % (i, timeout, saved, refused, recs[0]))
            g = sh("timeout", "120", "gdb", "-p", str(qp.pid), "-batch", "-ex", "set pagination off",
                   "-ex", "thread apply all bt", check=False)
            open(os.path.join(out, "gdb.txt"), "w").write(g.stdout + g.stderr)
            say("backtraces in", os.path.join(out, "gdb.txt"))
            sys.exit(1)
        if "Try once more later" in o:
            refused += 1
        elif o:
            say("savevm:", o)
            sys.exit(2)
        else:
            saved += 1
        time.sleep(0.02)
    pauses.sort()
    say("%d savevms: %d saved, %d refused (try again), none hung; pause p50 %.1f ms, max %.1f ms; %d records written"
        % (iters, saved, refused, 1000 * pauses[len(pauses) // 2], 1000 * pauses[-1], recs[0]))
    if loader.poll() is not None:
        say("the record load stopped:", loader.returncode)
        sys.exit(2)
finally:
    if loader is not None:
        loader.kill()
        loader.wait()
    if qp is not None and qp.poll() is None:
        qp.kill()
        qp.wait()
    sh("ip", "netns", "del", ns, check=False)
