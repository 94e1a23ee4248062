#!/usr/bin/env bash
# Cost per request, counted: builds the release binaries, installs valgrind if missing, then
# runs bench/cost.py (heap allocations and instructions per request of S4, S4m, S5, S6, S7;
# extra arguments go to it).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y valgrind || { apt-get update && apt-get install -y valgrind; }; }
. scripts/build-deps.sh
agentry_build_deps
bench/build.sh
exec python3 bench/cost.py "$@"
