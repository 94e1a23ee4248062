#!/usr/bin/env bash
# Key-change soak on PostgreSQL (not CI): builds the release binary, then runs
# bench/soak_changes.py (three gateways, one database, 127.0.0.1 only; bounded by --seconds,
# default 600; extra arguments go to it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-deps.sh
agentry_build_deps
cargo build --release --bin agentry-gateway
exec python3 bench/soak_changes.py "$@"
