#!/bin/bash
# replay identity of the SS32 build: its own recording, and a recording of the base build
cd /work/wt-h43
export NET=1 LOAD="get 100 put 50 req 300 md5 1" OUT=/var/tmp/h43/ident APPEND=""
QEMU=/var/tmp/h43-prefix/ss32/bin/qemu-system-x86_64 bash test/bench/rr-offline.sh ss32 50 -rtc clock=vm
QEMU=/var/tmp/h43-prefix/base/bin/qemu-system-x86_64 REPLAY_QEMU=/var/tmp/h43-prefix/ss32/bin/qemu-system-x86_64 bash test/bench/rr-offline.sh base-on-ss32 50 -rtc clock=vm
