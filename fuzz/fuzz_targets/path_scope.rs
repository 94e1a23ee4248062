//! cargo-fuzz target: `agentry_gateway::fuzzing::path_scope`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agentry_gateway::fuzzing::path_scope(data);
});
