#!/usr/bin/env bash
# The release binaries every benchmark uses: the gateway as shipped (mimalloc), the same gateway
# on the system allocator (target/release/agentry-gateway-system-alloc: memcheck counts
# allocations only through the system allocator; bench/ab.py compares the two), the S4
# passthrough on either allocator, and the seeding helper.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --no-default-features --bin agentry-gateway
cp target/release/agentry-gateway target/release/agentry-gateway-system-alloc
cargo build --release --bin agentry-gateway --example pingora_passthrough \
    --example pingora_passthrough_mimalloc --example bench_seed
