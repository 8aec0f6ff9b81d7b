#!/usr/bin/env bash
# Runs every test of ftvmd on a Debian 12 host, as root: sets up what is missing
# (test/setup.sh), checks formatting and static analysis, runs the unit tests
# (with real QEMU where they use it), every fuzz target briefly, and the end-to-end
# tests on the lab.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH=/usr/local/go/bin:$PATH

bash test/setup.sh

echo "==> gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go'))
[ -z "$unformatted" ] || { echo "not gofmt-formatted:"; echo "$unformatted"; exit 1; }
echo "==> go vet"
go vet ./...
echo "==> staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

echo "==> unit tests under the race detector (real QEMU where used)"
FTVMD_REQUIRE_QEMU=1 FTVMD_REQUIRE_ROOT=1 FTVMD_REQUIRE_PROMETHEUS=1 go test -race -count=1 -timeout 30m $(go list ./... | grep -v /test/e2e)

echo "==> fuzz targets, each 1 s past its seeds (bash test/fuzz.sh 10m for a long run)"
bash test/fuzz.sh 1s

echo "==> end-to-end tests on the lab"
mkdir -p test/e2e-artifacts
FTVMD_E2E=1 FTVMD_E2E_ARTIFACTS="$repo/test/e2e-artifacts" go test -count=1 -v -timeout 55m ./test/e2e
echo "==> all tests passed"
