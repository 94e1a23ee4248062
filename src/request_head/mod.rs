//! The request head as received, checked before routing or authentication: framing, size,
//! method overrides (here), and the request line as sent (`line`). The raw-head knowledge of
//! the crate lives in this module only.
//!
//! Pingora accepts some framings that proxies in front of or behind us may read differently
//! (pingora #945: Content-Length beside Transfer-Encoding; `Content-Length: +5`). An auth
//! gateway must not be the hop that disagrees, so anything ambiguous is refused and the
//! connection closed.

pub mod line;

use http::header::{self, HeaderMap};
use http::Version;

use crate::answer::{self, Answer};
use crate::metrics::Rejection;

/// Limits on request headers (configurable in `[limits]`).
#[derive(Debug, Clone, Copy)]
pub struct HeaderLimits {
    pub max_headers: usize,
    pub max_header_bytes: usize,
}

/// Why a request's head is refused. Every refusal but a method override closes the
/// connection: whatever follows an ambiguous or oversized head cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    AmbiguousFraming,
    UpgradeRefused,
    HeadersTooLarge,
    /// `X-HTTP-Method-Override`, `X-Method-Override`, `X-HTTP-Method`, `X-Original-Method`,
    /// `X-Original-URL` or `X-Rewrite-URL` (also with `_`): an upstream that honours one would
    /// run another method, or serve another path, than the one the gateway checked.
    MethodOverride,
}

/// The headers frameworks honour to run another method or path than the request line's
/// (Rails, Express, ASP.NET, Google APIs; Symfony, Laminas and IIS for the URL ones), by name
/// with `_` read as `-` (CGI-style servers map `X_HTTP_METHOD_OVERRIDE` to the same variable).
const OVERRIDE_HEADERS: [&[u8]; 6] = [
    b"x-http-method-override",
    b"x-method-override",
    b"x-http-method",
    b"x-original-method",
    b"x-original-url",
    b"x-rewrite-url",
];

/// Whether a header name is one of [`OVERRIDE_HEADERS`], `_` read as `-`.
fn is_override_header(name: &str) -> bool {
    let n = name.as_bytes();
    if n.len() < 13 || n.len() > 22 || !matches!(n[1], b'-' | b'_') || n[0] != b'x' {
        return false;
    }
    OVERRIDE_HEADERS.iter().any(|h| {
        h.len() == n.len()
            && h.iter()
                .zip(n)
                .all(|(&a, &b)| a == if b == b'_' { b'-' } else { b })
    })
}

impl Refusal {
    pub fn answer(self) -> Answer {
        let (fixed, reason) = match self {
            Refusal::AmbiguousFraming => (&answer::AMBIGUOUS_FRAMING, Rejection::AmbiguousFraming),
            Refusal::UpgradeRefused => (&answer::UPGRADE_NOT_SUPPORTED, Rejection::UpgradeRefused),
            Refusal::HeadersTooLarge => (&answer::HEADERS_TOO_LARGE, Rejection::HeadersTooLarge),
            Refusal::MethodOverride => {
                return answer::METHOD_OVERRIDE
                    .answer()
                    .because(Rejection::MethodOverride)
            }
        };
        fixed.answer().because(reason).closing()
    }
}

/// Checks one request's headers. `raw_head` is the request head as received (HTTP/1), used to
/// see a `Content-Length` that pingora drops when `Transfer-Encoding` is also present.
pub fn check(
    version: Version,
    headers: &HeaderMap,
    raw_head: Option<&[u8]>,
    limits: HeaderLimits,
) -> Result<(), Refusal> {
    if headers.len() > limits.max_headers {
        return Err(Refusal::HeadersTooLarge);
    }
    // One pass over the headers: their size, and the framing ones found by comparing names
    // (a tag compare for these standard names) instead of a hashed lookup for each.
    let mut bytes = 0usize;
    let mut upgrade = false;
    let (mut te, mut te_count) = (None, 0usize);
    let (mut cl, mut cl_count) = (None, 0usize);
    let mut method_override = false;
    for (k, v) in headers {
        bytes += k.as_str().len() + v.len() + 4;
        method_override |= is_override_header(k.as_str());
        if k == header::UPGRADE {
            upgrade = true;
        } else if k == header::TRANSFER_ENCODING {
            te_count += 1;
            te.get_or_insert(v);
        } else if k == header::CONTENT_LENGTH {
            cl_count += 1;
            cl.get_or_insert(v);
        }
    }
    if bytes > limits.max_header_bytes {
        return Err(Refusal::HeadersTooLarge);
    }
    if upgrade {
        return Err(Refusal::UpgradeRefused);
    }
    if method_override {
        return Err(Refusal::MethodOverride);
    }
    if let Some(first) = te {
        if te_count > 1
            || !first.as_bytes().eq_ignore_ascii_case(b"chunked")
            || version != Version::HTTP_11
            || raw_head.is_some_and(|h| has_content_length_line(h) || !plain_chunked_lines(h))
            || cl.is_some()
        {
            return Err(Refusal::AmbiguousFraming);
        }
    }
    if let Some(first) = cl {
        let v = first.as_bytes();
        if cl_count > 1 || v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
            return Err(Refusal::AmbiguousFraming);
        }
    }
    Ok(())
}

