#!/usr/bin/env bash
# Cross-instance revocation lag on PostgreSQL: builds the release binary, then runs
# bench/revocation_lag.py (three gateways, one database; extra arguments go to it).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-deps.sh
agentry_build_deps
cargo build --release --bin agentry-gateway
exec python3 bench/revocation_lag.py "$@"
