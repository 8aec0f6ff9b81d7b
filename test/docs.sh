#!/usr/bin/env bash
# Regenerates the pictures in docs/ from their sources:
#   docs/architecture.svg   from docs/src/architecture.dot (Graphviz, Debian package graphviz)
#   docs/bench-*.svg        from docs/bench-results/*.json (go run ./docs/src/benchplots)
# Installs graphviz if it is missing (as root). Commit the results.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH=/usr/local/go/bin:$PATH
if ! command -v dot >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "docs: graphviz (dot) is missing; install it or run as root" >&2; exit 1; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends graphviz >/dev/null
fi
dot -Tsvg docs/src/architecture.dot -o docs/architecture.svg
echo docs/architecture.svg
go run ./docs/src/benchplots -in docs/bench-results -out docs
