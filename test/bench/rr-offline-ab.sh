#!/bin/bash
# Alternate engines in one run of test/bench/rr-offline.sh: for each round, each engine
# in turn records and replays the same kind of guest (A B C A B C ...), so drift in the
# machine's load hits every engine alike. One JSON line per run (rr-offline.sh's, plus
# the engine's label, the round, and the load average before and after), then per
# engine the median and range over rounds of replay/record by wall time (record_s /
# replay_s: the record ran for a fixed time) and by CPU time (record_cpu_s /
# replay_cpu_s: what a replayed instruction costs against a recorded one, which the
# machine's other load disturbs less), and of the replay's context switches per second.
#
#   ENGINES="debian=/usr/bin/qemu-system-x86_64 ours=/opt/ftvmd/qemu/KEY/bin/qemu-system-x86_64" \
#     bash test/bench/rr-offline-ab.sh ROUNDS NAME SECONDS [qemu args...]
#
# Every other variable (NET, LOAD, SHIFT, APPEND, FLUSHLIB) goes to rr-offline.sh. Each
# QEMU is pinned by rr-offline.sh (taskset: recording on CPU 0, replay on CPU 1) but
# shares its core with whatever else runs on the machine.
set -euo pipefail
rounds=$1; name=$2; secs=$3; shift 3
here=$(cd "$(dirname "$0")" && pwd)
[ -n "${ENGINES:-}" ] || { echo "rr-offline-ab: set ENGINES=\"label=/path/to/qemu ...\"" >&2; exit 2; }
out=${OUT:-/tmp/rr-offline-ab}; mkdir -p "$out"
res=$out/$name.jsonl; : >"$res"
load() { cut -d' ' -f1 /proc/loadavg; }
for r in $(seq "$rounds"); do
  for e in $ENGINES; do
    label=${e%%=*}; bin=${e#*=}
    l0=$(load)
    line=$(OUT=$out QEMU=$bin bash "$here/rr-offline.sh" "$name-$label-$r" "$secs" "$@")
    echo "$line" | jq -c --arg e "$label" --argjson r "$r" --argjson l0 "$l0" --argjson l1 "$(load)" \
      '{engine:$e, round:$r, load1_before:$l0, load1_after:$l1} + .' | tee -a "$res"
  done
done
jq -s -c -L "$here" 'include "median";
  group_by(.engine)[] | . as $runs | {
    engine: .[0].engine, runs: length,
    consoles_identical: (map(.console_identical == "yes") | all),
    wall_ratio: (map(.record_s / .replay_s) | {median: median, min: min, max: max}),
    cpu_ratio: (map(.record_cpu_s / .replay_cpu_s) | {median: median, min: min, max: max}),
    replay_s: (map(.replay_s) | {median: median, min: min, max: max}),
    replay_cpu_s: (map(.replay_cpu_s) | {median: median, min: min, max: max}),
    replay_cs_per_s: (map(.replay_cs_per_s) | {median: median, min: min, max: max}),
    load1: ([$runs[] | .load1_before, .load1_after] | {min: min, max: max})
  }' "$res"
