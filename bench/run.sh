#!/usr/bin/env bash
# One command for the load benchmark: installs nginx, HAProxy, wrk and valgrind from Debian if
# missing, builds the gateway and the bench helpers with the release profile, runs every
# scenario and prints the wrk table, then the counted cost per request (heap allocations and
# instructions under valgrind) of S4, S4m, S5, S6 and S7 (bench/cost.py; BENCH_COST=0 skips it).
# Extra arguments go to bench/run.py (e.g. --rounds 5, --only S4,S5).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
for c in nginx haproxy wrk taskset valgrind; do command -v "$c" >/dev/null || need+=("$c"); done
if [ ${#need[@]} -gt 0 ]; then
  pkgs=()
  for c in "${need[@]}"; do
    case $c in taskset) pkgs+=(util-linux) ;; nginx) pkgs+=(nginx-light) ;; *) pkgs+=("$c") ;; esac
  done
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y "${pkgs[@]}" || { apt-get update && apt-get install -y "${pkgs[@]}"; }
  # Debian starts the packaged services: the benchmark runs its own, on its own ports.
  service nginx stop >/dev/null 2>&1 || true
  service haproxy stop >/dev/null 2>&1 || true
fi
bench/build.sh
[ "${BENCH_SETUP_ONLY:-}" = 1 ] && exit 0  # bench/tls.sh reuses the set-up above
python3 bench/run.py "$@"
[ "${BENCH_COST:-1}" = 0 ] && exit 0
echo
echo "Cost per request, counted (bench/cost.py):"
exec python3 bench/cost.py
