#!/bin/bash
# prof3.sh OUTDIR BIN bench-args...: prof.sh (pprof windows) plus perf record (kernel
# and user stacks) of each agent for 8 s from the start of the protected iperf3
# client->guest phase of bench net.
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
watch() {
  while [ ! -e $out/.stop ]; do
    if [ "$(grep -c 'client->guest' $out/bench.txt 2>/dev/null)" -ge 2 ]; then
      for h in a b; do
        pid=$(pgrep -f "state-dir /var/lib/ftvmd-lab/$h " | head -1)
        perf record -g -o $out/perf-$h.data -p $pid -- sleep 8 >/dev/null 2>&1 &
      done
      wait; break
    fi
    sleep 0.2
  done
}
loop a & pa=$!
loop b & pb=$!
watch & pw=$!
uptime > $out/uptime-before.txt
"$bin" "$@" --agent-arg=--debug-pprof=pprof.sock 2>&1 | while IFS= read -r l; do echo "$(date -u +%H%M%S) $l"; done > $out/bench.txt
uptime > $out/uptime-after.txt
touch $out/.stop; wait $pa $pb $pw
