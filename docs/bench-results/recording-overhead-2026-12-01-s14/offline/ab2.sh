#!/bin/bash
# offline A/B: recording (rr=record, as every primary runs) vs no record/replay at all
out=/var/tmp/h43/ab2; mkdir -p $out
for r in 1 2 3; do
  for v in rr norr; do
    x=1; [ $v = norr ] && x=0
    echo "# round $r $v $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    RR=$x python3 /var/tmp/h43/rrmb.py $v-$r $out get 20 get 100 put 100
  done
done
