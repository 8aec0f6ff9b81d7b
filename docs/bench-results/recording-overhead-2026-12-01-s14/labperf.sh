#!/bin/bash
# bench net on tap, with perf sampling the primary's QEMU (host A) during each bulk
# transfer of each mode: unprot-get, unprot-put, prot-get, prot-put.
#   labperf.sh OUTDIR TAG [extra bench args]   (run under the lab queue's flock)
# PERF=1: perf record the primary QEMU (at -g it used 1.8 cores of the 2 in the lab: do not).
set -u
out=$1 tag=$2; shift 2
mkdir -p "$out"
cd /work/wt-h43 || exit 1
echo "$(date -u +%FT%TZ) $tag $(git log --oneline -1) engine=$(readlink /opt/ftvmd/qemu/current) load=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/progress.log"
./build/ftvmd bench net --requests 2000 --mb 100 --iperf-seconds 0 --unprotected-neighbour 1 \
  --agent-arg=--data-path=tap "$@" 2>&1 | python3 -u -c '
import os, signal, subprocess, sys, time
out, tag = sys.argv[1], sys.argv[2]
mode, perf = "unprot", None
def ppid():
    # the QEMU itself: the command line of this script holds the path too
    r = subprocess.run(["pgrep", "-f", "^/[^ ]*qemu-system-x86_64 .*rrfile=/var/lib/ftvmd-lab/a/run/benchnet[.][a-z]*/log[.]rr"], capture_output=True, text=True)
    p = r.stdout.split()
    return p[0] if p else None
def start(step):
    global perf
    if os.environ.get("PERF") != "1":
        return
    pid = ppid()
    if pid is None:
        print("labperf: no primary QEMU found", flush=True); return
    perf = subprocess.Popen(["perf", "record", "-q", "-F", "999", "-e", "cpu-clock", "-g", "-p", pid,
        "-o", "%s/%s-%s-%s.perf.data" % (out, tag, mode, step)], stderr=subprocess.DEVNULL)
def stop():
    global perf
    if perf:
        perf.send_signal(signal.SIGINT); perf.wait(); perf = None
for line in sys.stdin:
    sys.stdout.write(line); sys.stdout.flush()
    if line.startswith("rtt p50"):
        start("get")
    elif line.startswith("guest->client"):
        stop(); start("put")
    elif line.startswith("client->guest"):
        stop()
        mode = "prot"
stop()
' "$out" "$tag" > "$out/$tag.txt"
echo "$(date -u +%FT%TZ) $tag done load=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/progress.log"
