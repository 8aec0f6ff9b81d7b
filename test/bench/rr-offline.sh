#!/bin/bash
# Record a lab guest with QEMU's record/replay for a while on CPU 0, then replay the
# log from the file on CPU 1, sampling each side's instruction count once a second
# over QMP. No ftvmd involved: this measures the engine alone. To check that a VM the
# agent ran replays deterministically, use `ftvmd rr check` (docs/operator-guide.md).
#
#   bash test/bench/rr-offline.sh NAME SECONDS [qemu args...]
#   e.g. bash test/bench/rr-offline.sh busy-vm 40 -rtc clock=vm
#
# Env: SHIFT (icount shift, default 4), APPEND (extra kernel args, default ft.busy=1),
# OUT (work dir, default /tmp/rr-offline), QEMU (the emulator, default qemu-system-x86_64;
# a wrapper script works), REPLAY_QEMU (replay with this emulator instead of QEMU's: does a log
# one build recorded replay on another?), FLUSHLIB (preload libftflush.so into the recording QEMU, as
# the agent does for an engine that does not stream its log). Prints record and replay
# wall times, whether the consoles are byte-identical, the steady instruction rates
# (last 20 s), each side's CPU time (user+system, all threads) and context switches
# per second of wall time (voluntary + involuntary, all threads; /usr/bin/time).
#
# NET=1 gives the guest a NIC as the agent does (virtio-net tx=timer + filter-replay),
# on a tap in a private network namespace, and once the guest is ready runs LOAD there
# against its service on 10.9.9.9:7000: space-separated "get MB" (guest->client),
# "put MB" (client->guest), "req N" (N ping/pong round trips) and "md5 N" (N
# `md5 100` commands back to back, the task of `ftvmd bench cpu`) steps, default
# "get 400 put 100". Each step's rate under recording is printed (load_mbps: Mbit/s
# for get/put, round trips/s for req, seconds for md5). SECONDS must cover boot and
# the load.
set -euo pipefail
name=$1; secs=$2; shift 2
repo=$(cd "$(dirname "$0")/../.." && pwd)
g=$repo/build/guest
out=${OUT:-/tmp/rr-offline}; mkdir -p "$out"; cd "$out"
shift_=${SHIFT:-4}; append="console=ttyS0 quiet panic=-1 ft.ip=10.9.9.9/24 ${APPEND-ft.busy=1}"
q=("${QEMU:-qemu-system-x86_64}" -M pc -accel tcg -cpu qemu64 -smp 1 -m 256 -nographic -nodefaults
   -no-user-config -kernel "$g/vmlinuz" -initrd "$g/initrd.img" -append "$append" "$@")
rm -f "$name".*
inns=() # prefix that runs a command in the guest's network namespace
if [ "${NET:-0}" = 1 ]; then
  ns=rroff$$
  ip netns add "$ns"
  trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
  ip -n "$ns" link set lo up
  ip -n "$ns" tuntap add dev t0 mode tap
  ip -n "$ns" addr add 10.9.9.1/24 dev t0
  ip -n "$ns" link set t0 up
  inns=(ip netns exec "$ns")
  q+=(-netdev tap,id=n0,ifname=t0,script=no,downscript=no
      -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,tx=timer
      -object filter-replay,id=r0,netdev=n0)
