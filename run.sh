#!/usr/bin/env bash
# Quick start: installs what the build needs when missing, then runs the gateway on the embedded
# SQLite default with config/gateway.toml and a demo upstream on its upstream address.
# Any arguments replace the defaults: ./run.sh run --config my.toml
set -euo pipefail
cd "$(dirname "$0")"
. scripts/build-deps.sh
agentry_build_deps
if [ $# -eq 0 ]; then set -- run --config config/gateway.toml --demo-upstream; fi
exec cargo run --release --bin agentry-gateway -- "$@"
