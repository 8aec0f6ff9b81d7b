#!/usr/bin/env bash
# Builds the rr log flush library: bash qemu/flush/build.sh [OUT]  (OUT defaults to <repo>/build)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${1:-$repo/build}
mkdir -p "$out"
gcc -O2 -Wall -Wextra -shared -fPIC -o "$out/libftflush.so" "$here/ftflush.c" -ldl -lpthread
