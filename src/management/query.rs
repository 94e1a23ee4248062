//! The list endpoint's query: `limit` and `page_token`, parsed strictly.

use super::errors::ApiError;
use super::{DEFAULT_PAGE_LIMIT, MAX_PAGE_LIMIT};
use crate::store::cursor::{self, PageTokenKey};
use crate::store::Cursor;

pub(super) struct ListQuery {
    pub(super) limit: usize,
    pub(super) after: Option<Cursor>,
}

impl ListQuery {
    pub(super) fn parse(
        tokens: &PageTokenKey,
        inbox_id: &str,
        query: &[u8],
    ) -> Result<ListQuery, ApiError> {
        let mut limit: Option<usize> = None;
        let mut after: Option<Cursor> = None;
        let mut seen_token = false;
        for (k, v) in form_urlencoded(query) {
            match k.as_str() {
                "limit" => {
                    if limit.is_some() {
                        return Err(ApiError::validation(
                            &["query", "limit"],
                            "limit may be given only once",
                        ));
                    }
                    let n = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE_LIMIT).contains(n))
                        .ok_or_else(|| {
                            ApiError::validation(
                                &["query", "limit"],
                                format!("limit must be an integer from 1 to {MAX_PAGE_LIMIT}"),
                            )
                        })?;
                    limit = Some(n);
                }
                "page_token" => {
                    if seen_token {
                        return Err(ApiError::validation(
                            &["query", "page_token"],
                            "page_token may be given only once",
                        ));
                    }
                    seen_token = true;
                    after = Some(cursor::decode(tokens, inbox_id, &v).ok_or_else(|| {
                        ApiError::validation(
                            &["query", "page_token"],
                            "page_token is not a token this endpoint issued for this inbox",
                        )
                    })?);
                }
                other => {
                    // Echo at most a short, printable prefix of an unknown name: clients do
                    // put secrets in URLs, and an error body must not hand one back.
                    let shown = echo_safe(other);
                    return Err(ApiError::validation(
                        &["query", &shown],
                        format!("unknown query parameter {shown:?} (allowed: limit, page_token)"),
                    ));
                }
            }
        }
        Ok(ListQuery {
            limit: limit.unwrap_or(DEFAULT_PAGE_LIMIT),
            after,
        })
    }
}

/// Longest unknown query-parameter name echoed back in an error, in characters.
const MAX_ECHOED_NAME_CHARS: usize = 24;

/// A short, printable prefix of client text that is safe to echo in an error body.
fn echo_safe(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_ECHOED_NAME_CHARS)
        .collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// Splits `a=1&b=2` into decoded pairs (`+` is a space, as in HTML forms).
fn form_urlencoded(query: &[u8]) -> Vec<(String, String)> {
    let decode = |s: &[u8]| {
        let plus: Vec<u8> = s
            .iter()
            .map(|&b| if b == b'+' { b' ' } else { b })
            .collect();
        percent_encoding::percent_decode(&plus)
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(i) => (decode(&pair[..i]), decode(&pair[i + 1..])),
            None => (decode(pair), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_tokens() -> PageTokenKey {
        PageTokenKey::new(&[1u8; 32])
    }

    #[test]
    fn unknown_query_names_are_echoed_short() {
        assert_eq!(echo_safe("foo"), "foo");
        let long = format!("agk_{}", "A".repeat(49));
        let shown = echo_safe(&long);
        assert_eq!(shown, format!("agk_{}…", "A".repeat(20)));
        assert_eq!(echo_safe("a\u{0}b\u{7f}c"), "abc…");
        match ListQuery::parse(&test_tokens(), "i", long.as_bytes()) {
            Err(ApiError::Validation { message, errors }) => {
                assert!(!message.contains(&long));
                assert_eq!(errors[0].path, ["query".to_owned(), shown.clone()]);
                assert!(message.contains(&shown), "{message}");
            }
            _ => panic!("an unknown parameter must be a validation error"),
        }
    }

    #[test]
    fn query_parsing() {
        let q = ListQuery::parse(&test_tokens(), "i", b"limit=5").unwrap();
        assert_eq!(q.limit, 5);
        for bad in [
            &b"limit=0"[..],
            b"limit=-1",
            b"limit=1001",
            b"limit=abc",
            b"limit=99999999999999999999999",
            b"limit=1&limit=2",
            b"page_token=abc",
            b"page_token=",
            b"foo=1",
        ] {
            assert!(
                ListQuery::parse(&test_tokens(), "i", bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
