#!/usr/bin/env bash
# The production build, profile-guided: builds an instrumented gateway, runs the load bench's
# traffic through it (bench/pgo_train.py), then builds the gateway again with that profile.
# The result is target/release/agentry-gateway-pgo: the same source and features as
# `cargo build --release`, laid out and inlined for the request path as it runs (README,
# Performance: about a sixth fewer instructions per request).
#
# Needs what bench/run.sh needs (nginx, wrk, taskset; installed from Debian when missing) and
# rustup's llvm-tools component (added when missing). Takes two release builds of every crate:
# about 20 minutes on 2 cores. It takes no arguments: the build is the default one (mimalloc).
set -euo pipefail
if [ $# -gt 0 ]; then
  echo "build-pgo: takes no arguments (got: $*); it builds the gateway with its default features" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
. scripts/build-deps.sh
agentry_build_deps
agentry_bench_tools

sysroot="$(rustc --print sysroot)"
host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [ ! -x "$profdata" ]; then
  echo "build-pgo: adding rustup's llvm-tools component (for llvm-profdata)" >&2
  rustup component add llvm-tools
fi

work="$PWD/target/pgo"
raw="$work/raw"

echo "build-pgo: 1/3 instrumented build (target/pgo-gen)" >&2
export RUSTFLAGS="-Cprofile-generate=$raw"
cargo build --release --target-dir target/pgo-gen --bin agentry-gateway
# The seeding helper in a build of its own: an example brings the dev-dependencies, whose
# features would change the gateway's dependencies, and a profile of differently compiled
# code does not match the final build (it then goes mostly unused).
cargo build --release --target-dir target/pgo-gen --example bench_seed
unset RUSTFLAGS

# Emptied after the build: build scripts, built with the same flags, write profiles there too.
rm -rf "$raw"
mkdir -p "$raw"
echo "build-pgo: 2/3 training run" >&2
python3 bench/pgo_train.py --gateway target/pgo-gen/release/agentry-gateway \
  --seed target/pgo-gen/release/examples/bench_seed --profile-dir "$raw"

# The profile's own hash names it: cargo rebuilds when RUSTFLAGS change, not when a file they
# name does, so a new profile must be a new name.
"$profdata" merge -o "$work/merged.profdata" "$raw"
sum="$(sha256sum "$work/merged.profdata" | cut -c1-16)"
profile="$work/gateway-$sum.profdata"
mv "$work/merged.profdata" "$profile"
find "$work" -maxdepth 1 -name 'gateway-*.profdata' ! -path "$profile" -delete

echo "build-pgo: 3/3 build with the profile (target/pgo-use)" >&2
RUSTFLAGS="-Cprofile-use=$profile" cargo build --release --target-dir target/pgo-use \
  --bin agentry-gateway
mkdir -p target/release
cp target/pgo-use/release/agentry-gateway target/release/agentry-gateway-pgo
echo "build-pgo: done: target/release/agentry-gateway-pgo" >&2
