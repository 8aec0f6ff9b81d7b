#!/usr/bin/env bash
# Builds the ftvmd lab guest image: OUTDIR/vmlinuz + OUTDIR/initrd.img (gzip'd newc cpio).
#
#   test/guest/build.sh [OUTDIR]        (default OUTDIR: <repo>/build/guest)
#
# Inputs: Debian's current cloud kernel (the package linux-image-cloud-amd64 depends on),
# busybox-static, that kernel's virtio modules, the ftguest service (./ftguest), and
# Debian's iperf3 with the shared libraries and dynamic loader ldd finds for it (the
# standard throughput tool `ftvmd bench net --iperf-seconds` runs against the guest).
# OUTDIR/inputs.sha256 records a hash of all inputs; when it is unchanged the script prints
# "guest image up to date" and exits at once. The output is reproducible: the same inputs
# give byte-identical vmlinuz and initrd.img (fixed mtimes, sorted cpio, gzip -n, Go built
# with -trimpath -buildid= -buildvcs=false).
#
# Env: FTGUEST_FORCE=1 rebuilds even when inputs are unchanged.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
outdir=${1:-$repo/build/guest}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)
export PATH=$PATH:/usr/local/go/bin:/usr/sbin:/sbin
export LC_ALL=C SOURCE_DATE_EPOCH=0

