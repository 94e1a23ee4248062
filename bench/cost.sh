#!/usr/bin/env bash
# Cost per request, counted: builds the release binaries, installs valgrind if missing, then
# runs bench/cost.py (S4 vs S5 heap allocations and instructions per request; extra arguments
# go to it).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get install -y valgrind || { apt-get update && apt-get install -y valgrind; }; }
. scripts/build-deps.sh
agentry_build_deps
cargo build --release --bin agentry-gateway --example pingora_passthrough --example bench_seed
exec python3 bench/cost.py "$@"
