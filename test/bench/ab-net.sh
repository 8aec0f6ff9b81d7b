#!/bin/bash
# A/B two ftvmd builds on the lab with a protected guest: for each round and each
# build, a fresh lab, agents of that build, a guest protected from boot (A -> B); once
# the backup has settled (throttle released, lag under half the bound), N request/
# response round trips and a guest->client transfer from the client host. One JSON
# line per run, then one per build with the medians over rounds. Builds alternate so
# drift on this noisy machine hits both alike.
#
#   bash test/bench/ab-net.sh BIN_A BIN_B [ROUNDS=2] [REQUESTS=1500] [GET_MB=50]
#
# Needs root, the guest image and build/libftflush.so (bash test/setup.sh), and
# nothing else using the lab.
set -euo pipefail
a=$1; b=$2; rounds=${3:-2}; requests=${4:-1500}; mb=${5:-50}
repo=$(cd "$(dirname "$0")/../.." && pwd); cd "$repo"
. test/lab/lab.env
ftlab_lock "$@"
probe=$(mktemp -d)/netprobe
go build -o "$probe" ./test/bench/netprobe
for bin in "$a" "$b"; do [ -x "$bin" ] || { echo "ab-net: $bin is not an executable" >&2; exit 2; }; done

stop_all() {
  pkill -f "ftvmd agent --host" 2>/dev/null || true
  sleep 0.5
  bash test/lab/lab.sh down --purge >/dev/null 2>&1 || true
}
trap stop_all EXIT

up() { # bin: fresh lab, agents of bin, guest "ab" protected and settled
  local ft=$1
  stop_all
  bash test/lab/lab.sh up >/dev/null
  mountpoint -q /run/ftvmd-lab-cgroup || { mkdir -p /run/ftvmd-lab-cgroup; mount --rbind /sys/fs/cgroup /run/ftvmd-lab-cgroup; }
  "$ft" keys init --ca "$FTLAB_ROOT/ca" >/dev/null
  "$ft" keys issue a --ca "$FTLAB_ROOT/ca" --out "$FTLAB_DIR_A/keys" --ip "$FTLAB_IP_A" >/dev/null
  "$ft" keys issue b --ca "$FTLAB_ROOT/ca" --out "$FTLAB_DIR_B/keys" --ip "$FTLAB_IP_B" >/dev/null
  local h
  for h in a b; do
    local ns=$FTLAB_NS_A ip=$FTLAB_IP_A dir=$FTLAB_DIR_A cpus=$FTLAB_CPUS_A
    [ $h = b ] && ns=$FTLAB_NS_B ip=$FTLAB_IP_B dir=$FTLAB_DIR_B cpus=$FTLAB_CPUS_B
    ip netns exec "$ns" setsid "$ft" agent --host $h --state-dir "$dir" --listen "$ip:7800" --cpus "$cpus" \
      --flush-lib "$repo/build/libftflush.so" --cgroup-root /run/ftvmd-lab-cgroup --peer-timeout 3s \
      --shared-dir "$FTLAB_SHARED" >>"$FTLAB_ROOT/agent-$h.log" 2>&1 </dev/null 9>&- &
  done
  disown -a
  fa() { ip netns exec "$FTLAB_NS_A" "$ft" --socket "$FTLAB_SOCK_A" "$@"; }
  local i
  for i in $(seq 50); do fa status >/dev/null 2>&1 && break; sleep 0.2; done
  fa vm define ab --kernel "$repo/build/guest/vmlinuz" --initrd "$repo/build/guest/initrd.img" \
    --mac "$FTLAB_GUEST_MAC" --append "console=ttyS0 quiet panic=-1 ft.ip=$FTLAB_IP_GUEST/$FTLAB_PREFIX" >/dev/null
  fa protect ab --backup "$FTLAB_IP_B:7800" >/dev/null
  for i in $(seq 300); do grep -q "ftguest ready" "$FTLAB_DIR_A/run/ab.primary/console.log" 2>/dev/null && break; sleep 1; done
  local ok=0
  for i in $(seq 600); do
    local st; st=$(fa status ab --json)
    if jq -e '.vms[0] | .throttle_quota >= 1 and .lag_ms < .lag_bound_ms/2' <<<"$st" >/dev/null; then
      ok=$((ok+1)); [ $ok -ge 10 ] && return 0
    else ok=0; fi
    sleep 0.2
  done
  echo "ab-net: guest did not settle" >&2; return 1
}

status() { ip netns exec "$FTLAB_NS_A" "$1" --socket "$FTLAB_SOCK_A" status ab --json; }
throttled() { jq '.vms[0].throttled_sec' <<<"$1"; }
# hold P S0 S1: the P-quantile of the output rule's added delay between two status
# snapshots, as the top of its histogram bucket in ms (buckets double from 25 us).
hold() {
  jq -n --argjson p "$1" --argjson a "$2" --argjson b "$3" '
    ($a.vms[0].added_delay_hist // []) as $x | ($b.vms[0].added_delay_hist // []) as $y
    | [range(0; $y|length) | $y[.] - ($x[.] // 0)] as $d | ($d | add) as $n
    | if $n == 0 then null else
        (reduce range(0; $d|length) as $i ({c: 0, q: null};
          .c += $d[$i] | if .q == null and .c >= $p * $n then .q = $i else . end)).q as $i
        | 0.025 * pow(2; $i) end'
}

results=$(mktemp)
for r in $(seq "$rounds"); do
  for bin in "$a" "$b"; do
    up "$bin"
    s0=$(status "$bin"); rtt=$("$probe" rtt "$requests"); s1=$(status "$bin")
    get=$("$probe" get "$mb"); s2=$(status "$bin")
    jq -cn --arg bin "$bin" --argjson round "$r" --argjson rtt "$rtt" --argjson get "$get" \
      --argjson tr "$(echo "$(throttled "$s1") - $(throttled "$s0")" | bc)" \
      --argjson tg "$(echo "$(throttled "$s2") - $(throttled "$s1")" | bc)" \
      --argjson h50 "$(hold 0.5 "$s0" "$s1")" --argjson h99 "$(hold 0.99 "$s0" "$s1")" \
      '{bin:$bin, round:$round, rtt:$rtt, rtt_throttled_s:$tr, rtt_hold_p50_ms:$h50, rtt_hold_p99_ms:$h99, get:$get, get_throttled_s:$tg}' | tee -a "$results"
  done
done
for bin in "$a" "$b"; do
  jq -L "$repo/test/bench" -sc --arg bin "$bin" 'include "median";
    map(select(.bin==$bin)) as $x | def med(f): $x | map(f) | median;
    {bin:$bin, rounds:($x|length), rtt_p50_ms:med(.rtt.p50_ms), rtt_p99_ms:med(.rtt.p99_ms),
     rtt_hold_p50_ms:med(.rtt_hold_p50_ms), rtt_hold_p99_ms:med(.rtt_hold_p99_ms),
     get_MB_s:med(.get.MB_s), rtt_throttled_s:med(.rtt_throttled_s), get_throttled_s:med(.get_throttled_s)}' "$results"
done
