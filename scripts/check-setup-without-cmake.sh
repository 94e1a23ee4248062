#!/usr/bin/env bash
# CI check that the quick start's set-up still works where cmake is not installed: hides cmake
# from PATH (a throwaway folder of links to everything else), skips the system package manager,
# lets scripts/build-deps.sh fetch cmake from PyPI, and builds the crate that needs cmake
# (libz-ng-sys, pingora's zlib-ng) from scratch in its own target folder.
set -euo pipefail
cd "$(dirname "$0")/.."
shadow="$(mktemp -d)"
trap 'rm -rf "$shadow"' EXIT
IFS=: read -r -a dirs <<<"$PATH"
for d in "${dirs[@]}"; do
  [ -d "$d" ] || continue
  for f in "$d"/*; do
    n="$(basename "$f")"
    [ "$n" = cmake ] && continue
    [ -e "$shadow/$n" ] || ln -s "$f" "$shadow/$n"
  done
done
rm -rf .tools/cmake
export PATH="$shadow"
if command -v cmake >/dev/null 2>&1; then echo "cmake still visible at $(command -v cmake)" >&2; exit 1; fi
export AGENTRY_NO_SYSTEM_PACKAGES=1
. scripts/build-deps.sh
agentry_build_deps
case "$(command -v cmake)" in
  "$PWD/.tools/cmake/"*) ;;
  *) echo "expected cmake from .tools/cmake, got $(command -v cmake)" >&2; exit 1 ;;
esac
CARGO_TARGET_DIR=target/setup-check cargo build -q -p libz-ng-sys
echo "setup without cmake: ok (cmake from PyPI built libz-ng-sys)"
