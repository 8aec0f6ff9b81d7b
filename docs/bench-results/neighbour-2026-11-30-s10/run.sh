#!/bin/sh
cd /work/final
out=/work/runs/s10c
mkdir -p $out
run() {
  name=$1; shift
  echo "== $name $(date -u +%T) $(uptime)"
  flock -w 3600 /run/ftvmd-e2e.queue ./build/ftvmd bench "$@" > $out/$name.json 2> $out/$name.err
  echo "rc=$? $(date -u +%T) $(uptime)"
}
run net-neigh1-1 net --requests 2000 --mb 100 --iperf-seconds 20 --unprotected-neighbour 1
run failover-s1-1 failover --runs 10 --define-arg=--icount-shift=1
run net-neigh1-2 net --requests 2000 --mb 100 --iperf-seconds 20 --unprotected-neighbour 1
run failover-s1-2 failover --runs 10 --define-arg=--icount-shift=1
