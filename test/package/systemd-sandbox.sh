#!/usr/bin/env bash
# Runs systemd as PID 1 of fresh pid, mount, network, UTS and cgroup namespaces,
# so a unit runs under its real sandbox (namespaces, seccomp, capability and
# device rules) on a host whose PID 1 is not systemd. Used by test/e2e
# TestPackage to run the installed ftvmd-agent.service.
#
#   systemd-sandbox.sh DIR UNIT...
#
# DIR: a scratch directory (cgroup name, logs). Drop-ins and extra units go in
# DIR/units/ (copied to /run/systemd/system, which takes precedence over
# /lib/systemd/system). The sandbox's network namespace has lo and a bridge br0.
# systemd's own log goes to stdout. The sandbox ends when systemd powers off
# (`systemctl poweroff` inside) or is killed; the caller removes the cgroups
# DIR/cgroups lists.
set -euo pipefail
dir=$1; shift
name=ftvmd-sandbox-$$

if [ "${FTVMD_SANDBOX_STAGE:-}" != inner ]; then
  # Stage 1: move into a cgroup of our own in every hierarchy, so the cgroup
  # namespace's root is that cgroup and systemd manages only below it.
  : >"$dir/cgroups"
  for h in /sys/fs/cgroup/*/ /sys/fs/cgroup; do
    [ -f "$h/cgroup.procs" ] || continue
    mkdir -p "$h/$name"
    # cpuset v1: a new cgroup has no CPUs or memory nodes until given its parent's.
    [ -f "$h/cpuset.cpus" ] && cat "$h/cpuset.cpus" >"$h/$name/cpuset.cpus" && cat "$h/cpuset.mems" >"$h/$name/cpuset.mems"
    echo $$ >"$h/$name/cgroup.procs"
    echo "$h/$name" >>"$dir/cgroups"
  done
  export FTVMD_SANDBOX_STAGE=inner
  exec unshare --pid --fork --mount --propagation private --net --uts --cgroup --mount-proc "$0" "$dir" "$@"
fi

# Stage 2, PID 1 to be: cgroup file systems as the namespace sees them.
mount -t tmpfs -o mode=755 cgroup-root /sys/fs/cgroup
while read -r h; do
  sub=$(basename "$(dirname "$h")")
  case "$sub" in
    cgroup) mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified ;; # pure v2 host
    unified) mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified ;;
    systemd) mkdir -p /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd ;;
    *) mkdir -p "/sys/fs/cgroup/$sub" && mount -t cgroup -o "$sub" cgroup "/sys/fs/cgroup/$sub" ;;
  esac
done <"$dir/cgroups"
mount -t tmpfs -o mode=755 run /run
mkdir -p /run/systemd/system /run/lock
[ -d "$dir/units" ] && cp -a "$dir/units/." /run/systemd/system/
{
  echo "[Unit]"
  echo "Description=ftvmd sandbox"
  echo "DefaultDependencies=no"
  for u in "$@"; do echo "Wants=$u"; done
} >/run/systemd/system/ftvmd-sandbox.target
ip link set lo up
ip link add br0 type bridge
ip link set br0 up
hostname ftvmd-sandbox
export container=ftvmd-sandbox
exec /lib/systemd/systemd --system --unit=ftvmd-sandbox.target --log-target=console --log-level=info
