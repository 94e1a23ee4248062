#!/usr/bin/env bash
# One command for the load benchmark: installs nginx, HAProxy, wrk and valgrind from Debian if
# missing, builds the gateway and the bench helpers with the release profile, runs every
# scenario and prints the wrk table, then the counted cost per request (heap allocations and
# instructions under valgrind) of S4, S4m, S5, S6 and S7 (bench/cost.py; BENCH_COST=0 skips it).
# Extra arguments go to bench/run.py (e.g. --rounds 5, --only S4,S5).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/build-deps.sh
agentry_bench_tools
bench/build.sh
[ "${BENCH_SETUP_ONLY:-}" = 1 ] && exit 0  # bench/tls.sh reuses the set-up above
python3 bench/run.py "$@"
[ "${BENCH_COST:-1}" = 0 ] && exit 0
echo
echo "Cost per request, counted (bench/cost.py):"
exec python3 bench/cost.py
