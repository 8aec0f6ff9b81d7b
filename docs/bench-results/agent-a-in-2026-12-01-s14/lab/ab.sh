#!/bin/bash
# ab.sh OUTDIR NAME... : for each name, copy build/ftvmd-NAME to build/ftvmd and run
# bench net once under the lab queue (a fresh lab per draw), in the order given.
out=$1; shift
mkdir -p $out
cd /work/wt-h45
i=0
for n in "$@"; do
  i=$((i+1))
  [ "$(date -u +%H%M)" -ge 0645 ] && { echo "past 06:45 UTC: stop"; break; }
  flock -w 3600 /run/ftvmd-e2e.queue sh -c "cp build/ftvmd-$n build/ftvmd && uptime > $out/$i-$n.uptime && date -u >> $out/$i-$n.uptime && ./build/ftvmd bench net --requests 2000 --mb 100 --iperf-seconds 20 --agent-arg=--data-path=tap > $out/$i-$n.txt 2>&1; uptime >> $out/$i-$n.uptime; date -u >> $out/$i-$n.uptime"
  sleep 5
done
