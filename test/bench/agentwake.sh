#!/bin/bash
# Who wakes during the protected phase of `ftvmd bench cpu`, and whom it preempts
# (docs/benchmarks.md, "Agent B's wake-ups", session 13). Hold the lab queue around it:
#
#   flock -w 3600 /run/ftvmd-e2e.queue bash test/bench/agentwake.sh OUT [FTVMD [BENCH-ARG...]]
#
# Runs `FTVMD bench cpu --min-run 30s --runs 1 BENCH-ARG...`; when the backup's replaying
# QEMU has run for DELAY seconds (default 30: past the boot catch-up, inside the timed
# md5 runs) it records `perf record -e sched:sched_switch -e sched:sched_wakeup -a -g`
# for SECS seconds (default 20) and takes test/bench/taskstats.py readings of both
# agents and both QEMUs around it. Then `agentwake.py` (beside this script) summarises:
# OUT/summary.txt. OUT keeps the bench's output (bench.txt), the readings and the
# perf data.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$1; ftvmd=${2:-$here/../../build/ftvmd}; shift $(( $# >= 2 ? 2 : $# ))
delay=${DELAY:-30}; secs=${SECS:-20}
mkdir -p "$out"
"$ftvmd" bench cpu --min-run 30s --runs 1 "$@" >"$out/bench.txt" 2>&1 &
bp=$!
# The lab's QEMUs are children of the lab's agents (processes named ftvmd).
qemu_of() { # MODE: the pid of the lab QEMU recording or replaying
  local p
  for p in $(pgrep -f "rr=$1,rrfile=/var/lib/ftvmd-lab/" || true); do
    if [ "$(cat /proc/"$(awk '{print $4}' /proc/$p/stat 2>/dev/null)"/comm 2>/dev/null)" = ftvmd ]; then
      echo "$p"; return 0
    fi
  done
  return 0
}
trap 'kill $bp 2>/dev/null' EXIT
rep=
while kill -0 $bp 2>/dev/null; do
  rep=$(qemu_of replay); [ -n "$rep" ] && break; sleep 1
done
[ -n "$rep" ] || { echo "no replaying QEMU seen"; wait $bp; exit 1; }
rec=$(qemu_of record)
agb=$(awk '{print $4}' /proc/$rep/stat); aga=$(awk '{print $4}' /proc/$rec/stat)
echo "record $rec (agent A $aga), replay $rep (agent B $agb) at $(date -u +%T)" | tee "$out/pids.txt"
sleep "$delay"
python3 "$here/taskstats.py" snap $aga $agb $rec $rep >"$out/ts0.json"
perf record -q -e sched:sched_switch -e sched:sched_wakeup -a -g -o "$out/perf.data" -- sleep "$secs" 2>"$out/perf.err" || true
python3 "$here/taskstats.py" snap $aga $agb $rec $rep >"$out/ts1.json"
echo "perf $(date -u +%T)" >>"$out/pids.txt"
wait $bp || echo "bench exited $?" >>"$out/pids.txt"
trap - EXIT
python3 "$here/taskstats.py" diff "$out/ts0.json" "$out/ts1.json" >"$out/taskstats.txt"
perf script -i "$out/perf.data" -F tid,pid,comm,time,event,trace,ip,sym 2>/dev/null |
  python3 "$here/agentwake.py" "$out/ts0.json" "$out/ts1.json" "$secs" >"$out/summary.txt"
cat "$out/summary.txt"; tail -3 "$out/bench.txt"
