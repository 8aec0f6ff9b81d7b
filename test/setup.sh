#!/usr/bin/env bash
# Sets up a fresh Debian 12 host (as root) for ftvmd: installs the Debian packages it
# needs, builds ftvmd, the flush library and the lab guest image into build/, and
# ftvmd's QEMU into /opt/ftvmd/qemu (qemu/engine/build.sh).
# Idempotent: packages already present are not reinstalled, the guest image is cached.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH=/usr/local/go/bin:$PATH

log() { printf '==> %s\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "setup: must run as root (it installs packages and builds the lab)" >&2; exit 1; }

# systemd: systemd-analyze and the unit sandbox; dpkg-dev, strace: the package's
# computed Depends (packaging/mkdeb); prometheus: promtool checks the agent's
# metrics, and the end-to-end tests run its server against the lab's agents; bindfs:
# `ftvmd chaos` gives each host its own view of the shared storage (a FUSE mount it
# can hang or cut); e2fsprogs: the small file systems chaos puts the run directories on;
# iperf3: the lab guest carries it and `ftvmd bench net` runs its client (its package's
# offer to run a server as a service is declined below).
pkgs=(qemu-system-x86 qemu-utils busybox-static cpio kmod gzip iproute2 gcc libc6-dev netcat-openbsd procps
  systemd dpkg-dev strace prometheus bindfs e2fsprogs iperf3)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  echo 'iperf3 iperf3/start_daemon boolean false' | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The tests run Prometheus' binaries themselves: the packaged server that
  # installing starts (where systemd runs) is not needed.
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi

# libvirt, for the tests of `ftvmd vm import`: they run a libvirtd of their own in
# namespaces of its own (test/e2e/libvirtd_test.go), so the package's service is kept
# from starting while it installs (policy-rc.d, unless the host has its own policy).
# Without systemd as init, the sysv flavour keeps apt from pulling in systemd-sysv.
libvirt_pkgs=(libvirt-daemon-system libvirt-clients)
[ -d /run/systemd/system ] || libvirt_pkgs+=(libvirt-daemon-system-sysv)
missing=()
for p in "${libvirt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]} (services not started)"
  policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || { [ -z "$policy" ] || rm -f "$policy"; exit 1; }
  [ -z "$policy" ] || rm -f "$policy"
fi

command -v go >/dev/null || { echo "setup: Go 1.26 or newer is required (not found on PATH or in /usr/local/go/bin)" >&2; exit 1; }
gov=$(go env GOVERSION | sed 's/^go//')
case "$gov" in 1.2[6-9]*|1.[3-9]*) ;; *) echo "setup: Go 1.26 or newer is required, found $gov" >&2; exit 1;; esac

mkdir -p build
log "building ftvmd ($(go env GOVERSION))"
go build -trimpath -o build/ftvmd ./cmd/ftvmd
log "building the log flush library"
bash qemu/flush/build.sh build
log "building ftvmd's QEMU (cached in /opt/ftvmd/qemu; ~5 min the first time)"
bash qemu/engine/build.sh
log "building the lab guest image"
bash test/guest/build.sh build/guest
log "building the Debian package (ftvmd, the flush library, ftvmd's QEMU, the unit, the config file)"
go run ./packaging/mkdeb --out build
log "setup done: build/ftvmd, build/libftflush.so, build/guest/, $(ls build/ftvmd_*.deb | tail -1), $(readlink -f /opt/ftvmd/qemu/current)"
