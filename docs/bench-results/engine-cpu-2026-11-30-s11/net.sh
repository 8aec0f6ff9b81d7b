#!/bin/bash
# Network-log check (the idle-guest case patch 0002 made fast): each build
# records and replays a network log (rr-offline.sh), then each log is replayed
# by the other build too (rr-replay.sh). Then the md5 log recorded by "final"
# in the A/B is replayed by "base" (the recorded format is unchanged).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); bin=/var/tmp/cpuwork-bin; work=/var/tmp/cpuw/net; mkdir -p $work
args=(-rtc clock=vm -name rr,debug-threads=on)
export NET=1 APPEND= LOAD="req 300 get 60 put 30"
for t in base final; do
  OUT=$work QEMU=$bin/$t nice -n 19 bash /work/main/test/bench/rr-offline.sh net-$t 30 "${args[@]}" | tee -a $here/raw/net.jsonl
done
nice -n 19 bash $here/rr-replay.sh $work net-base net-base-by-final $bin/final "${args[@]}" | tee -a $here/raw/net.jsonl
nice -n 19 bash $here/rr-replay.sh $work net-final net-final-by-base $bin/base "${args[@]}" | tee -a $here/raw/net.jsonl
APPEND= nice -n 19 bash $here/rr-replay.sh /var/tmp/cpuw/ab md5-final-1 md5-final-1-by-base $bin/base "${args[@]}" | tee -a $here/raw/cross.jsonl
