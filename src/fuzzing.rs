//! Fuzz entry points: each takes arbitrary bytes and asserts the invariants of one parser.
//! Called by the cargo-fuzz targets in `fuzz/` and by `tests/fuzz_corpus.rs`, which replays
//! the committed corpora in `cargo test`.

use crate::keys::KeyFormat;
use crate::target::{segment_equals, split_target, validate_path, validate_query, RouteTemplate};

/// Key parsing never panics; accepted keys have the exact shape and re-check.
pub fn key_parser(data: &[u8]) {
    let f = KeyFormat::new("agk");
    if f.check(data).is_ok() {
        assert_eq!(
            data.len(),
            4 + crate::keys::RANDOM_CHARS + crate::keys::CHECKSUM_CHARS
        );
        assert!(data.starts_with(b"agk_"));
        assert!(data[4..].iter().all(u8::is_ascii_alphanumeric));
    }
    let _ = f.appears_in_url(data);
    let key = crate::store::cursor::PageTokenKey::new(&[0u8; 32]);
    let _ = crate::store::cursor::decode(&key, "inbox", &String::from_utf8_lossy(data));
}

/// Target validation and scope matching never panic, and an admitted path's inbox segment
/// never holds a byte that could change its meaning after one decoding.
pub fn path_scope(data: &[u8]) {
    let Ok((path, query)) = split_target(data) else {
        return;
    };
    let _ = validate_query(query);
    if validate_path(path).is_err() {
        return;
    }
    let template = RouteTemplate::parse("/v0/inboxes/{inbox_id}").expect("static template");
    if let Some(seg) = template.match_path(path) {
        let decoded = crate::target::decode_segment(seg);
        assert!(
            !decoded.contains(&b'/'),
            "admitted segment decodes to a slash"
        );
        assert!(!decoded.contains(&b'\\'));
        assert!(decoded != b"." && decoded != b"..");
        assert!(segment_equals(seg, &decoded));
    }
}

/// Config parsing never panics: any input is a config or an error naming what is wrong.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match crate::config::Config::parse(&text, std::path::Path::new("fuzz.toml")) {
        Ok(c) => assert!(c.server.threads >= 1),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
