#!/bin/bash
# offline A/B: engine 0001-0013 (base) vs + keep HF_SS32 set in 64-bit mode (ss32),
# both built from the same tree, alternating
out=/var/tmp/h43/ab4; mkdir -p $out
for r in 1 2 3 4; do
  for v in base ss32; do
    echo "# round $r $v $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    QEMU=/var/tmp/h43/bin/qemu-$v python3 /var/tmp/h43/rrmb.py $v-$r $out get 20 get 100 put 100
  done
done