fi
recenv=()
[ -n "${FLUSHLIB:-}" ] && recenv=(env "LD_PRELOAD=$FLUSHLIB" "FTVMD_RRFILE=$name.rr")
load() { # console: wait for the guest's service, then run LOAD against it
  for _ in $(seq 600); do grep -q "ftguest ready" "$1" 2>/dev/null && break; sleep 0.1; done
  "${inns[@]}" python3 - ${LOAD:-get 400 put 100} <<'PY'
import socket, sys, time
steps = sys.argv[1:]
s = socket.create_connection(("10.9.9.9", 7000), timeout=60)
f = s.makefile("rwb")
out = []
for op, mb in zip(steps[0::2], steps[1::2]):
    n = int(mb) << 20
    t0 = time.time()
    if op == "md5": # N md5 commands of 100 MiB (a CPU-bound task, as bench cpu's)
        for _ in range(int(mb)):
            f.write(b"md5 100\n"); f.flush()
            if not f.readline().startswith(b"md5 "): raise SystemExit("bad md5")
        out.append('"md5x%s_s":%.1f' % (mb, time.time() - t0))
        continue
    if op == "req":
        for _ in range(int(mb)):
            f.write(b"ping\n"); f.flush()
            if f.readline() != b"pong\n": raise SystemExit("bad pong")
        out.append('"req%s":%.1f' % (mb, int(mb) / (time.time() - t0)))
        continue
    f.write(("%s %d\n" % (op, n)).encode()); f.flush()
    if op == "get":
        hdr = f.readline().split()
        left = int(hdr[1])
        while left:
            b = f.read(min(left, 1 << 20))
            if not b: raise SystemExit("short get")
            left -= len(b)
    else:
        chunk = b"x" * (1 << 20)
        for _ in range(n >> 20): f.write(chunk)
        f.flush(); f.readline()
    out.append('"%s%s":%.1f' % (op, mb, n * 8 / 1e6 / (time.time() - t0)))
print("{" + ",".join(out) + "}")
PY
}
poll() { # socket outfile: "seconds icount" once a second until QEMU goes away
  python3 - "$1" "$2" <<'PY'
import json, socket, sys, time
path, out = sys.argv[1], open(sys.argv[2], "w")
for _ in range(400):
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(path); break
    except OSError: time.sleep(0.02)
f = s.makefile("rw"); f.readline()
f.write('{"execute":"qmp_capabilities"}\n'); f.flush(); f.readline()
t0 = time.time()
while True:
    try:
        f.write('{"execute":"query-replay"}\n'); f.flush(); l = f.readline()
        if not l: break
        out.write("%.3f %d\n" % (time.time() - t0, json.loads(l)["return"]["icount"])); out.flush()
    except Exception: break
    time.sleep(1)
PY
}
rate() { # steady rate over the last 20 s of samples, in M instructions/s
  awk '{t[NR]=$1; i[NR]=$2} END {a=NR-20; if (a<1) a=1; printf "%.0f", (i[NR]-i[a])/(t[NR]-t[a])/1e6}' "$1"
}
# GNU time's figures for a whole process (all its threads): wall, user, system,
# voluntary and involuntary context switches.
timed=(/usr/bin/time -f '%e %U %S %w %c')
tcpu() { tail -n1 "$1" | awk '{printf "%.1f", $2+$3}'; }
tcs() { tail -n1 "$1" | awk '$1>0 {printf "%.0f", ($4+$5)/$1}'; }
t0=$(date +%s.%N)
"${inns[@]}" "${recenv[@]}" "${timed[@]}" -o "$name.rec.time" taskset -c 0 "${q[@]}" -icount "shift=$shift_,rr=record,rrfile=$name.rr" -serial "file:$name.rec.con" \
  -qmp "unix:$name.rq,server=on,wait=off" 2>"$name.rec.err" &
qp=$!; poll "$name.rq" "$name.rec.ic" & pp=$!
loadres=null
if [ "${NET:-0}" = 1 ]; then loadres=$(load "$name.rec.con" || echo null); fi
sleep "$(echo "$secs - ($(date +%s.%N) - $t0)" | bc | sed 's/^-.*/0/')"
qpid=$(pgrep -f -n "rrfile=$name.rr" || echo "$qp") # the QEMU under ip netns exec / env
kill "$qpid"; wait "$qp" || true; wait "$pp" || true
t1=$(date +%s.%N)
rq=("${q[@]}"); [ -n "${REPLAY_QEMU:-}" ] && rq[0]=$REPLAY_QEMU
"${inns[@]}" "${timed[@]}" -o "$name.rep.time" taskset -c 1 "${rq[@]}" -icount "shift=$shift_,rr=replay,rrfile=$name.rr" -serial "file:$name.rep.con" \
  -qmp "unix:$name.pq,server=on,wait=off" 2>"$name.rep.err" &
qp=$!; poll "$name.pq" "$name.rep.ic" & pp=$!
wait "$qp" || true; wait "$pp" || true
t2=$(date +%s.%N)
same=no; cmp -s "$name.rec.con" "$name.rep.con" && same=yes
printf '{"name":"%s","shift":%s,"qemu_args":"%s","record_s":%.1f,"replay_s":%.1f,"console_identical":"%s","record_steady_mips":%s,"replay_steady_mips":%s,"record_cpu_s":%s,"replay_cpu_s":%s,"record_cs_per_s":%s,"replay_cs_per_s":%s,"log_bytes":%s,"load_mbps":%s}\n' \
  "$name" "$shift_" "$*" "$(echo "$t1-$t0" | bc)" "$(echo "$t2-$t1" | bc)" "$same" "$(rate "$name.rec.ic")" "$(rate "$name.rep.ic")" \
  "$(tcpu "$name.rec.time")" "$(tcpu "$name.rep.time")" "$(tcs "$name.rec.time")" "$(tcs "$name.rep.time")" \
  "$(stat -c %s "$name.rr")" "$loadres"
