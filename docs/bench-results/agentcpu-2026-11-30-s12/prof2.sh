#!/bin/bash
# prof2.sh OUTDIR BIN bench-args...: like prof.sh, but counts the agents' syscalls
# with perf stat (tracepoints) in back-to-back 10 s windows instead of profiling.
out=$1; bin=$2; shift 2
mkdir -p $out
ev=task-clock,context-switches
for s in write read pread64 pwrite64 futex epoll_pwait newfstat statx openat ioctl fallocate sendmsg recvmsg writev poll ppoll getdents64 close nanosleep splice; do ev=$ev,syscalls:sys_enter_$s; done
loop() { # host
  while :; do
    pid=$(pgrep -f "agent --config  --host $1 " | head -1)
    [ -z "$pid" ] && pid=$(pgrep -f "state-dir /var/lib/ftvmd-lab/$1 " | head -1)
    if [ -n "$pid" ]; then
      t=$(date -u +%H%M%S)
      perf stat -x, -e $ev -p $pid -o $out/$1-$t.stat -- sleep 10 2>/dev/null || sleep 1
    else sleep 0.5; fi
    [ -e $out/.stop ] && break
  done
}
loop a & pa=$!
loop b & pb=$!
uptime > $out/uptime-before.txt
"$bin" "$@" 2>&1 | while IFS= read -r l; do echo "$(date -u +%H%M%S) $l"; done > $out/bench.txt
uptime > $out/uptime-after.txt
touch $out/.stop; wait $pa $pb