log() { printf 'guest-build: %s\n' "$*" >&2; }
die() { printf 'guest-build: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (installs packages with apt-get)"
command -v go >/dev/null || die "go not found on PATH"

# Modules to put in the initrd, in load order. Built-in ones (modules.builtin) are skipped.
modules=(failover net_failover virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev
         virtio_pci virtio_net virtio_blk)

# --- 1. host tools ---------------------------------------------------------------------
apt_updated=
apt_update() { [ -n "$apt_updated" ] || { log "apt-get update"; apt-get update -qq >/dev/null; apt_updated=1; }; }
need=()
[ -x /bin/busybox ] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v modinfo >/dev/null || need+=(kmod)
command -v gzip >/dev/null || need+=(gzip)
# Debian's iperf3 (not some other build on PATH): the guest runs the host's copy.
iperf3_bin=/usr/bin/iperf3
iperf3_new=no
dpkg-query -W -f='${Status}' iperf3 2>/dev/null | grep -q 'install ok installed' || { need+=(iperf3); iperf3_new=yes; }
command -v dpkg-deb >/dev/null || die "dpkg-deb missing: this script needs a Debian host"
if [ ${#need[@]} -gt 0 ]; then
  apt_update
  log "installing ${need[*]}"
  # iperf3's package offers to run a server as a service: not on this host (the
  # guest runs its own), whatever debconf's default.
  [ "$iperf3_new" = no ] || echo 'iperf3 iperf3/start_daemon boolean false' | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# busybox must be the static one: it runs alone in the initrd.
if ldd /bin/busybox >/dev/null 2>&1; then
  apt_update
  log "installing busybox-static (/bin/busybox is not static)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends busybox-static >/dev/null
fi

# iperf3's dynamic loader and shared libraries as ldd resolves them here, by the paths the
# loader looks them up by (it has no ld.so.cache in the guest: it searches its default
# directories, where Debian puts them). Sorted, so the hash and the cpio are stable.
[ -x "$iperf3_bin" ] || die "$iperf3_bin missing after installing iperf3"
iperf3_ver=$(dpkg-query -W -f='${Version}' iperf3)
ldd_out=$(ldd "$iperf3_bin") || die "ldd $iperf3_bin failed"
! grep -q 'not found' <<<"$ldd_out" || die "ldd $iperf3_bin: a library is missing: $ldd_out"
mapfile -t iperf3_libs < <(awk '$2 == "=>" && $3 ~ /^\// {print $3}' <<<"$ldd_out" | sort -u)
iperf3_loader=$(awk '$1 ~ /^\// && $2 != "=>" {print $1; exit}' <<<"$ldd_out")
[ -n "$iperf3_loader" ] && [ ${#iperf3_libs[@]} -gt 0 ] \
  || die "cannot read iperf3's loader and libraries from ldd: $ldd_out"

# --- 2. which kernel -------------------------------------------------------------------
# The concrete package the metapackage depends on, e.g. linux-image-6.1.0-56-cloud-amd64.
kpkg_of_meta() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null \
    | awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64(-unsigned)?$/ {print $2; exit}'
}
kpkg=$(kpkg_of_meta || true)
if [ -z "$kpkg" ]; then apt_update; kpkg=$(kpkg_of_meta || true); fi
[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64 to a kernel package (apt-cache depends)"
kver=$(apt-cache policy "$kpkg" | awk '$1=="Candidate:" {print $2}')
[ -n "$kver" ] && [ "$kver" != "(none)" ] || die "no candidate version for $kpkg"
ksha=$(apt-cache show "$kpkg=$kver" | awk '$1=="SHA256:" {print $2; exit}')

# --- 3. input hash / cache -------------------------------------------------------------
inputs_hash() {
  {
    echo "kernel $kpkg $kver $ksha"
    echo "modules ${modules[*]}"
    echo "busybox $(sha256sum </bin/busybox)"
    echo "iperf3 $iperf3_ver"
    for f in "$iperf3_bin" "$iperf3_loader" "${iperf3_libs[@]}"; do
      echo "$f $(sha256sum <"$f")"
    done
    echo "go $(go env GOVERSION) $(go env GOARCH)"
    echo "build.sh $(sha256sum <"$here/build.sh")"
    (cd "$repo" && find test/guest/ftguest -name '*.go' ! -name '*_test.go' -print0 | sort -z \
      | xargs -0 sha256sum)
    # Only go.mod's go/toolchain lines matter: ftguest is stdlib only, and other packages
    # adding dependencies must not invalidate the image.
    echo "go.mod $(grep -E '^(go|toolchain) ' "$repo/go.mod" | tr '\n' ' ')"
  } | sha256sum | cut -d' ' -f1
}
want=$(inputs_hash)
if [ -z "${FTGUEST_FORCE:-}" ] && [ -s "$outdir/vmlinuz" ] && [ -s "$outdir/initrd.img" ] \
   && [ "$(cat "$outdir/inputs.sha256" 2>/dev/null)" = "$want" ]; then
  echo "guest image up to date ($outdir, $kpkg $kver)"
  exit 0
fi

# --- 4. kernel + modules ---------------------------------------------------------------
work=$(mktemp -d /tmp/ftguest-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
cache=$outdir/.cache
mkdir -p "$cache"
deb=$cache/${kpkg}_${kver//:/%3a}_amd64.deb
if ! [ -s "$deb" ] || { [ -n "$ksha" ] && [ "$(sha256sum <"$deb" | cut -d' ' -f1)" != "$ksha" ]; }; then
  rm -f "$cache"/*.deb
  log "downloading $kpkg $kver"
  # apt's _apt user cannot write to root-owned dirs; download in a world-writable dir.
  dl=$work/dl; mkdir -p "$dl"; chmod 777 "$dl"
  (cd "$dl" && apt-get download -qq "$kpkg=$kver" 2>/dev/null) \
    || { apt_update; (cd "$dl" && apt-get download -qq "$kpkg=$kver") ; } \
    || die "apt-get download $kpkg=$kver failed"
  mv "$dl"/*.deb "$deb"
fi
dpkg-deb -x "$deb" "$work/k"
vmlinuz=$(find "$work/k/boot" -name 'vmlinuz-*' | head -n1)
[ -n "$vmlinuz" ] || die "$deb has no /boot/vmlinuz-*"
kmoddir=$(find "$work/k/lib/modules" -mindepth 1 -maxdepth 1 -type d | head -n1)
[ -n "$kmoddir" ] || die "$deb has no /lib/modules/<version>"
kname=$(basename "$kmoddir")

root=$work/root
mkdir -p "$root"/{bin,dev,proc,sys,run,tmp,mnt,etc,lib/modules}
: >"$root/lib/modules/order"
for m in "${modules[@]}"; do
  f=$(find "$kmoddir" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n1)
  if [ -z "$f" ]; then
    # Module names use '_' but builtin paths may use '-'.
    if grep -Eq "/(${m}|${m//_/-})\.ko$" "$kmoddir/modules.builtin" 2>/dev/null; then
      log "module $m is built in, skipping"
      continue
    fi
    die "module $m not found in $kname and not built in"
  fi
  case $f in
    *.ko)     cp "$f" "$root/lib/modules/$m.ko" ;;
    *.ko.xz)  command -v xz >/dev/null || { apt_update; apt-get install -y -qq xz-utils >/dev/null; }
              xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
    *.ko.zst) command -v zstd >/dev/null || { apt_update; apt-get install -y -qq zstd >/dev/null; }
              zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
    *.ko.gz)  gzip -dc "$f" >"$root/lib/modules/$m.ko" ;;
  esac
  echo "$m" >>"$root/lib/modules/order"
done

# --- 5. userland: busybox + ftguest + /init --------------------------------------------
cp /bin/busybox "$root/bin/busybox"
# Applet links are made at build time (not --install at boot) to keep boot minimal.
for a in $(/bin/busybox --list); do
  [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
done
(cd "$repo" && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 GOFLAGS= \
  go build -trimpath -buildvcs=false -ldflags=-buildid= -o "$root/bin/ftguest" ./test/guest/ftguest)
echo "$kname" >"$root/etc/kernel-release"
# iperf3 where init finds it; its loader and libraries at the paths ldd gave (cp would
# copy the symlinks' targets with the host's umask; install sets the modes itself).
install -m 755 "$iperf3_bin" "$root/bin/iperf3"
install -D -m 755 "$iperf3_loader" "$root$iperf3_loader"
for f in "${iperf3_libs[@]}"; do install -D -m 644 "$f" "$root$f"; done

cat >"$root/init" <<'EOF'
#!/bin/busybox sh
# ftvmd lab guest init (PID 1). Kernel cmdline parameters:
#   ft.ip=ADDR/LEN  eth0 address (default 10.77.0.100/24)
#   ft.gw=ADDR      default gateway (optional)
#   ft.busy=1       also run a CPU-bound loop
#   ft.disk=DEV     record disk (default /dev/vda): reported on the console, used by ftguest
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec 0<>/dev/console 1>&0 2>&0
echo "ftguest init: kernel $(cat /etc/kernel-release)"

while read -r m; do
  insmod "/lib/modules/$m.ko" || echo "ftguest init: insmod $m failed"
done </lib/modules/order

ip=10.77.0.100/24 gw= busy= disk=/dev/vda
for arg in $(cat /proc/cmdline); do
  case $arg in
    ft.ip=*)   ip=${arg#ft.ip=} ;;
    ft.gw=*)   gw=${arg#ft.gw=} ;;
    ft.busy=*) busy=${arg#ft.busy=} ;;
    ft.disk=*) disk=${arg#ft.disk=} ;;
  esac
done

ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip addr add "$ip" dev eth0
  ip link set eth0 up
  [ -n "$gw" ] && ip route add default via "$gw"
  echo "ftguest init: eth0 $ip${gw:+ gw $gw}"
else
  echo "ftguest init: no eth0"
fi

# Disk hook: report the record disk (ftguest "rec" commands) and its size in bytes.
# virtio_blk was loaded above; insmod probes synchronously, so the node exists by now.
if [ -b "$disk" ]; then
  sectors=$(cat "/sys/class/block/${disk##*/}/size" 2>/dev/null || echo 0)
  echo "disk: $disk $((sectors * 512))"
fi

# Debian's iperf3 server on :5201, for `ftvmd bench net --iperf-seconds`: the standard
# tool an outside tester runs. Its per-second reports go nowhere (the console is slow
# under TCG); its errors stay on the console. Started before ftguest, so this line is
# on the console by the time "ftguest ready" is.
if [ -x /bin/iperf3 ]; then
  iperf3 -s -p 5201 >/dev/null &
  echo "ftguest init: iperf3 -s on :5201"
fi

# The service prints "ftguest ready" once it listens on :7000.
/bin/ftguest -disk "$disk" &

if [ "$busy" = 1 ]; then
  echo "ftguest init: busy loop on"
  (while :; do dd if=/dev/zero bs=1M count=30 2>/dev/null | md5sum >/dev/null; done) &
fi

# Console counter: one line a second; the service reads /run/counter.
n=0
while :; do
  n=$((n+1))
  echo "$n" >/run/counter
  read -r up _ </proc/uptime
  echo "ftguest counter $n uptime $up"
  sleep 1
done
EOF
chmod 755 "$root/init"

# --- 6. deterministic cpio -------------------------------------------------------------
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | sort | cpio --quiet --reproducible -H newc -o -R 0:0) \
  | gzip -n -9 >"$work/initrd.img"
cp "$vmlinuz" "$work/vmlinuz"
mv "$work/initrd.img" "$outdir/initrd.img"
mv "$work/vmlinuz" "$outdir/vmlinuz"
echo "$want" >"$outdir/inputs.sha256"
printf '%s %s\n' "$kpkg" "$kver" >"$outdir/kernel-package"
log "built $outdir/vmlinuz ($kpkg $kver) and initrd.img ($(stat -c %s "$outdir/initrd.img") bytes)"
(cd "$outdir" && sha256sum vmlinuz initrd.img) >&2
