#!/bin/bash
# after d1: the e2e checks of the SS32 build, then bench net base/ss32 pairs, a pair per queue turn
cd /work/wt-h43
D=docs/bench-results/recording-overhead-2026-12-01-s14
out=/var/tmp/h43/lab
Q="flock -w 3600 /run/ftvmd-e2e.queue"
while pgrep -f "labperf.sh /var/tmp/h43/lab d1" >/dev/null; do sleep 5; done
echo "$(date -u +%T) e2e start" >> $out/progress.log
$Q env FTVMD_E2E=1 FTVMD_E2E_QEMU=/var/tmp/h43-prefix/ss32/bin/qemu-system-x86_64 PATH=/usr/local/go/bin:$PATH \
  go test -count=1 -v -timeout 15m -run 'TestRRCheck$|TestEngines$' ./test/e2e > $out/e2e-ss32.txt 2>&1
echo "$(date -u +%T) e2e rc=$?" >> $out/progress.log
for pair in "base ss32" "ss32 base"; do
  [ -e /var/tmp/h43/stop-lab ] && break
  NOPERF=1 $Q bash -c "for v in $pair; do n=\$(ls $out | grep -c '^ab-\$v-.*txt\$'); bash $D/labperf.sh $out ab-\$v-\$((n+1)) --agent-arg=--qemu=/var/tmp/h43-prefix/\$v/bin/qemu-system-x86_64; done"
done
echo "$(date -u +%T) queue done" >> $out/progress.log
