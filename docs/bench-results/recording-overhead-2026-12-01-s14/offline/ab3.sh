#!/bin/bash
# offline A/B: the recording alone on CPU 0 vs beside a co-runner there (20 % of the
# core in 0.1 ms bursts every 0.5 ms over 8 MiB: a model of agent A's share)
out=/var/tmp/h43/ab3; mkdir -p $out
for r in 1 2 3; do
  for v in alone corun; do
    c=""; [ $v = corun ] && c="0.2 500 8192"
    echo "# round $r $v $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    CORUN="$c" python3 /var/tmp/h43/rrmb.py $v-$r $out get 20 get 100 put 100
  done
done
