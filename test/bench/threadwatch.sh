#!/bin/bash
# A QEMU wrapper for rr-offline.sh / rr-offline-ab.sh (QEMU= or ENGINES=): runs $REALQEMU
# with the arguments and, beside it, `threadwatch.py watch`, which writes the QEMU's
# per-thread totals to NAME.rr.record.threads.json or NAME.rr.replay.threads.json in the
# current directory when it exits. The watcher is detached (its parent exits at once), so
# /usr/bin/time around this wrapper does not count its CPU.
#
#   printf '#!/bin/bash\nREALQEMU=/path/to/qemu-system-x86_64 exec %s "$@"\n' \
#     "$PWD/test/bench/threadwatch.sh" >/tmp/engine-a.sh; chmod +x /tmp/engine-a.sh
#   ENGINES="a=/tmp/engine-a.sh ..." bash test/bench/rr-offline-ab.sh 3 cpu 30 -rtc clock=vm -name rr,debug-threads=on
#   python3 test/bench/threadwatch.py summary /tmp/rr-offline-ab
set -u
here=$(cd "$(dirname "$0")" && pwd)
: "${REALQEMU:?set REALQEMU to the QEMU to run}"
"$REALQEMU" "$@" &
qp=$!
trap 'kill -TERM $qp 2>/dev/null' TERM INT
rr=$(printf '%s\n' "$@" | grep -o 'rr=[a-z]*,rrfile=[^ ,]*' | head -1)
if [ -n "$rr" ]; then
  mode=${rr#rr=}; mode=${mode%%,*}; f=${rr#*rrfile=}
  ( python3 "$here/threadwatch.py" watch "$qp" "$PWD/$f.$mode.threads.json" </dev/null >/dev/null 2>&1 & )
fi
wait $qp; rc=$?
# a TERM to this script ends the first wait early: wait for QEMU itself
if kill -0 $qp 2>/dev/null; then wait $qp; rc=$?; fi
exit $rc
