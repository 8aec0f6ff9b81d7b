#!/bin/bash
# Builds the three binaries of this study from /var/tmp/cpuwork (a copy of
# /var/tmp/recwake): base (recwake's HEAD + the lead's uncommitted draft 0009,
# without the DIAGNOSTIC g_usleep(2000) of its "base" commit), exp (base + the
# changes behind FTVMD_EXP switches) and final (base + the patches).
set -euxo pipefail
bin=/var/tmp/cpuwork-bin; mkdir -p $bin
cd /var/tmp/cpuwork
git checkout -q 736a0e58
rm -rf build && mkdir build && cd build
nice -n 19 ../configure --prefix=/opt/ftvmd/qemu-dev/cpuwork --target-list=x86_64-softmmu --disable-docs --disable-werror --disable-user --without-default-features --enable-tcg --enable-fdt=system --disable-debug-info --firmwarepath=/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu >../../cpuwork-configure.log 2>&1
time nice -n 19 ninja -j2 qemu-system-x86_64 >../../cpuwork-ninja-base.log 2>&1
cp qemu-system-x86_64 $bin/base
git checkout -q exp
time nice -n 19 ninja -j2 qemu-system-x86_64 >../../cpuwork-ninja-exp.log 2>&1
cp qemu-system-x86_64 $bin/exp
git checkout -q diag-fix
time nice -n 19 ninja -j2 qemu-system-x86_64 >../../cpuwork-ninja-final.log 2>&1
cp qemu-system-x86_64 $bin/final
for m in 0 1 2 4 8 15 16 31 47; do
  printf '#!/bin/sh\nFTVMD_EXP=%s exec %s/exp "$@"\n' $m $bin >$bin/exp$m; chmod +x $bin/exp$m
done
ls -la $bin
