#!/bin/bash
# series2.sh: the rest of the before/after draws, a before and an after back to back
# in one lab turn (about 5 min), alternating which goes first.
out=/work/wt-agentcpu/docs/bench-results/agentcpu-2026-11-30-s12
bin=/work/s12-agentcpu
cd /work/wt-agentcpu
one() { # name binary bench-args...
  name=$1; b=$2; shift 2
  { echo "# $(date -u +%FT%TZ) $(basename $b) $*"; echo "# uptime before: $(uptime)"; top -bn1 | sed -n 7,14p | sed "s/^/# top: /"; } > $out/$name.txt
  $b "$@" >> $out/$name.txt 2>&1
  echo "# uptime after: $(uptime)" >> $out/$name.txt
}
export -f one; export out
NET="bench net --agent-arg=--data-path=tap --requests 1000 --mb 100 --iperf-seconds 20"
CPU="bench cpu --min-run 30s --runs 1 --agent-arg=--data-path=tap"
flock -w 3600 /run/ftvmd-e2e.queue bash -c "one cpu-after-1 $bin/ftvmd-after2 $CPU; one cpu-before-1 $bin/ftvmd-before $CPU"
flock -w 3600 /run/ftvmd-e2e.queue bash -c "one net-after-2 $bin/ftvmd-after2 $NET; one net-before-2 $bin/ftvmd-before $NET"
flock -w 3600 /run/ftvmd-e2e.queue bash -c "one cpu-before-2 $bin/ftvmd-before $CPU; one cpu-after-2 $bin/ftvmd-after2 $CPU"
echo done > /work/s12-agentcpu/series2-done
