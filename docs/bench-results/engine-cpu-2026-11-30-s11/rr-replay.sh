#!/bin/bash
# Replay one log recorded by test/bench/rr-offline.sh (NET=1) with a given
# QEMU, as rr-offline.sh replays it (same command line, tap in a private
# namespace, replay pinned to CPU 1, query-replay once a second), and print
# one JSON line: wall, CPU (user+sys, all threads), context switches/s,
# console identical to the recording's.
#
#   bash rr-replay.sh LOGDIR NAME TAG QEMU [qemu args...]
# Env: SHIFT (default 4), PERF=1 (perf record -g the replay into TAG.perf.data)
set -euo pipefail
dir=$1; name=$2; tag=$3; qemu=$4; shift 4
g=/work/main/build/guest
shift_=${SHIFT:-4}; append="console=ttyS0 quiet panic=-1 ft.ip=10.9.9.9/24 ${APPEND-}"
cd "$dir"
q=("$qemu" -M pc -accel tcg -cpu qemu64 -smp 1 -m 256 -nographic -nodefaults
   -no-user-config -kernel "$g/vmlinuz" -initrd "$g/initrd.img" -append "$append" "$@")
ns=rrrep$$
ip netns add "$ns"
trap 'ip netns del "$ns" 2>/dev/null || true' EXIT
ip -n "$ns" link set lo up
ip -n "$ns" tuntap add dev t0 mode tap
ip -n "$ns" addr add 10.9.9.1/24 dev t0
ip -n "$ns" link set t0 up
q+=(-netdev tap,id=n0,ifname=t0,script=no,downscript=no
    -device virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,tx=timer
    -object filter-replay,id=r0,netdev=n0)
poll() {
  python3 - "$1" <<'PY'
import json, socket, sys, time
path = sys.argv[1]
for _ in range(400):
    try:
        s = socket.socket(socket.AF_UNIX); s.connect(path); break
    except OSError: time.sleep(0.02)
f = s.makefile("rw"); f.readline()
f.write('{"execute":"qmp_capabilities"}\n'); f.flush(); f.readline()
while True:
    try:
        f.write('{"execute":"query-replay"}\n'); f.flush(); l = f.readline()
        if not l: break
    except Exception: break
    time.sleep(1)
PY
}
pre=()
[ "${PERF:-0}" = 1 ] && pre=(perf record -g -o "$tag.perf.data" --)
rm -f "$tag.con" "$tag.time"
l0=$(cut -d' ' -f1 /proc/loadavg)
ip netns exec "$ns" /usr/bin/time -f '%e %U %S %w %c' -o "$tag.time" "${pre[@]}" taskset -c 1 "${q[@]}" \
  -icount "shift=$shift_,rr=replay,rrfile=$name.rr" -serial "file:$tag.con" \
  -qmp "unix:$tag.q,server=on,wait=off" 2>"$tag.err" &
qp=$!; poll "$tag.q" & pp=$!
wait "$qp" || true; wait "$pp" || true
l1=$(cut -d' ' -f1 /proc/loadavg)
same=no; cmp -s "$name.rec.con" "$tag.con" && same=yes
read -r wall user sys vcs ivcs <"$tag.time"
printf '{"log":"%s","tag":"%s","wall_s":%s,"cpu_s":%.2f,"cs_per_s":%.0f,"console_identical":"%s","load1":["%s","%s"]}\n' \
  "$name" "$tag" "$wall" "$(echo "$user + $sys" | bc)" "$(echo "($vcs + $ivcs) / $wall" | bc)" "$same" "$l0" "$l1"
