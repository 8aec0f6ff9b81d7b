#!/usr/bin/env bash
# Smoke test of the lab guest image (used by CI). Exits non-zero on any failure.
#
#   test/guest/smoke.sh [OUTDIR]     (default OUTDIR: <repo>/build/guest)
#
# 1. builds the image (cached) with build.sh;
# 2. boots it under plain TCG with no network: waits for "ftguest ready" and counters;
# 3. brings the lab up, boots the guest in ftlab-a on a tap in ftlab-a's br0 and asks it
#    "seq 1 hi" from ftlab-c, expecting "ok 1 1 hi", and runs iperf3 against the guest's
#    iperf3 server for a second each way;
# 4. same again under record/replay recording (-icount shift=4,rr=record, tx=timer,
#    filter-replay), which is how ftvmd runs the primary.
# Everything it starts is stopped; the lab is taken down again if this script brought it up.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
outdir=${1:-$repo/build/guest}
lab=$repo/test/lab/lab.sh
# shellcheck source=../lab/lab.env
. "$repo/test/lab/lab.env"
export PATH=$PATH:/usr/sbin:/sbin

tmp=$(mktemp -d /tmp/ftguest-smoke.XXXXXX)
qpid=
lab_was_up=
tap=ftsmoke0

log() { printf 'smoke: %s\n' "$*" >&2; }
fail() {
  printf 'smoke: FAIL: %s\n' "$*" >&2
  if [ -n "${serial:-}" ] && [ -f "$serial" ]; then
    echo "--- last console lines ($serial) ---" >&2; tail -n 30 "$serial" >&2
  fi
  exit 1
}

