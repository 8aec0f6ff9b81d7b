#!/bin/bash
# offline A/B: the unprotected primary's QEMU config (base) vs the protected one's
# (+ filter-dump to a FIFO read on CPU 0), alternating
out=/var/tmp/h43/ab1; mkdir -p $out
for r in 1 2 3; do
  for v in base dump; do
    d=0; [ $v = dump ] && d=1
    echo "# round $r $v $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    DUMP=$d python3 /var/tmp/h43/rrmb.py $v-$r $out get 20 get 100 put 100
  done
done
