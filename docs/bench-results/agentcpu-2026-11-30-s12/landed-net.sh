#!/bin/bash
out=/work/wt-agentcpu/docs/bench-results/agentcpu-2026-11-30-s12
bin=/work/s12-agentcpu
eval "$(sed -n '/^one()/,/^}/p' $bin/series2.sh)"
export out; export -f one
NET="bench net --agent-arg=--data-path=tap --requests 1000 --mb 100 --iperf-seconds 20"
flock -w 3600 /run/ftvmd-e2e.queue bash -c "one net-landed-3 $bin/ftvmd-landed $NET"