stop_qemu() {
  [ -n "$qpid" ] || return 0
  kill "$qpid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true
  qpid=
}
cleanup() {
  stop_qemu
  if [ -e "/run/netns/$FTLAB_NS_A" ]; then
    ip -n "$FTLAB_NS_A" link del "$tap" 2>/dev/null || true
  fi
  if [ -z "$lab_was_up" ] && [ -e "/run/netns/$FTLAB_NS_A" ]; then
    bash "$lab" down >/dev/null 2>&1 || true
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || fail "must run as root"
command -v qemu-system-x86_64 >/dev/null || fail "qemu-system-x86_64 not installed (apt-get install qemu-system-x86)"

# boot NAME [ns] -- extra qemu args: starts QEMU in the background, console to $serial.
boot() {
  local name=$1 ns=$2; shift 2
  serial=$tmp/$name.console
  : >"$serial"
  local pre=()
  [ -n "$ns" ] && pre=(ip netns exec "$ns")
  t0=$EPOCHREALTIME
  "${pre[@]}" qemu-system-x86_64 -M pc -accel tcg -m 256 -display none -no-reboot \
    -monitor none -serial "file:$serial" \
    -kernel "$outdir/vmlinuz" -initrd "$outdir/initrd.img" \
    -append "console=ttyS0 quiet panic=-1 ft.ip=$FTLAB_IP_GUEST/$FTLAB_PREFIX" \
    "$@" </dev/null >"$tmp/$name.qemu.log" 2>&1 &
  qpid=$!
}

# wait_for PATTERN TIMEOUT: waits for a console line matching PATTERN (grep -E).
wait_for() {
  local pat=$1 limit=$2 start=$EPOCHREALTIME
  while ! grep -Eq "$pat" "$serial"; do
    kill -0 "$qpid" 2>/dev/null || { cat "$tmp"/*.qemu.log >&2; fail "QEMU exited before '$pat'"; }
    awk -v s="$start" -v n="$EPOCHREALTIME" -v l="$limit" 'BEGIN{exit !(n-s > l)}' \
      && fail "no '$pat' on the console within ${limit}s"
    sleep 0.05
  done
}
elapsed() { awk -v s="$t0" -v n="$EPOCHREALTIME" 'BEGIN{printf "%.2f", n-s}'; }

# ask REQUEST EXPECTED: one request from the client namespace.
ask() {
  local req=$1 want=$2 got
  # The guest may still be answering ARP for the first time: wait until it pings.
  for _ in $(seq 20); do
    ip netns exec "$FTLAB_NS_C" ping -q -c1 -W1 "$FTLAB_IP_GUEST" >/dev/null 2>&1 && break
  done
  got=$(echo "$req" | ip netns exec "$FTLAB_NS_C" nc -N -w5 "$FTLAB_IP_GUEST" "$FTLAB_GUEST_PORT" || true)
  [ "$got" = "$want" ] || fail "'$req' from $FTLAB_NS_C: got '$got', want '$want'"
  log "  '$req' -> '$got'"
}

log "building guest image into $outdir"
bash "$here/build.sh" "$outdir"

# --- 1. plain TCG, no network ----------------------------------------------------------
log "boot 1/3: plain TCG, no network"
boot plain "" -net none
wait_for '^ftguest ready' 120
ready_plain=$(elapsed)
wait_for '^ftguest counter 3 uptime' 60
log "  ready after ${ready_plain}s; counters:"; grep '^ftguest counter' "$serial" | head -3 | sed 's/^/    /' >&2
stop_qemu

# --- 2. in the lab, on a tap in ftlab-a's br0 ------------------------------------------
if [ -e "/run/netns/$FTLAB_NS_A" ]; then lab_was_up=1; fi
bash "$lab" up
mktap() {
  ip -n "$FTLAB_NS_A" link del "$tap" 2>/dev/null || true
  ip -n "$FTLAB_NS_A" tuntap add dev "$tap" mode tap
  ip -n "$FTLAB_NS_A" link set "$tap" master "$FTLAB_BRIDGE" up
}
netargs=(-netdev "tap,id=n0,ifname=$tap,script=no,downscript=no")

log "boot 2/3: TCG in $FTLAB_NS_A, tap $tap on $FTLAB_BRIDGE"
mktap
boot lab "$FTLAB_NS_A" "${netargs[@]}" -device "virtio-net-pci,netdev=n0,mac=$FTLAB_GUEST_MAC"
wait_for '^ftguest ready' 120
ready_lab=$(elapsed)
grep -q "eth0 $FTLAB_IP_GUEST" "$serial" || fail "guest did not configure eth0"
ask 'seq 1 hi' 'ok 1 1 hi'
ask 'ping' 'pong'
ask 'seq 2 again' 'ok 2 2 again'
grep -q '^ftguest init: iperf3 -s on :5201' "$serial" || fail "the guest did not start iperf3's server"
for dir in '' -R; do
  out=$(ip netns exec "$FTLAB_NS_C" iperf3 -c "$FTLAB_IP_GUEST" -p 5201 -t 1 --connect-timeout 10000 $dir 2>&1) \
    || fail "iperf3 -c $FTLAB_IP_GUEST -t 1 $dir: $out"
  log "  iperf3 $dir: $(grep -E 'receiver$' <<<"$out" | awk '{print $7, $8}')"
done
stop_qemu

# --- 3. record/replay recording ----------------------------------------------------------
log "boot 3/3: rr=record in $FTLAB_NS_A (tx=timer, filter-replay)"
mktap
boot rr "$FTLAB_NS_A" -icount "shift=4,rr=record,rrfile=$tmp/x.rr" \
  "${netargs[@]}" -device "virtio-net-pci,netdev=n0,tx=timer,mac=$FTLAB_GUEST_MAC" \
  -object filter-replay,id=r0,netdev=n0
wait_for '^ftguest ready' 180
ready_rr=$(elapsed)
ask 'seq 1 hi' 'ok 1 1 hi'
wait_for '^ftguest counter 3 uptime' 60
stop_qemu
[ -s "$tmp/x.rr" ] || fail "rr log $tmp/x.rr is empty"
log "  rr log: $(stat -c %s "$tmp/x.rr") bytes"

log "PASS: ready after ${ready_plain}s (plain TCG), ${ready_lab}s (lab, virtio-net), ${ready_rr}s (rr record)"
