#!/bin/bash
# ab.sh OUTDIR NAME... : for each name, copy build/ftvmd-NAME to build/ftvmd and run bench net once under the lab queue
out=$1; shift
mkdir -p $out
cd /work/wt-h42
i=0
for n in "$@"; do
  i=$((i+1))
  flock -w 3600 /run/ftvmd-e2e.queue sh -c "cp build/ftvmd-$n build/ftvmd && uptime > $out/$i-$n.uptime && ./build/ftvmd bench net --requests 2000 --mb 100 --iperf-seconds 20 --unprotected-neighbour 1 --agent-arg=--data-path=tap > $out/$i-$n.txt 2>&1; uptime >> $out/$i-$n.uptime; top -bn1 | head -15 >> $out/$i-$n.uptime"
  sleep 5
done
