#!/bin/bash
# record + replay per build, alternating: whole-run CPU of each side (boot, then LOAD)
cd /work/wt-h43
export NET=1 LOAD="get 200 put 100" OUT=/var/tmp/h43/ab5 APPEND=""
for r in 1 2; do
  for v in base ss32; do
    echo "# round $r $v $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    QEMU=/var/tmp/h43-prefix/$v/bin/qemu-system-x86_64 bash test/bench/rr-offline.sh $v-$r 45 -rtc clock=vm
  done
done
