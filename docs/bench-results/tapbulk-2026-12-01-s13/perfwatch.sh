#!/bin/bash
# perfwatch.sh BENCHOUT PERFOUT: when the protected iperf3 client->guest phase starts in BENCHOUT, perf-record agent A (and B) for 10 s
f=$1; out=$2
while :; do
  [ -f $f ] || { sleep 1; continue; }
  n=$(grep -c '^client->guest' $f)
  [ "$n" -ge 2 ] && break
  sleep 0.5
done
sleep 3
pa=$(grep -o 'agent a up (pid [0-9]*' $f | grep -o '[0-9]*$')
pb=$(grep -o 'agent b up (pid [0-9]*' $f | grep -o '[0-9]*$')
perf record -e cpu-clock -F 999 -g -o $out.a.data -p $pa -- sleep 10 >/dev/null 2>&1 &
perf record -e cpu-clock -F 999 -g -o $out.b.data -p $pb -- sleep 10 >/dev/null 2>&1
wait
