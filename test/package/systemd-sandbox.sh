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
  rm -f "$dir/cgroup-v2"
  if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    hierarchies=(/sys/fs/cgroup) # unified (v2) only; not tried on this project's hosts (v1)
    : >"$dir/cgroup-v2"
  else
    hierarchies=()
    for h in /sys/fs/cgroup/*; do
      # Mounted hierarchies only (not the links like cpu -> cpu,cpuacct).
      [ -L "$h" ] || ! mountpoint -q "$h" || hierarchies+=("$h")
    done
  fi
  for h in "${hierarchies[@]}"; do
    mkdir -p "$h/$name"
    # cpuset v1: a new cgroup has no CPUs or memory nodes until given its parent's.
    if [ -f "$h/cpuset.cpus" ] && [ ! -f "$h/cgroup.controllers" ]; then
      cat "$h/cpuset.cpus" >"$h/$name/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h/$name/cpuset.mems"
    fi
    echo $$ >"$h/$name/cgroup.procs"
    echo "$h/$name" >>"$dir/cgroups"
  done
  export FTVMD_SANDBOX_STAGE=inner
  exec unshare --pid --fork --mount --propagation private --net --uts --cgroup --mount-proc "$0" "$dir" "$@"
fi

# Stage 2, PID 1 to be: cgroup file systems as the namespace sees them, on file
# systems of their own where systemd changes anything (it remounts the cgroup
# tmpfs read-only: here a new tmpfs, not the host's).
if [ -f "$dir/cgroup-v2" ]; then
  mount -t cgroup2 cgroup2 /sys/fs/cgroup
else
  links=$(find /sys/fs/cgroup -maxdepth 1 -type l -printf '%f %l\n')
  mount -t tmpfs -o mode=755 cgroup-root /sys/fs/cgroup
  while read -r h; do
    sub=$(basename "$(dirname "$h")")
    mkdir -p "/sys/fs/cgroup/$sub"
    case "$sub" in
      unified) mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified ;;
      systemd) mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd ;;
      *) mount -t cgroup -o "$sub" cgroup "/sys/fs/cgroup/$sub" ;;
    esac
  done <"$dir/cgroups"
  while read -r l target; do
    [ -n "$l" ] && ln -s "$target" "/sys/fs/cgroup/$l"
  done <<<"$links"
fi
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
