//! Property: no path the gateway admits for a key of inbox X normalizes (RFC 3986, or the more
//! aggressive decoding some servers do: every escape, overlong UTF-8, NFKC) to a path of
//! another inbox.

use agentry_gateway::request_target::{segment_equals, validate_path, RouteTemplate};
use proptest::prelude::*;
use unicode_normalization::UnicodeNormalization;

/// RFC 3986 §5.2.4 remove_dot_segments, on a path of segments.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = path.split('/').skip(1).collect();
    for (i, s) in segs.iter().enumerate() {
        let last = i == segs.len() - 1;
        match *s {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            other => out.push(other),
        }
    }
    format!("/{}", out.join("/"))
}

fn decode(s: &str, only_unreserved: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                let unreserved = v.is_ascii_alphanumeric() || b"-._~".contains(&v);
                if !only_unreserved || unreserved {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// RFC 3986 §6.2.2 syntax-based normalization (unreserved decoded, dot segments removed).
fn rfc3986(path: &str) -> String {
    remove_dot_segments(&decode(path, true))
}

/// Percent-decodes every escape to raw bytes.
fn decode_bytes(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// A lenient UTF-8 decoder, as old or careless ones were: any lead byte's payload bits are
/// taken without checking that the form is the shortest (so `C0 AE` is `.`), and bytes that
/// fit no sequence become U+FFFD.
fn lenient_utf8(b: &[u8]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let (len, init) = match b[i] {
            0x00..=0x7f => (1, b[i] as u32),
            0xc0..=0xdf => (2, (b[i] & 0x1f) as u32),
            0xe0..=0xef => (3, (b[i] & 0x0f) as u32),
            0xf0..=0xf7 => (4, (b[i] & 0x07) as u32),
            _ => (0, 0),
        };
        let cont = |k: usize| b.get(i + k).filter(|&&c| c & 0xc0 == 0x80);
        if len == 0 || (1..len).any(|k| cont(k).is_none()) {
            out.push('\u{fffd}');
            i += 1;
            continue;
        }
        let cp = (1..len).fold(init, |acc, k| acc << 6 | (b[i + k] & 0x3f) as u32);
        out.push(char::from_u32(cp).unwrap_or('\u{fffd}'));
        i += len;
    }
    out
}

/// What a lenient server might do: decode every escape, read the bytes as lenient UTF-8,
/// apply NFKC, treat `\` as `/`, drop `;params`, collapse `//`, then remove dot segments.
fn lenient(path: &str) -> String {
    let d: String = lenient_utf8(&decode_bytes(path)).nfkc().collect();
    let d = d.replace('\\', "/");
    let no_params: Vec<String> = d
        .split('/')
        .map(|s| s.split(';').next().unwrap_or("").to_owned())
        .collect();
    let mut p = no_params.join("/");
    while p.contains("//") {
        p = p.replace("//", "/");
    }
    remove_dot_segments(&p)
}

fn inbox_of(template: &RouteTemplate, path: &str) -> Option<String> {
    template
        .match_path(path.as_bytes())
        .map(|seg| decode(std::str::from_utf8(seg).unwrap_or(""), false))
}

const POOL: &[&str] = &[
    "v0",
    "inboxes",
    "X",
    "Y",
    "x",
    "..",
    ".",
    "%2e",
    "%2E",
    "%2e%2e",
    ".%2e",
    "%2e.",
    "%2f",
    "%2F",
    "%5c",
    "%5C",
    ";a=1",
    "X;",
    "%25",
    "%252e",
    "",
    "%00",
    "%58",
    "X%2F..%2FY",
    "m",
    "X.",
    "X..",
    "%20",
    "\\",
    "X\\..\\Y",
    "Y%2f",
    "%2fY",
    "~",
    "%7e",
    "X%2e",
    "%59",
    "%C0%AE",
    "%C0%AE%C0%AE",
    "%c0%ae.",
    "%E0%80%AE",
    "%E0%80%AE%E0%80%AE",
    "%C0%AF",
    "%C1%9C",
    "X%C0%AF..%C0%AFY",
    "%EF%BC%8E",
    "%EF%BC%8E%EF%BC%8E",
    "%EF%BC%8F",
    "X%EF%BC%8FY",
    "%EF%BC%BC",
    "%E2%80%A5",
    "%E2%80%A4%E2%80%A4",
    "%EF%B9%92.",
    "%C3%A9",
    "%EF%BD%81",
    "%EF%BC%B8",
];

fn admitted_for_x(template: &RouteTemplate, path: &str) -> bool {
    validate_path(path.as_bytes()).is_ok()
        && template
            .match_path(path.as_bytes())
            .is_some_and(|seg| segment_equals(seg, b"X"))
}

fn check(template: &RouteTemplate, path: &str) -> Result<(), TestCaseError> {
    if admitted_for_x(template, path) {
        for (how, n) in [("rfc3986", rfc3986(path)), ("lenient", lenient(path))] {
            let inbox = inbox_of(template, &n);
            prop_assert_eq!(
                inbox.as_deref(),
                Some("X"),
                "{} admitted for X but {} normalizes it to {}",
                path,
                how,
                n
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn admitted_paths_stay_in_their_inbox(segs in prop::collection::vec(prop::sample::select(POOL), 0..8)) {
        let template = RouteTemplate::parse("/v0/inboxes/{inbox_id}").unwrap();
        let path = format!("/v0/inboxes/{}", segs.join("/"));
        check(&template, &path)?;
    }

    #[test]
    fn arbitrary_ascii_paths_stay_in_their_inbox(tail in "[ -~]{0,24}") {
        let template = RouteTemplate::parse("/v0/inboxes/{inbox_id}").unwrap();
        check(&template, &format!("/v0/inboxes/X{tail}"))?;
        check(&template, &format!("/v0/inboxes/{tail}"))?;
    }
}

#[test]
fn the_property_would_catch_an_escape() {
    // Sanity check of the oracle: a path the gateway refuses would escape under normalization.
    let template = RouteTemplate::parse("/v0/inboxes/{inbox_id}").unwrap();
    assert_eq!(
        inbox_of(&template, &rfc3986("/v0/inboxes/X/../Y")).as_deref(),
        Some("Y")
    );
    assert_eq!(
        inbox_of(&template, &lenient("/v0/inboxes/X%2F..%2FY")).as_deref(),
        Some("Y")
    );
    for escape in [
        "/v0/inboxes/X/%C0%AE%C0%AE/Y",
        "/v0/inboxes/X/%E0%80%AE%E0%80%AE/Y",
        "/v0/inboxes/X%C0%AF..%C0%AFY",
        "/v0/inboxes/X/%EF%BC%8E%EF%BC%8E/Y",
        "/v0/inboxes/X%EF%BC%8F..%EF%BC%8FY",
        "/v0/inboxes/X/%E2%80%A5/Y",
    ] {
        assert_eq!(
            inbox_of(&template, &lenient(escape)).as_deref(),
            Some("Y"),
            "{escape}"
        );
        assert!(!admitted_for_x(&template, escape), "{escape}");
    }
    assert!(!admitted_for_x(&template, "/v0/inboxes/X/../Y"));
    assert!(admitted_for_x(&template, "/v0/inboxes/X/m"));
    // An escaped unreserved letter is not canonical: refused (issue "One meaning per request").
    assert!(!admitted_for_x(&template, "/v0/inboxes/%58/m"));
}
