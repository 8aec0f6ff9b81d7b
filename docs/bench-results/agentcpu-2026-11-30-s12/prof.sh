#!/bin/bash
# prof.sh OUTDIR BIN bench-args...: runs a bench with both agents serving pprof on
# <state-dir>/pprof.sock and takes back-to-back 10 s CPU profiles of each agent,
# named by their start time; the bench's output lines get timestamps.
out=$1; bin=$2; shift 2
mkdir -p $out
loop() { # host
  while :; do
    s=/var/lib/ftvmd-lab/$1/pprof.sock
    if [ -S $s ]; then
      t=$(date -u +%H%M%S)
      curl -s --max-time 15 --unix-socket $s -o $out/$1-$t.pprof "http://x/debug/pprof/profile?seconds=10" || sleep 1
    else sleep 0.5; fi
    [ -e $out/.stop ] && break
  done
}
loop a & pa=$!
loop b & pb=$!
uptime > $out/uptime-before.txt
"$bin" "$@" --agent-arg=--debug-pprof=pprof.sock 2>&1 | while IFS= read -r l; do echo "$(date -u +%H%M%S) $l"; done > $out/bench.txt
uptime > $out/uptime-after.txt
touch $out/.stop; wait $pa $pb
