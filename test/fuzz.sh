#!/usr/bin/env bash
# Runs every Go fuzz target of the repository (func FuzzXxx in a *_test.go file), one
# after the other, each for the given time past its seeds.
#
#   bash test/fuzz.sh [duration] [target-regexp]
#
# duration: go test's -fuzztime (default 10m; "5s", "1000x" work too).
# target-regexp: run only the targets whose whole name matches it, e.g. 'FuzzClaim.*'
#   or 'FuzzArgs|FuzzParse' (default: all).
# FUZZ_PARALLEL: fuzzing workers per target (default 1, leaving the other core to the
#   guests; go test's default is GOMAXPROCS).
# FUZZ_LOG: a file that gets one summary line per target (default: none).
#
# It goes on after a failing target and exits non-zero at the end if any failed. A
# failing input is written by go test to <package>/testdata/fuzz/<Target>/: commit it
# with the fix, as the regression seed every plain `go test` then runs.
# Run it under `nice -n 19 ionice -c3` on a shared machine.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH=/usr/local/go/bin:$PATH

duration=${1:-10m}
filter=${2:-.*}
parallel=${FUZZ_PARALLEL:-1}
summary=${FUZZ_LOG:-/dev/null}

# "<package dir> <target>" for every fuzz target, in a stable order.
mapfile -t targets < <(git ls-files '*_test.go' | xargs grep -H '^func Fuzz[A-Za-z0-9_]*(f \*testing.F)' |
  sed -E 's|^(.*)/[^/]*_test.go:func (Fuzz[A-Za-z0-9_]*)\(.*|\1 \2|' | sort -u | grep -E " ($filter)\$" || true)
[ ${#targets[@]} -gt 0 ] || { echo "fuzz: no target matches $filter" >&2; exit 1; }

echo "fuzz: ${#targets[@]} targets, $duration each, $parallel worker(s), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo '+dirty')"
failed=()
for t in "${targets[@]}"; do
  dir=${t% *} name=${t#* }
  echo "==> $name (./$dir) for $duration"
  out=$(mktemp)
  corpus="$dir/testdata/fuzz/$name"
  before=$(ls "$corpus" 2>/dev/null | sort)
  start=$(date +%s)
  # -timeout 0: go test's default 10m would end a 10m run as a failure; a hung
  # input is caught by the fuzzing coordinator itself.
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "$duration" -parallel "$parallel" -timeout 0 "./$dir" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  secs=$(( $(date +%s) - start ))
  # The last progress line says how many inputs ran: "fuzz: elapsed: 10m0s, execs: 123 (..."
  execs=$(grep -a -o 'execs: [0-9]*' "$out" | tail -1 | cut -d' ' -f2)
  status=ok
  if [ "$rc" != 0 ]; then
    status=FAIL
    # Go 1.26's fuzzing coordinator can report its own -fuzztime deadline as a
    # failure ("context deadline exceeded", no failing input written: a race in
    # internal/fuzz, golang/go#75804, fixed in Go 1.27). That is not a finding.
    if [ "$(ls "$corpus" 2>/dev/null | sort)" = "$before" ] && grep -a -q '^    context deadline exceeded$' "$out"; then
      status=ok-deadline-race
    else
      failed+=("$name")
    fi
  fi
  line="$(date -u +%FT%TZ) $status $name ./$dir duration=$duration wall=${secs}s execs=${execs:-0} commit=$(git rev-parse --short HEAD)"
  echo "$line" >>"$summary"
  echo "fuzz: $line"
  rm -f "$out"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]} (failing inputs under <package>/testdata/fuzz/)" >&2
  exit 1
fi
echo "fuzz: all ${#targets[@]} targets ran clean"
