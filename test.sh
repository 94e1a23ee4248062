#!/usr/bin/env bash
# Runs every test: installs what the build needs when missing, then `cargo test --all-targets`.
# Extra arguments go to cargo test (e.g. ./test.sh --test proxy).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/build-deps.sh
agentry_build_deps
exec cargo test --all-targets "$@"
