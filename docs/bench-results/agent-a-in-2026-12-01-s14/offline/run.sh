#!/bin/bash
# run.sh OUT: the offline log path harness (test/bench/logpath), variants alternating,
# two rates, ROUNDS rounds; one line per run in OUT.
# Build first: go test -c -o /tmp/logpath.test ./test/bench/logpath. The tail-buffer
# variant (variants.txt) ran with tailbuffer.patch.txt applied and the harness as in
# logpath_test-with-tailbuffer.go.txt (LOGPATH_TWOREADS=1 there is the landed tail);
# with the landed harness, drop it and LOGPATH_TWOREADS is ignored.
out=$1; bin=${BIN:-/tmp/logpath.test}
: > $out
for round in $(seq ${ROUNDS:-2}); do
  for rate in 43 125; do
    for v in "two-reads LOGPATH_TWOREADS=1" "tail-buffer X=1" "no-tls LOGPATH_TWOREADS=1 LOGPATH_PLAIN=1" "flush-20ms LOGPATH_TWOREADS=1 LOGPATH_FLUSH_US=20000 LOGPATH_STAMPS=25"; do
      set -- $v; name=$1; shift
      r=$(env "$@" LOGPATH_SECONDS=8 LOGPATH_MBPS=$rate nice -n 5 $bin -test.count=1 -test.run TestLogPathCPU -test.v 2>&1 | grep -E "RESULT|tail buffer" | sed 's/.*logpath_test.go:[0-9]*: //' | tr '\n' ' ')
      echo "$(date -u +%H:%M:%S) load $(cut -d' ' -f1 /proc/loadavg) round $round rate $rate $name: $r" | tee -a $out
    done
  done
done
