#!/bin/bash
# Quiet-window figures (session 13): 3 fresh labs of bench cpu per data path, 2 of bench net on tap.
set -u
cd /work/final || exit 1
out=/work/s13/final/out; mkdir -p $out
prog() { echo "$(date -u +%T) $* load=$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a $out/progress.log; }
prog "start $(git log --oneline -1) engine=$(readlink /opt/ftvmd/qemu/current)"
for i in 1 2; do
  for p in relay tap; do
    prog "cpu $p $i"
    ./build/ftvmd bench cpu --min-run 30s --runs 1 --agent-arg=--data-path=$p > $out/cpu-$p-$i.txt 2>&1
  done
done
for i in 1 2; do
  prog "net tap $i"
  ./build/ftvmd bench net --requests 2000 --mb 100 --iperf-seconds 20 --unprotected-neighbour 1 --agent-arg=--data-path=tap > $out/net-tap-$i.txt 2>&1
done
prog done
