#!/bin/bash
# The measurements of this study (README.md). Every QEMU at nice 19; the
# recording on CPU 0, the replay on CPU 1 (rr-offline.sh's taskset).
#   bash run.sh record   # one md5 log recorded by base (and its replay): the fixed log
#   bash run.sh cross ROUNDS TAG...   # that log replayed by each TAG in turn, ROUNDS times
#   bash run.sh perf TAG  # perf record -g of one replay of the fixed log
#   bash run.sh ab ROUNDS TAG... # rr-offline-ab.sh: each TAG records and replays its own log
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=/var/tmp/cpuwork-bin
work=/var/tmp/cpuw; mkdir -p $work
raw=$here/raw; mkdir -p $raw
args=(-rtc clock=vm -name rr,debug-threads=on)
export NET=1 APPEND= LOAD="md5 12"
case $1 in
  record)
    OUT=$work/fixed QEMU=$bin/base nice -n 19 bash /work/main/test/bench/rr-offline.sh L 40 "${args[@]}" | tee -a $raw/record-fixed.jsonl ;;
  cross)
    rounds=$2; shift 2
    for r in $(seq "$rounds"); do
      for t in "$@"; do
        nice -n 19 bash $here/rr-replay.sh $work/fixed L "$t-$r" $bin/$t "${args[@]}" | tee -a $raw/cross.jsonl
      done
    done ;;
  perf)
    PERF=1 nice -n 19 bash $here/rr-replay.sh $work/fixed L "perf-$2" $bin/$2 "${args[@]}" | tee -a $raw/perf.jsonl
    cd $work/fixed
    perf report -i "perf-$2.perf.data" --no-children --sort comm,sym --stdio 2>/dev/null | grep -v '^$' | head -120 >$raw/perf-$2-sym.txt
    perf report -i "perf-$2.perf.data" --no-children --sort comm --stdio 2>/dev/null | grep -v '^#' | grep -v '^$' | head -20 >$raw/perf-$2-comm.txt ;;
  ab)
    rounds=$2; shift 2
    eng=""; for t in "$@"; do eng="$eng $t=$bin/$t"; done
    OUT=$work/ab ENGINES="$eng" nice -n 19 bash /work/main/test/bench/rr-offline-ab.sh "$rounds" md5 40 "${args[@]}" 2>&1 | tee -a $raw/ab.txt ;;
  *) sed -n 2,9p "$0"; exit 2 ;;
esac
