//! cargo-fuzz target: `agentry_gateway::fuzzing::key_parser`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    agentry_gateway::fuzzing::key_parser(data);
});
