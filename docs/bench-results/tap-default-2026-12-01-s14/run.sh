#!/bin/bash
# bench failover --runs 20 on tap (the new default), then on relay, each its own lab hold.
cd /work/wt-lead
for p in tap relay; do
  flock -w 3600 /run/ftvmd-e2e.queue sh -c "date -u; uptime; ./build/ftvmd bench failover --runs 20 --agent-arg=--data-path=$p; uptime; date -u" > /work/s14/failover/$p.log 2>&1
done
