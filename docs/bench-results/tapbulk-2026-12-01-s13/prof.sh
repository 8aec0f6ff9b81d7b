#!/bin/bash
# prof.sh OUTDIR bench-args...: runs build/ftvmd bench with pprof on each agent, 10 s profiles back to back
out=$1; shift
mkdir -p $out
loop() {
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
./build/ftvmd "$@" --agent-arg=--debug-pprof=pprof.sock 2>&1 | while IFS= read -r l; do echo "$(date -u +%H%M%S) $l"; done > $out/bench.txt
uptime > $out/uptime-after.txt
touch $out/.stop; wait $pa $pb
