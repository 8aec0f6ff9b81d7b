#!/usr/bin/env bash
# Disk smoke test of the lab guest image: durable records on a virtio-blk disk behind
# blkreplay, under plain TCG and under record/replay. Exits non-zero on any failure.
#
#   test/guest/disk-smoke.sh [OUTDIR]     (default OUTDIR: <repo>/build/guest)
#
# Env: DISK_SMOKE_PORT (default 17000; replay uses PORT+1), DISK_SMOKE_N (records timed, 100).
#
# 1. builds the image (cached) with build.sh and makes an empty 64M qcow2;
# 2. plain TCG (no icount) on a copy: "disk: /dev/vda 67108864" on the console, then
#    rec/recget/reccount over user-mode net (hostfwd 127.0.0.1:PORT -> guest :7000) and
#    N timed "rec" round trips on one connection; QMP query-blockstats must show at least
#    one FLUSH per rec (the O_SYNC writes really reach the device);
# 3. the same under -icount shift=4,rr=record (tx=timer, filter-replay), on another copy;
#    QEMU is then stopped with SIGTERM (a clean, recorded shutdown);
# 4. replays that log (rr=replay) on a third copy of the empty image until QEMU exits at
#    the recorded shutdown (or reports the log is over), then requires the replayed image
#    to equal the recorded one: qemu-img compare (guest-visible content) and cmp (bytes).
# Every QEMU it starts is killed; temporaries are removed unless DISK_SMOKE_KEEP=1.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
outdir=${1:-$repo/build/guest}
port=${DISK_SMOKE_PORT:-17000}
nrec=${DISK_SMOKE_N:-100}
size=64M
size_bytes=67108864

tmp=$(mktemp -d /tmp/ftguest-disk-smoke.XXXXXX)
qpid=

