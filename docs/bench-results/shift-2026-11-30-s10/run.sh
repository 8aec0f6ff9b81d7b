#!/bin/sh
# Session 10: bench net and bench failover at icount shifts 4, 1, 2, alternating,
# one fresh lab per run, from /work/final (its build/ftvmd runs the lab).
cd /work/final
out=/work/runs/s10b
mkdir -p $out
run() { # name args...
  name=$1; shift
  echo "== $name $(date -u +%T) $(uptime)"
  flock -w 3600 /run/ftvmd-e2e.queue ./build/ftvmd bench "$@" > $out/$name.json 2> $out/$name.err
  echo "rc=$? $(date -u +%T) $(uptime)"
}
for i in 1 2; do
  for sh in 4 1 2; do
    run net-s$sh-$i net --requests 2000 --mb 100 --iperf-seconds 20 --define-arg=--icount-shift=$sh
  done
  for sh in 1 4; do
    run failover-s$sh-$i failover --runs 10 --define-arg=--icount-shift=$sh
  done
  for sh in 4 1; do
    run cpu-s$sh-$i cpu --min-run 30s --runs 1 --icount-shift $sh
  done
done
