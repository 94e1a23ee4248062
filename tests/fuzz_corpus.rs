//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz entry points,
//! so every input a fuzzer ever kept (and every crash it found, once fixed) runs in `cargo test`.

use std::path::Path;

#[path = "../fuzz/entry_points.rs"]
mod entry_points;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        f(&data);
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn key_parser_corpus() {
    replay("key_parser", entry_points::key_parser);
}

#[test]
fn path_scope_corpus() {
    replay("path_scope", entry_points::path_scope);
}

#[test]
fn config_corpus() {
    replay("config", entry_points::config);
}