/// Whether every raw `Transfer-Encoding` line reads exactly `chunked` (one optional space
/// before it, nothing after): a tab, a vertical tab or trailing whitespace is read differently
/// by different parsers, so it is refused rather than normalised.
fn plain_chunked_lines(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n').skip(1).all(|line| {
        if line.len() < 18 || !line[..18].eq_ignore_ascii_case(b"transfer-encoding:") {
            return true;
        }
        let v = line[18..].strip_suffix(b"\r").unwrap_or(&line[18..]);
        let v = v.strip_prefix(b" ").unwrap_or(v);
        v.eq_ignore_ascii_case(b"chunked")
    })
}

/// Whether a raw request head holds a `Content-Length` header line (any case).
fn has_content_length_line(head: &[u8]) -> bool {
    head.split(|&b| b == b'\n')
        .skip(1)
        .any(|line| line.len() >= 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeaderLimits = HeaderLimits {
        max_headers: 10,
        max_header_bytes: 1000,
    };

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        m
    }

    fn chk(pairs: &[(&str, &str)]) -> Result<(), Refusal> {
        check(Version::HTTP_11, &h(pairs), None, LIMITS)
    }

    #[test]
    fn ordinary_requests_pass() {
        assert_eq!(chk(&[("content-length", "5")]), Ok(()));
        assert_eq!(chk(&[("transfer-encoding", "chunked")]), Ok(()));
        assert_eq!(chk(&[("transfer-encoding", "Chunked")]), Ok(()));
        assert_eq!(chk(&[]), Ok(()));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for bad in [
            vec![("content-length", "+5")],
            vec![("content-length", "-0")],
            vec![("content-length", "5"), ("content-length", "6")],
            vec![("content-length", "5"), ("content-length", "5")],
            vec![("content-length", "5, 5")],
            vec![("content-length", " 5")],
            vec![("transfer-encoding", "chunked, identity")],
            vec![
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "identity"),
            ],
            vec![("transfer-encoding", "identity")],
            vec![("transfer-encoding", "chunked "), ("x", "y")],
            vec![("transfer-encoding", "chunked"), ("content-length", "3")],
        ] {
            assert_eq!(chk(&bad), Err(Refusal::AmbiguousFraming), "{bad:?}");
        }
        let te = h(&[("transfer-encoding", "chunked")]);
        assert_eq!(
            check(Version::HTTP_10, &te, None, LIMITS),
            Err(Refusal::AmbiguousFraming)
        );
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\nCONTENT-LENGTH: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            check(Version::HTTP_11, &te, Some(raw), LIMITS),
            Err(Refusal::AmbiguousFraming)
        );
        for raw in [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: \tchunked\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding:  chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked \r\n\r\n",
        ] {
            assert_eq!(
                check(Version::HTTP_11, &te, Some(raw), LIMITS),
                Err(Refusal::AmbiguousFraming)
            );
        }
        let ok = b"POST / HTTP/1.1\r\nHost: x\r\ntransfer-encoding: Chunked\r\n\r\n";
        assert_eq!(check(Version::HTTP_11, &te, Some(ok), LIMITS), Ok(()));
    }

    #[test]
    fn upgrades_and_oversized_heads_are_refused() {
        assert_eq!(
            chk(&[("upgrade", "websocket")]),
            Err(Refusal::UpgradeRefused)
        );
        let many: Vec<(String, String)> = (0..11).map(|i| (format!("x-{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        assert_eq!(chk(&many), Err(Refusal::HeadersTooLarge));
        let big = "a".repeat(1000);
        assert_eq!(
            chk(&[("authorization", &big)]),
            Err(Refusal::HeadersTooLarge)
        );
    }
}

#[cfg(test)]
mod override_tests {
    use super::*;

    #[test]
    fn override_headers_are_seen_in_every_spelling() {
        for n in [
            "x-http-method-override",
            "x_http_method_override",
            "x-http_method-override",
            "x-method-override",
            "x-http-method",
            "x_http_method",
            "x-original-method",
            "x-original-url",
            "x_rewrite_url",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                http::HeaderValue::from_static("DELETE"),
            );
            let limits = HeaderLimits {
                max_headers: 100,
                max_header_bytes: 32768,
            };
            assert_eq!(
                check(Version::HTTP_11, &h, None, limits),
                Err(Refusal::MethodOverride),
                "{n}"
            );
        }
        for n in [
            "x-http-methods",
            "x-request-id",
            "x-http-method-overrider",
            "y-http-method",
        ] {
            assert!(!is_override_header(n), "{n}");
        }
    }
}
