//! Benchmark peer S4m: the S4 passthrough (`pingora_passthrough`) on mimalloc, the gateway's
//! allocator, so the gateway can also be counted against pingora like for like.
//!
//! `cargo run --release --example pingora_passthrough_mimalloc -- LISTEN UPSTREAM [THREADS]`

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "pingora_passthrough.rs"]
mod passthrough;

fn main() {
    passthrough::main()
}
