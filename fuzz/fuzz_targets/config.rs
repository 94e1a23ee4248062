//! cargo-fuzz target: `agentry_gateway::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agentry_gateway::fuzzing::config(data);
});
