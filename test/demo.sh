#!/usr/bin/env bash
# ftvmd demo on one Debian 12 host (as root): sets up what is missing, brings up a lab
# of two hypervisor hosts (A, B) and a client (C) in network namespaces, protects a
# guest across A and B, shows `ftvmd status` while it runs and talks to the guest from
# the client. Leaves the lab running at the end; `bash test/lab/lab.sh down` removes it.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash test/setup.sh
. test/lab/lab.env
ft=$repo/build/ftvmd
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

ftlab_lock
say "bringing up the lab (hosts A, B, client C, shared storage)"
bash test/lab/lab.sh down --purge >/dev/null 2>&1 || true
bash test/lab/lab.sh up
mountpoint -q /run/ftvmd-lab-cgroup || { mkdir -p /run/ftvmd-lab-cgroup; mount --rbind /sys/fs/cgroup /run/ftvmd-lab-cgroup; }

say "making TLS keys: a lab CA and one certificate per host"
"$ft" keys init --ca "$FTLAB_ROOT/ca"
"$ft" keys issue a --ca "$FTLAB_ROOT/ca" --out "$FTLAB_DIR_A/keys" --ip "$FTLAB_IP_A"
"$ft" keys issue b --ca "$FTLAB_ROOT/ca" --out "$FTLAB_DIR_B/keys" --ip "$FTLAB_IP_B"

say "starting an agent on each host (logs in $FTLAB_ROOT/agent-*.log)"
start_agent() { # host ns ip dir cpus
  ip netns exec "$2" setsid "$ft" agent --config "" --host "$1" --state-dir "$4" --listen "$3:7800" --cpus "$5" \
    --flush-lib "$repo/build/libftflush.so" --cgroup-root /run/ftvmd-lab-cgroup --peer-timeout 3s \
    --shared-dir "$FTLAB_SHARED" \
    >>"$FTLAB_ROOT/agent-$1.log" 2>&1 </dev/null 9>&- &
}
start_agent a "$FTLAB_NS_A" "$FTLAB_IP_A" "$FTLAB_DIR_A" "$FTLAB_CPUS_A"
start_agent b "$FTLAB_NS_B" "$FTLAB_IP_B" "$FTLAB_DIR_B" "$FTLAB_CPUS_B"
disown -a # the drill at the end stops these agents; no job notices
fa() { ip netns exec "$FTLAB_NS_A" "$ft" --socket "$FTLAB_SOCK_A" "$@"; }
fb() { ip netns exec "$FTLAB_NS_B" "$ft" --socket "$FTLAB_SOCK_B" "$@"; }
for i in $(seq 50); do fa status >/dev/null 2>&1 && fb status >/dev/null 2>&1 && break; sleep 0.2; done

say "defining the guest on host A and protecting it with its backup on host B"
fa vm define demo --kernel "$repo/build/guest/vmlinuz" --initrd "$repo/build/guest/initrd.img" \
  --mac "$FTLAB_GUEST_MAC" --append "console=ttyS0 quiet panic=-1 ft.ip=$FTLAB_IP_GUEST/$FTLAB_PREFIX"
fa protect demo --backup "$FTLAB_IP_B:7800"

say "waiting for the guest to boot (TCG; the primary is slowed while the backup replays boot)"
for i in $(seq 300); do grep -q "ftguest ready" "$FTLAB_DIR_A/run/demo.primary/console.log" 2>/dev/null && break; sleep 1; done
for round in 1 2 3; do
  say "status on host A (primary), round $round"
  fa status demo
  say "status on host B (backup)"
  fb status demo
  say "the client (host C) talks to the guest: request $round"
  echo "seq $round hello-from-client" | ip netns exec "$FTLAB_NS_C" nc -w 5 -q 2 "$FTLAB_IP_GUEST" "$FTLAB_GUEST_PORT" || true
  sleep 5
done
say "the last console lines of the primary and of the backup (they must match)"
tail -n 3 "$FTLAB_DIR_A/run/demo.primary/console.log"; echo
tail -n 3 "$FTLAB_DIR_B/run/demo.backup/console.log"; echo
say "planned failover: the backup on host B takes over (ftvmd failover)"
fa failover demo
sleep 2
say "status on host B: the VM now runs there"
fb status demo
say "the client still talks to the guest"
echo "seq 99 after-failover" | ip netns exec "$FTLAB_NS_C" nc -w 5 -q 2 "$FTLAB_IP_GUEST" "$FTLAB_GUEST_PORT" || true
tail -n 2 "$FTLAB_DIR_B/run/demo.primary/console.log"; echo

say "failover drill: a fresh lab, client load, then every process of host A is SIGKILLed"
exec 9>&- # the drill tears this lab down, brings up its own and takes the lab's lock itself
"$ft" drill demo --kind kill-primary >/dev/null
say "demo done. Agent logs of the drill: $FTLAB_ROOT/agent-*.log"
