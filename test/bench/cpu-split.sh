#!/bin/bash
# Offline experiments for docs/benchmarks.md's "Where the lab's replay loses its CPU"
# (session 9): how much of the lab's replay cost is this machine's shared hardware,
# how much the engine and how much the conditions the agent puts the replay in.
#
#   bash test/bench/cpu-split.sh spin ROUNDS SECONDS
#     A CPU-bound loop (test/bench/spin.c; registers only, and dependent reads over
#     512 KiB and 16 MiB) on CPU 0 alone, then with the same loop on CPU 1, in turn,
#     ROUNDS times: work per CPU second alone vs paired.
#
#   bash test/bench/cpu-split.sh replay RUNDIR ROUNDS VARIANT...
#     `ftvmd rr check` of a recording (a primary's run directory, e.g. the one
#     test/bench/cpuprobe keeps), the replaying QEMU pinned to CPU 1, each VARIANT in
#     turn per round. VARIANT: alone (query-replay once a second, nothing else
#     running), poll (query-replay + query-status every 20 ms: ~100 QMP commands a
#     second, as the backup agent's 10 ms query-replay), hog (alone, with spin alu on
#     CPU 0), pair (a second replay of the same log on CPU 0 at the same time; both
#     are reported).
#
# One JSON line per measurement, with the 1-minute load average before and after.
# Replays report the QEMU's CPU seconds (/usr/bin/time: all threads), the replayed
# instructions and CPU nanoseconds per thousand instructions (cpu_ns_per_kinstr).
# Env: QEMU (the engine to replay on; default ftvmd's current), FTVMD (default
# build/ftvmd), OUT (work dir, default /tmp/cpu-split).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
out=${OUT:-/tmp/cpu-split}; mkdir -p "$out"
ftvmd=${FTVMD:-$repo/build/ftvmd}
load() { cut -d' ' -f1 /proc/loadavg; }
spin=$out/spin
[ -x "$spin" ] || gcc -O2 -o "$spin" "$repo/test/bench/spin.c"

spin_rounds() {
  local rounds=$1 secs=$2
  for r in $(seq "$rounds"); do
    for mode in alu mem:512 mem:16384; do
      l0=$(load)
      a=$(taskset -c 0 "$spin" "$mode" "$secs")
      echo "$a" | jq -c --arg l0 "$l0" --arg l1 "$(load)" --argjson r "$r" '{exp:"spin", with:"alone", round:$r, load1:[$l0,$l1]} + .'
      l0=$(load)
      taskset -c 1 "$spin" "$mode" "$secs" >"$out/spin-other.json" &
      b=$(taskset -c 0 "$spin" "$mode" "$secs")
      wait
      echo "$b" | jq -c --arg l0 "$l0" --arg l1 "$(load)" --argjson r "$r" --slurpfile o "$out/spin-other.json" \
        '{exp:"spin", with:"paired", round:$r, load1:[$l0,$l1], other_m_iter_per_cpu_s:$o[0].m_iter_per_cpu_s} + .'
    done
  done
}

# engine CPU TAG: a copy of the engine's prefix whose binary runs the real one pinned
# to CPU and timed, so rr check sees the same engine (its ENGINE file).
engine() {
  local cpu=$1 tag=$2
  local real=${QEMU:-/opt/ftvmd/qemu/current/bin/qemu-system-x86_64}
  real=$(readlink -f "$real")
  local pre=$out/eng-$tag
  mkdir -p "$pre/bin"
  cp "$(dirname "$(dirname "$real")")/ENGINE" "$pre/ENGINE"
  cat >"$pre/bin/qemu-system-x86_64" <<WRAP
#!/bin/bash
for a in "\$@"; do [ "\$a" = --version ] && exec "$real" "\$@"; done
exec /usr/bin/time -o "$pre/time" -f '%e %U %S %w %c' taskset -c $cpu "$real" "\$@"
WRAP
  chmod +x "$pre/bin/qemu-system-x86_64"
  echo "$pre/bin/qemu-system-x86_64"
}

# check RUNDIR CPU POLL TAG: one rr check; prints its JSON line.
check() {
  local dir=$1 cpu=$2 poll=$3 tag=$4
  local bin; bin=$(engine "$cpu" "$tag")
  "$ftvmd" rr check "$dir" --qemu "$bin" --poll "$poll" --quiet --stall 60s >"$out/check-$tag.out" 2>"$out/check-$tag.err" || true
  local res; res=$(tail -n1 "$out/check-$tag.out")
  read -r wall user sys vcs ivcs <"$out/eng-$tag/time"
  echo "$res" | jq -c --argjson wall "$wall" --argjson cpu "$(echo "$user + $sys" | bc)" --argjson cs "$(echo "($vcs + $ivcs) / $wall" | bc)" \
    '{verdict, console_same:.console.identical, replayed_icount, log_events, replay_wall_s:$wall, replay_cpu_s:$cpu, cs_per_s:$cs,
      cpu_ns_per_kinstr:($cpu * 1e12 / .replayed_icount)}'
}

replay_rounds() {
  local dir=$1 rounds=$2; shift 2
  for r in $(seq "$rounds"); do
    for v in "$@"; do
      l0=$(load)
      case $v in
        alone) line=$(check "$dir" 1 1s a) ;;
        poll) line=$(check "$dir" 1 20ms a) ;;
        hog)
          taskset -c 0 "$spin" alu 600 >/dev/null & hog=$!
          line=$(check "$dir" 1 1s a)
          kill "$hog"; wait "$hog" 2>/dev/null || true ;;
        pair)
          check "$dir" 0 1s b >"$out/pair-other.json" &
          line=$(check "$dir" 1 1s a)
          wait
          line=$(echo "$line" | jq -c --slurpfile o "$out/pair-other.json" '. + {other_cpu0:$o[0]}') ;;
        *) echo "unknown variant $v" >&2; exit 2 ;;
      esac
      echo "$line" | jq -c --arg v "$v" --argjson r "$r" --arg l0 "$l0" --arg l1 "$(load)" '{exp:"replay", variant:$v, round:$r, load1:[$l0,$l1]} + .'
    done
  done
}

case ${1:-} in
  spin) spin_rounds "$2" "$3" ;;
  replay) shift; replay_rounds "$@" ;;
  *) sed -n '2,25p' "$0" >&2; exit 2 ;;
esac
