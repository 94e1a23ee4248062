#!/usr/bin/env bash
# The TLS load benchmark in one command: installs nginx, HAProxy, wrk and h2load (nghttp2-client)
# from Debian if missing, builds the release binaries, and prints the table and ratios.
# Extra arguments go to bench/tls.py (e.g. --rounds 5).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v h2load >/dev/null || {
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y nghttp2-client || { apt-get update && apt-get install -y nghttp2-client; }
}
# run.sh's set-up (packages and the release build) without its benchmark.
BENCH_SETUP_ONLY=1 bench/run.sh
exec python3 bench/tls.py "$@"
