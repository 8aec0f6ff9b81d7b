#!/bin/bash
# `ftvmd bench net` N times, each on a fresh lab, then the spread: one round trip
# figure moves by more than the targets between fresh labs on this machine, so a
# single run proves little. Prints each run's JSON line, then one summary line with
# min / median / max of the figures #4 has targets for and how many runs met them.
#
#   bash test/bench/net-runs.sh N [bench net flags...]    e.g. 7 --requests 2000 --mb 100
#
# Env: FT (the ftvmd binary, default build/ftvmd), OUT (file the run lines are
# appended to, default a temp file). Needs root, the lab image (bash test/setup.sh)
# and nothing else using the lab.
set -euo pipefail
n=$1; shift
repo=$(cd "$(dirname "$0")/../.." && pwd); cd "$repo"
ft=${FT:-$repo/build/ftvmd}
out=${OUT:-$(mktemp)}
runs=()
for i in $(seq "$n"); do
  echo "net-runs: run $i of $n ($(date -u +%H:%M:%S) UTC)" >&2
  line=$("$ft" bench net "$@" 2>>"$out.log" | tail -n1)
  jq -e .protected >/dev/null <<<"$line" || { echo "net-runs: run $i printed no summary (see $out.log)" >&2; exit 1; }
  echo "$line" | tee -a "$out"
  runs+=("$line")
done
printf '%s\n' "${runs[@]}" | jq -L "$repo/test/bench" -sc 'include "median";
  def spread(f): map(f) | {min: min, median: median, max: max};
  {runs: length,
   added_p50_ms: spread(.added_latency_p50_ms), added_p99_ms: spread(.added_latency_p99_ms),
   unprotected_p50_ms: spread(.unprotected.rtt_ms.p50), protected_p50_ms: spread(.protected.rtt_ms.p50),
   rule_hold_p50_ms: spread(.protected.output_rule_added_delay_p50_ms), rule_hold_p99_ms: spread(.protected.output_rule_added_delay_p99_ms),
   rtt_throttled_s: spread(.protected.rtt_throttled_s),
   guest_to_client_ratio: spread(.guest_to_client_ratio), client_to_guest_ratio: spread(.client_to_guest_ratio),
   runs_meeting_p50_target: map(select(.added_latency_p50_ms < 1)) | length,
   runs_meeting_p99_target: map(select(.added_latency_p99_ms < 5)) | length,
   invariant_failures: (map(.invariant_failures) | add)}'