log() { printf 'disk-smoke: %s\n' "$*" >&2; }
fail() {
  printf 'disk-smoke: FAIL: %s\n' "$*" >&2
  if [ -n "${serial:-}" ] && [ -f "$serial" ]; then
    echo "--- last console lines ($serial) ---" >&2; tail -n 20 "$serial" >&2
  fi
  [ -n "${qlog:-}" ] && [ -s "$qlog" ] && { echo "--- $qlog ---" >&2; tail -n 20 "$qlog" >&2; }
  exit 1
}
stop_qemu() {
  [ -n "$qpid" ] || return 0
  kill "$qpid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true
  qpid=
}
cleanup() {
  exec 3>&- 2>/dev/null || true
  stop_qemu
  if [ -n "${DISK_SMOKE_KEEP:-}" ]; then log "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 not installed"
command -v qemu-img >/dev/null || fail "qemu-img not installed (qemu-utils)"
command -v nc >/dev/null || fail "nc not installed (netcat-openbsd)"
command -v python3 >/dev/null || fail "python3 not installed (parses QMP answers)"

now() { echo "$EPOCHREALTIME"; }
since() { awk -v s="$1" -v n="$EPOCHREALTIME" 'BEGIN{printf "%.2f", n-s}'; }

# boot NAME IMAGE HOSTPORT -- extra qemu args: QEMU in the background, console to $serial.
boot() {
  local name=$1 img=$2 hport=$3; shift 3
  serial=$tmp/$name.console qlog=$tmp/$name.qemu.log
  : >"$serial"
  t0=$(now)
  qemu-system-x86_64 -M pc -accel tcg -m 256 -display none -no-reboot \
    -monitor none -serial "file:$serial" \
    -kernel "$outdir/vmlinuz" -initrd "$outdir/initrd.img" \
    -append "console=ttyS0 quiet panic=-1 ft.ip=10.0.2.15/24 ft.gw=10.0.2.2" \
    -drive "file=$img,if=none,id=img0,format=qcow2" \
    -drive driver=blkreplay,if=none,image=img0,id=blk0 -device virtio-blk-pci,drive=blk0 \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$hport-:7000" \
    -device virtio-net-pci,netdev=n0,tx=timer "$@" </dev/null >"$qlog" 2>&1 &
  qpid=$!
}

# wait_for PATTERN TIMEOUT: a console line matching PATTERN (grep -E).
wait_for() {
  local pat=$1 limit=$2 start; start=$(now)
  while ! grep -Eq "$pat" "$serial"; do
    kill -0 "$qpid" 2>/dev/null || fail "QEMU exited before '$pat'"
    awk -v s="$start" -v n="$EPOCHREALTIME" -v l="$limit" 'BEGIN{exit !(n-s > l)}' \
      && fail "no '$pat' on the console within ${limit}s"
    sleep 0.1
  done
}

# session NAME: the protocol checks and the timed records against a booted guest.
# Sets rec_ms (mean ms per rec round trip).
session() {
  local name=$1 got want i line start
  # hostfwd accepts before the guest does: retry until the guest answers.
  for _ in $(seq 30); do
    got=$(printf 'ping\n' | nc -q2 -w5 127.0.0.1 "$port" 2>/dev/null || true)
    [ "$got" = pong ] && break
    sleep 1
  done
  [ "$got" = pong ] || fail "$name: no pong from 127.0.0.1:$port (got '$got')"

  got=$(printf 'disk\nrec 1 hello\nrecget 1\nreccount\nrecget 2\n' | nc -q2 -w10 127.0.0.1 "$port" || true)
  want=$(printf 'disk %s\nrec ok 1\nrec 1 hello\nreccount 0\nrec 2 missing' "$size_bytes")
  [ "$got" = "$want" ] || fail "$name: session 1: got '$got', want '$want'"
  log "  $name: disk/rec/recget/reccount OK"

  # Timed: nrec sequential round trips (each rec answered only once durable).
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  start=$(now)
  for ((i = 0; i < nrec; i++)); do
    printf 'rec %d record-%d-%s\n' "$i" "$i" "$name" >&3
    IFS= read -r -t 30 line <&3 || fail "$name: no answer to rec $i"
    [ "$line" = "rec ok $i" ] || fail "$name: rec $i: got '$line'"
  done
  rec_ms=$(awk -v s="$start" -v n="$EPOCHREALTIME" -v k="$nrec" 'BEGIN{printf "%.1f", (n-s)*1000/k}')
  printf 'reccount\nrecget %d\nquit\n' "$((nrec - 1))" >&3
  IFS= read -r -t 30 line <&3 || fail "$name: no answer to reccount"
  [ "$line" = "reccount $nrec" ] || fail "$name: got '$line', want 'reccount $nrec'"
  IFS= read -r -t 30 line <&3 || fail "$name: no answer to recget"
  [ "$line" = "rec $((nrec - 1)) record-$((nrec - 1))-$name" ] || fail "$name: recget: got '$line'"
  exec 3>&-
  log "  $name: $nrec recs, ${rec_ms} ms per rec round trip; reccount $nrec"
}

# slot_magic IMG N: the first 4 bytes of slot N of a qcow2 image.
slot_magic() {
  qemu-img convert -f qcow2 -O raw "$1" "$tmp/raw.img"
  dd if="$tmp/raw.img" bs=512 skip="$2" count=1 status=none | head -c4
  rm -f "$tmp/raw.img"
}

log "building guest image into $outdir"
bash "$here/build.sh" "$outdir"
qemu-img create -q -f qcow2 "$tmp/empty.qcow2" "$size"
for c in plain rec rep; do cp "$tmp/empty.qcow2" "$tmp/$c.qcow2"; done

# --- 1. plain TCG -----------------------------------------------------------------------
log "1/3: plain TCG"
boot plain "$tmp/plain.qcow2" "$port" -qmp "unix:$tmp/qmp.sock,server=on,wait=off"
wait_for '^ftguest ready' 180
ready_plain=$(since "$t0")
grep -q "^disk: /dev/vda $size_bytes\b" "$serial" || fail "no 'disk: /dev/vda $size_bytes' on the console"
session plain
ms_plain=$rec_ms
# Durability: each rec is an O_SYNC write, so the guest must have sent a FLUSH per rec.
flushes=$(printf '{"execute":"qmp_capabilities"}\n{"execute":"query-blockstats"}\n' \
  | nc -q1 -U "$tmp/qmp.sock" | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l).get("return")
    for d in r if isinstance(r, list) else []:
        if d.get("device") == "blk0":
            print(d["stats"]["flush_operations"])' || true)
[ -n "$flushes" ] && [ "$flushes" -ge "$nrec" ] \
  || fail "plain: $nrec recs but only '${flushes}' flushes reached the disk (query-blockstats)"
log "  plain: $flushes flushes reached the disk for $((nrec + 1)) recs"
stop_qemu

# --- 2. record --------------------------------------------------------------------------
log "2/3: rr=record (icount shift=4, tx=timer, filter-replay)"
rropts=(-object filter-replay,id=r0,netdev=n0)
boot record "$tmp/rec.qcow2" "$port" -icount "shift=4,rr=record,rrfile=$tmp/x.rr" "${rropts[@]}"
wait_for '^ftguest ready' 300
ready_rec=$(since "$t0")
grep -q "^disk: /dev/vda $size_bytes\b" "$serial" || fail "record: no disk line on the console"
session record
ms_rec=$rec_ms
rec_t0=$t0
stop_qemu # SIGTERM: QEMU records the shutdown and flushes the qcow2
rec_secs=$(since "$rec_t0")
[ -s "$tmp/x.rr" ] || fail "rr log $tmp/x.rr is empty"
[ "$(slot_magic "$tmp/rec.qcow2" 1)" = FTRC ] || fail "slot 1 of the recorded image has no FTRC record"
log "  rr log $(stat -c %s "$tmp/x.rr") bytes, recorded ${rec_secs}s"

# --- 3. replay --------------------------------------------------------------------------
log "3/3: rr=replay of the log on a copy of the empty image"
boot replay "$tmp/rep.qcow2" "$((port + 1))" -icount "shift=4,rr=replay,rrfile=$tmp/x.rr" "${rropts[@]}"
limit=$(awk -v r="$rec_secs" 'BEGIN{printf "%d", r*3 + 120}')
start=$(now)
ended=
while kill -0 "$qpid" 2>/dev/null; do
  if grep -q 'replay file is over' "$qlog"; then ended="log over"; break; fi
  awk -v s="$start" -v n="$EPOCHREALTIME" -v l="$limit" 'BEGIN{exit !(n-s > l)}' \
    && fail "replay not finished within ${limit}s"
  sleep 0.2
done
[ -n "$ended" ] || ended="QEMU exited at the recorded shutdown"
stop_qemu
rep_secs=$(since "$start")
log "  replay ended after ${rep_secs}s ($ended)"
grep -q "^disk: /dev/vda $size_bytes\b" "$serial" || fail "replay: no disk line on the console"
grep -Eq '^ftguest counter [0-9]+' "$serial" || fail "replay: guest never ran"
if diff <(grep '^ftguest counter' "$tmp/record.console") <(grep '^ftguest counter' "$serial") >/dev/null; then
  log "  replayed console counters equal the recorded ones"
else
  fail "replayed console counters differ from the recorded ones"
fi

qemu-img compare -q -f qcow2 -F qcow2 "$tmp/rec.qcow2" "$tmp/rep.qcow2" \
  || fail "qemu-img compare: replayed image differs from the recorded one"
if qemu-img compare -q -f qcow2 -F qcow2 "$tmp/empty.qcow2" "$tmp/rec.qcow2" 2>/dev/null; then
  fail "recorded image is still empty"
fi
sha_rec=$(sha256sum <"$tmp/rec.qcow2" | cut -c1-16)
sha_rep=$(sha256sum <"$tmp/rep.qcow2" | cut -c1-16)
cmp -s "$tmp/rec.qcow2" "$tmp/rep.qcow2" \
  || fail "qcow2 files differ byte-wise (sha256 $sha_rec vs $sha_rep) though the content matches"
log "  images equal: qemu-img compare OK, cmp OK (sha256 $sha_rec...)"

log "PASS: rec round trip ${ms_plain} ms (plain TCG) vs ${ms_rec} ms (rr record), $nrec records;" \
  "ready ${ready_plain}s / ${ready_rec}s; replay matched the recording"
