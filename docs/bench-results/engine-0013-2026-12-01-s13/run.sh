#!/bin/bash
# offline A/B: engine e131 (0001-0012) vs + 0013, recording with a qcow2 drive without cache-clean-interval=0
A=/opt/ftvmd/qemu/e131cf282def3f46/bin/qemu-system-x86_64
B=/var/tmp/lead-qemu/prefix/bin/qemu-system-x86_64
for i in 1 2; do
 for v in A B; do
  q=$A; [ $v = B ] && q=$B
  qemu-img create -f qcow2 /var/tmp/lead-qemu/snap.qcow2 64M >/dev/null
  echo "$(date -u +%T) $v-$i load=$(cut -d' ' -f1 /proc/loadavg)" >&2
  OUT=/tmp/rr-off-s13 QEMU=$q NET=1 LOAD="md5 4" bash /work/main/test/bench/rr-offline.sh drive-$v-$i 40 -rtc clock=vm -drive file=/var/tmp/lead-qemu/snap.qcow2,if=none,id=snap0,format=qcow2
 done
done
