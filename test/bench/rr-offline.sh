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
# a wrapper script works). Prints record and replay wall times, whether
# the consoles are byte-identical, and the steady instruction rates (last 20 s).
set -euo pipefail
name=$1; secs=$2; shift 2
repo=$(cd "$(dirname "$0")/../.." && pwd)
g=$repo/build/guest
out=${OUT:-/tmp/rr-offline}; mkdir -p "$out"; cd "$out"
shift_=${SHIFT:-4}; append="console=ttyS0 quiet panic=-1 ft.ip=10.9.9.9/24 ${APPEND-ft.busy=1}"
q=("${QEMU:-qemu-system-x86_64}" -M pc -accel tcg -cpu qemu64 -smp 1 -m 256 -nographic -nodefaults
   -no-user-config -kernel "$g/vmlinuz" -initrd "$g/initrd.img" -append "$append" "$@")
rm -f "$name".*
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
t0=$(date +%s.%N)
taskset -c 0 "${q[@]}" -icount "shift=$shift_,rr=record,rrfile=$name.rr" -serial "file:$name.rec.con" \
  -qmp "unix:$name.rq,server=on,wait=off" 2>"$name.rec.err" &
qp=$!; poll "$name.rq" "$name.rec.ic" & pp=$!
sleep "$secs"; kill "$qp"; wait "$qp" || true; wait "$pp" || true
t1=$(date +%s.%N)
taskset -c 1 "${q[@]}" -icount "shift=$shift_,rr=replay,rrfile=$name.rr" -serial "file:$name.rep.con" \
  -qmp "unix:$name.pq,server=on,wait=off" 2>"$name.rep.err" &
qp=$!; poll "$name.pq" "$name.rep.ic" & pp=$!
wait "$qp" || true; wait "$pp" || true
t2=$(date +%s.%N)
same=no; cmp -s "$name.rec.con" "$name.rep.con" && same=yes
printf '{"name":"%s","shift":%s,"qemu_args":"%s","record_s":%.1f,"replay_s":%.1f,"console_identical":"%s","record_steady_mips":%s,"replay_steady_mips":%s}\n' \
  "$name" "$shift_" "$*" "$(echo "$t1-$t0" | bc)" "$(echo "$t2-$t1" | bc)" "$same" "$(rate "$name.rec.ic")" "$(rate "$name.rep.ic")"
