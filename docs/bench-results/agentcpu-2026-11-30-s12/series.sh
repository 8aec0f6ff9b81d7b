#!/bin/bash
# series.sh: before/after alternating, one lab turn (flock) per bench.
out=/work/wt-agentcpu/docs/bench-results/agentcpu-2026-11-30-s12
bin=/work/s12-agentcpu
cd /work/wt-agentcpu
while ! grep -q rc= $bin/agent-test.log 2>/dev/null; do sleep 5; done
run() { # name binary bench-args...
  name=$1; b=$2; shift 2
  flock -w 3600 /run/ftvmd-e2e.queue bash -c '
    out=$1; name=$2; b=$3; shift 3
    { echo "# $(date -u +%FT%TZ) $(basename $b) $*"; echo "# uptime before: $(uptime)"; top -bn1 | sed -n 7,14p | sed "s/^/# top: /"; } > $out/$name.txt
    $b "$@" >> $out/$name.txt 2>&1
    echo "# uptime after: $(uptime)" >> $out/$name.txt
  ' _ $out $name $b "$@"
}
NET="bench net --agent-arg=--data-path=tap --requests 1000 --mb 100 --iperf-seconds 20"
CPU="bench cpu --min-run 30s --runs 1 --agent-arg=--data-path=tap"
for i in 1 2; do
  run net-before-$i $bin/ftvmd-before $NET
  run net-after-$i $bin/ftvmd-after2 $NET
  run cpu-before-$i $bin/ftvmd-before $CPU
  run cpu-after-$i $bin/ftvmd-after2 $CPU
done
echo done > $out/.series-done
