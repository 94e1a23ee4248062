//! Fuzz entry points: each takes arbitrary bytes and asserts the invariants of one parser,
//! through the library's public API only (kept out of the library itself).
//! Included (`#[path]`) by the cargo-fuzz targets in `fuzz/fuzz_targets/` and by
//! `tests/fuzz_corpus.rs`, which replays the committed corpora in `cargo test`.

use agentry_gateway::keys::KeyFormat;
use agentry_gateway::request_target::{
    segment_equals, RequestTarget, RouteTemplate, Routed, Router,
};

/// Key parsing never panics; accepted keys have the exact shape and re-check.
pub fn key_parser(data: &[u8]) {
    let f = KeyFormat::new("agk");
    if f.check(data).is_ok() {
        assert_eq!(
            data.len(),
            4 + agentry_gateway::keys::RANDOM_CHARS + agentry_gateway::keys::CHECKSUM_CHARS
        );
        assert!(data.starts_with(b"agk_"));
        assert!(data[4..].iter().all(u8::is_ascii_alphanumeric));
    }
    let _ = f.appears_in_url(data);
    let key = agentry_gateway::store::cursor::PageTokenKey::new(&[0u8; 32]);
    let _ = agentry_gateway::store::cursor::decode(&key, "inbox", &String::from_utf8_lossy(data));
}

/// Target validation and scope matching never panic, and an admitted path's inbox segment
/// never holds a byte that could change its meaning after one decoding.
pub fn path_scope(data: &[u8]) {
    let Ok(target) = RequestTarget::parse(data) else {
        return;
    };
    let template = RouteTemplate::parse("/v0/inboxes/{inbox_id}").expect("static template");
    let messages =
        RouteTemplate::parse("/v0/inboxes/{inbox_id}/messages").expect("static template");
    let router = Router::new([&template, &messages]);
    if let Ok(Routed::Proxy { inbox: seg, .. }) = router.route(&target) {
        let decoded = agentry_gateway::request_target::decode_segment(seg);
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
    match agentry_gateway::config::Config::parse(&text, std::path::Path::new("fuzz.toml")) {
        Ok(c) => assert!(c.server.threads >= 1),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
