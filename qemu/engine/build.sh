#!/usr/bin/env bash
# Builds ftvmd's QEMU: Debian 12's QEMU source (the version of the installed
# qemu-system-x86) plus the patches in qemu/engine/patches, x86_64-softmmu only,
# with only what ftvmd uses. Installs into /opt/ftvmd/qemu/<key>/ and points
# /opt/ftvmd/qemu/current at it; never touches the distribution's QEMU.
#
#   bash qemu/engine/build.sh            # build if the cached build is stale
#   FTVMD_QEMU_PREFIX=/some/dir bash qemu/engine/build.sh
#
# <key> covers the source version, the patches and this script's configure line,
# so a change to any of them rebuilds; an unchanged key reuses the build (a few ms).
# The build takes about 5 minutes on 2 cores.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${FTVMD_QEMU_PREFIX:-/opt/ftvmd/qemu}
srccache=${FTVMD_QEMU_SRCCACHE:-/var/cache/ftvmd/qemu-src}

log() { printf 'qemu-engine: %s\n' "$*"; }
die() { printf 'qemu-engine: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs build dependencies and writes $root)"

srcver=$(dpkg-query -W -f='${source:Version}' qemu-system-x86 2>/dev/null) ||
  die "Debian package qemu-system-x86 is not installed (its source version selects the QEMU source to build)"

configure_flags=(--target-list=x86_64-softmmu --disable-docs --disable-werror --disable-user
  --without-default-features --enable-tcg --enable-fdt=system
  --disable-debug-info --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu)

key=$({
  echo "$srcver"
  echo "${configure_flags[*]}"
  cat "$here"/patches/*.patch
} | sha256sum | cut -c1-16)
dest=$root/$key

if [ -x "$dest/bin/qemu-system-x86_64" ] && [ -f "$dest/ENGINE" ]; then
  ln -sfn "$key" "$root/current"
  log "up to date: $dest ($(sed -n 's/^engine=//p' "$dest/ENGINE"))"
  exit 0
fi

log "building ftvmd's QEMU from Debian source $srcver with $(ls "$here"/patches/*.patch | wc -l) patches (key $key; 2-3 min on 2 cores)"
start=$(date +%s)

# Debian 12's sources list carries only binary packages: add the source entries
# for the same suites (once), so apt-get source finds the installed version.
if ! grep -rqs '^Types:.*deb-src' /etc/apt/sources.list.d/ && ! grep -qs '^deb-src' /etc/apt/sources.list; then
  log "adding deb-src entries (/etc/apt/sources.list.d/ftvmd-src.sources)"
  cat >/etc/apt/sources.list.d/ftvmd-src.sources <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  apt-get update -qq
fi

deps=(build-essential ninja-build meson pkg-config libglib2.0-dev libpixman-1-dev zlib1g-dev
  libfdt-dev flex bison python3-venv dpkg-dev)
missing=()
for p in "${deps[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing build dependencies: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

upver=${srcver#*:}      # 7.2+dfsg-7+deb12u18
upver=${upver%-*}       # 7.2+dfsg
srcdir=$srccache/$srcver/qemu-$upver
if [ ! -d "$srcdir" ]; then
  log "fetching the source: apt-get source qemu=$srcver"
  mkdir -p "$srccache/$srcver"
  (cd "$srccache/$srcver" && apt-get source -qq "qemu=$srcver" >/dev/null 2>&1) ||
    die "apt-get source qemu=$srcver failed (is the deb-src entry reachable? run: apt-get update)"
  [ -d "$srcdir" ] || die "apt-get source did not produce $srcdir"
fi

work=$(mktemp -d /var/tmp/ftvmd-qemu-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
log "copying the source to $work"
cp -a "$srcdir" "$work/src"
for p in "$here"/patches/*.patch; do
  log "applying $(basename "$p")"
  patch -d "$work/src" -p1 -s --no-backup-if-mismatch <"$p" || die "patch $(basename "$p") does not apply to $srcver"
done

mkdir -p "$work/src/build"
cd "$work/src/build"
log "configuring"
../configure --prefix="$dest" "${configure_flags[@]}" >"$work/configure.log" 2>&1 ||
  { tail -30 "$work/configure.log" >&2; die "configure failed (log above)"; }
log "compiling (ninja -j$(nproc))"
# Progress every ~200 steps instead of ninja's 1400 lines.
ninja -j"$(nproc)" qemu-system-x86_64 2>&1 | awk '/^\[[0-9]+\/[0-9]+\]/ { split(substr($1,2,length($1)-2),a,"/"); if (a[1] % 200 == 0 || a[1] == a[2]) printf "qemu-engine:   step %s of %s\n", a[1], a[2]; fflush(); next } /error|Error|FAILED/ { print }'
[ "${PIPESTATUS[0]}" = 0 ] || die "compile failed"

tmpdest=$dest.tmp.$$
rm -rf "$tmpdest"
mkdir -p "$tmpdest/bin"
install -m 0755 qemu-system-x86_64 "$tmpdest/bin/qemu-system-x86_64"
# Firmware comes from Debian's packages, where Debian's own QEMU looks for it
# (--firmwarepath above): SeaBIOS, iPXE and the option ROMs are part of what
# record and replay must agree on, so both hosts use the same files.
{
  echo "engine=ftvmd-qemu $upver+ftvmd.$key"
  echo "source=$srcver"
  echo "key=$key"
  for p in "$here"/patches/*.patch; do echo "patch=$(basename "$p")"; done
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$tmpdest/ENGINE"
# The firmware must be found: a QEMU that cannot load its BIOS exits at once,
# one that can sits paused (-S) until the timeout ends it (exit 124).
rc=0
out=$(timeout 3 "$tmpdest/bin/qemu-system-x86_64" -M pc -accel tcg -m 64 -nographic -nodefaults \
  -no-user-config -serial null -monitor none -S 2>&1) || rc=$?
[ "$rc" = 124 ] || die "the built QEMU does not start (exit $rc): $out"
echo "version=$("$tmpdest/bin/qemu-system-x86_64" --version | head -1)" >>"$tmpdest/ENGINE" ||
  die "the built QEMU does not run"
rm -rf "$dest"
mv "$tmpdest" "$dest"
ln -sfn "$key" "$root/current"
log "built $dest in $(( $(date +%s) - start )) s; $root/current -> $key"
